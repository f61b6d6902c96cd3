"""Mutated fwup files and meta.conf texts: whatever the bytes, reading a file ends
in a result or in InvalidFirmware with a reason, and the meta.conf parser in a
Block or MetaConfError, never another exception. Examples are few and small so
the module runs in seconds; the properties are what matter."""

from __future__ import annotations

import io
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware import fwfile, metaconf
from firmware.models import FirmwareStatus
from tests.conftest import Tenant
from tests.firmware.conftest import Uploader, stored_files
from tests.support.fwup import FirmwareSpec, build_firmware, generate_keypair

KEY = generate_keypair()
KEYS = [(1, bytes(KEY.signer.verify_key))]
LIMITS = fwfile.Limits(max_inflated=50_000_000, max_ratio=100)
SPEC = FirmwareSpec(
    product="widget",
    key=KEY,
    description='a "quoted" description',
    resources={"rootfs.img": random.Random(7).randbytes(3000), "/extra": b"hello"},
)
VALID = build_firmware(SPEC)
META = SPEC.meta_conf()

FUZZ = settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def mutated(draw: st.DrawFn, original: bytes) -> bytes:
    """The original with a few bytes flipped, cut, inserted or spliced."""
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "set", "cut", "insert", "truncate", "duplicate"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and data:
            data[at] = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80, ord("{"), ord("}"), ord('"'), ord("\\")]))
        elif kind == "cut":
            del data[at : at + draw(st.integers(1, 64))]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "truncate":
            del data[at:]
        elif kind == "duplicate":
            length = draw(st.integers(1, 64))
            data[at:at] = data[at : at + length]
    return bytes(data)


def inspect(data: bytes) -> str:
    try:
        fwfile.inspect(io.BytesIO(data), KEYS, LIMITS)
    except fwfile.InvalidFirmware as exc:
        assert exc.reason and len(exc.reason) < 400, exc.reason
        return "rejected"
    return "valid"


def test_the_unmutated_file_is_valid() -> None:
    assert inspect(VALID) == "valid"


@FUZZ
@given(data=mutated(VALID))
def test_it_reads_any_mutation_of_a_signed_file_to_a_result_or_a_reason(data: bytes) -> None:
    inspect(data)


@FUZZ
@given(meta=mutated(META))
def test_it_reads_a_mutated_meta_conf_signed_by_the_org_to_a_result_or_a_reason(meta: bytes) -> None:
    # given: the mutation happens before signing, so the parser and the resource
    # checks see it (a hostile key holder, or a broken build)
    spec = FirmwareSpec(product="widget", key=KEY, resources=dict(SPEC.resources), edit_meta=lambda _original: meta)
    # when / then
    inspect(build_firmware(spec))


TOKENS = st.sampled_from(
    ["a", "=", "+=", "{", "}", "(", ")", ",", '"s"', "'q'", '"""t"""', "#c\n", "/*", "*/", "\\\n", "\n", " ", "\\x"]
)


@FUZZ
@given(text=st.one_of(st.lists(TOKENS, max_size=200).map("".join), st.text(max_size=300)))
def test_the_parser_answers_any_text_with_a_block_or_a_syntax_error(text: str) -> None:
    try:
        metaconf.parse(text)
    except metaconf.MetaConfError as exc:
        assert "line" in str(exc)


@pytest.mark.django_db
@settings(
    max_examples=20,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=mutated(VALID).filter(bool))  # an empty file is refused before it has a row
def test_every_mutated_upload_ends_valid_or_rejected(
    data: bytes, tenant: Tenant, upload: Uploader, firmware_root: Path
) -> None:
    # given: the org holds the fuzzing key
    tenant.org.signing_keys.get_or_create(name="fuzz", defaults={"key": KEY.public})
    # when
    firmware = upload(data)
    # then
    assert firmware.status in (FirmwareStatus.VALID, FirmwareStatus.REJECTED)
    if firmware.status == FirmwareStatus.REJECTED:
        assert firmware.rejected_reason and firmware.storage_name == ""
        # only the first valid upload of one file keeps its bytes; the rest are duplicates
        assert len(stored_files(firmware_root)) <= 1
