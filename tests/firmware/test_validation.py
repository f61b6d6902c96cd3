"""Upload and validation: the good file, and every kind of bad file refused with
a reason and nothing left in storage."""

from __future__ import annotations

import hashlib
import io
import random
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from pytest_django.fixtures import DjangoCaptureOnCommitCallbacks, Settings

from firmware import services
from firmware.models import Firmware, FirmwareStatus, SigningKey
from nerveshub.tenancy.models import AuditEvent
from tests.conftest import Tenant
from tests.firmware.conftest import Uploader, stored_files
from tests.support.fwup import FirmwareSpec, KeyPair, Tamper, build_firmware, generate_keypair

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer


pytestmark = pytest.mark.django_db


def assert_rejected(firmware: Firmware, root: Path, fragment: str) -> None:
    assert firmware.status == FirmwareStatus.REJECTED, firmware.rejected_reason
    assert fragment.lower() in firmware.rejected_reason.lower(), firmware.rejected_reason
    assert firmware.storage_name == ""
    assert firmware.uuid is None
    assert stored_files(root) == []
    assert AuditEvent.objects.filter(action="firmware.rejected", subject_id=str(firmware.pk)).exists()


def test_it_validates_a_signed_firmware_and_records_its_metadata(
    tenant: Tenant, keypair: KeyPair, spec: FirmwareSpec, upload: Uploader, firmware_root: Path
) -> None:
    # given
    spec.description = 'Quote " backslash \\ and # not a comment'
    spec.misc = 'key1=value1,key2="two words"'
    spec.vcs_identifier = "abc123"
    spec.version = "2.0.0-rc.1"
    spec.resources = {"rootfs.img": random.Random(1).randbytes(3_000_000), "/my_custom_metadata": b"hello"}
    data = build_firmware(spec)
    # when
    firmware = upload(data)
    # then
    assert firmware.status == FirmwareStatus.VALID, firmware.rejected_reason
    assert firmware.version == "2.0.0-rc.1"
    assert firmware.platform == "rpi4" and firmware.architecture == "arm"
    assert firmware.author == "The Nerves Team"
    assert firmware.description == spec.description
    assert firmware.misc == spec.misc
    assert firmware.vcs_identifier == "abc123"
    assert firmware.size == len(data)
    assert firmware.sha256 == hashlib.sha256(data).hexdigest()
    mib = 1024 * 1024
    assert firmware.partial_sha256 == [hashlib.sha256(data[i : i + mib]).hexdigest() for i in range(0, len(data), mib)]
    assert firmware.signing_key == SigningKey.objects.get(key=keypair.public)
    assert firmware.uuid is not None and len(firmware.uuid) == 36
    assert [p.read_bytes() for p in stored_files(firmware_root)] == [data]
    actions = set(AuditEvent.objects.filter(subject_id=str(firmware.pk)).values_list("action", flat=True))
    assert {"firmware.uploaded", "firmware.validated"} <= actions


def test_it_records_which_of_several_keys_verified(
    tenant: Tenant, keypair: KeyPair, spec: FirmwareSpec, upload: Uploader
) -> None:
    # given
    second = generate_keypair(padded=False)
    key = SigningKey.objects.create(org=tenant.org, name="second", key=second.public)
    spec.key = second
    # when
    firmware = upload(spec)
    # then
    assert firmware.status == FirmwareStatus.VALID
    assert firmware.signing_key == key


def test_it_rejects_an_unsigned_file(spec: FirmwareSpec, upload: Uploader, firmware_root: Path) -> None:
    # given
    spec.key = None
    # when
    firmware = upload(spec)
    # then
    assert_rejected(firmware, firmware_root, "not signed")


def test_it_rejects_a_file_signed_by_an_unknown_key(spec: FirmwareSpec, upload: Uploader, firmware_root: Path) -> None:
    # given
    spec.key = generate_keypair()
    # when
    firmware = upload(spec)
    # then
    assert_rejected(firmware, firmware_root, "does not match any of the organization's signing keys")


def test_it_rejects_a_file_signed_by_another_orgs_key(
    spec: FirmwareSpec, upload: Uploader, firmware_root: Path, other_tenant: Tenant
) -> None:
    # given
    foreign = generate_keypair()
    SigningKey.objects.create(org=other_tenant.org, name="theirs", key=foreign.public)
    spec.key = foreign
    # when
    firmware = upload(spec)
    # then
    assert_rejected(firmware, firmware_root, "does not match")


def test_it_rejects_when_the_org_has_no_keys(spec: FirmwareSpec, upload: Uploader, firmware_root: Path) -> None:
    # given
    SigningKey.objects.all().delete()
    # when
    firmware = upload(spec)
    # then
    assert_rejected(firmware, firmware_root, "no signing keys")


def test_it_rejects_a_meta_conf_changed_after_signing(
    spec: FirmwareSpec, upload: Uploader, firmware_root: Path
) -> None:
    # given
    tamper = Tamper(meta_conf=lambda meta: meta.replace(b"meta-version=1.0.0", b"meta-version=9.9.9"))
    # when
    firmware = upload(spec, tamper)
    # then
    assert_rejected(firmware, firmware_root, "does not match")


def test_it_rejects_a_resource_changed_after_signing(spec: FirmwareSpec, upload: Uploader, firmware_root: Path) -> None:
    # given
    original = spec.resources["rootfs.img"]
    assert isinstance(original, bytes)
    tamper = Tamper(resources={"rootfs.img": original[:-1] + b"X"})
    # when
    firmware = upload(spec, tamper)
    # then
    assert_rejected(firmware, firmware_root, "altered after signing")


def test_it_rejects_a_resource_of_the_wrong_length(spec: FirmwareSpec, upload: Uploader, firmware_root: Path) -> None:
    # given
    tamper = Tamper(resources={"rootfs.img": b"short"})
    # when
    firmware = upload(spec, tamper)
    # then
    assert_rejected(firmware, firmware_root, "meta.conf says")


def test_it_rejects_a_missing_resource(spec: FirmwareSpec, upload: Uploader, firmware_root: Path) -> None:
    # given: meta.conf lists a resource the archive does not hold
    spec.extra_meta = 'file-resource "ghost.img" {\nlength=3\nblake2b-256=' + "0" * 64 + "\n}"
    # when
    firmware = upload(spec)
    # then
    assert_rejected(firmware, firmware_root, "missing")


def test_it_rejects_a_truncated_zip(spec: FirmwareSpec, upload: Uploader, firmware_root: Path) -> None:
    # given
    data = build_firmware(spec)
    # when
    firmware = upload(data[: len(data) // 2])
    # then
    assert_rejected(firmware, firmware_root, "damaged or truncated")


def test_it_rejects_a_file_that_is_not_a_zip(upload: Uploader, firmware_root: Path) -> None:
    # when
    firmware = upload(b"\x7fELF" + b"\x00" * 4000)
    # then
    assert_rejected(firmware, firmware_root, "not a ZIP")


def test_it_rejects_an_archive_without_meta_conf(upload: Uploader, firmware_root: Path) -> None:
    # given
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("data/rootfs.img", b"x" * 100)
    # when
    firmware = upload(buffer.getvalue())
    # then
    assert_rejected(firmware, firmware_root, "no meta.conf")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('meta-author="never closed\n', "never closed"),
        ("task upgrade {\non-init {\n", "never closed"),
        ("}\n", "without a matching"),
        ("meta-author = = x\n", "expected a value"),
        ("lonely-word\n", "expected = or {"),
    ],
)
def test_it_rejects_meta_conf_syntax_errors(
    spec: FirmwareSpec, upload: Uploader, firmware_root: Path, extra: str, message: str
) -> None:
    # given
    spec.extra_meta = extra
    # when
    firmware = upload(spec)
    # then
    assert_rejected(firmware, firmware_root, message)
    assert "line" in firmware.rejected_reason


def test_it_rejects_a_version_that_is_not_semver(spec: FirmwareSpec, upload: Uploader, firmware_root: Path) -> None:
    # given
    spec.version = "1.0"
    # when
    firmware = upload(spec)
    # then
    assert_rejected(firmware, firmware_root, "not a SemVer")


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("../evil.sh", "leaves the archive"),
        ("data/../../etc/passwd", "leaves the archive"),
        ("/etc/passwd", "absolute"),
    ],
)
def test_it_rejects_unsafe_entry_names(
    spec: FirmwareSpec, upload: Uploader, firmware_root: Path, name: str, message: str
) -> None:
    # given
    tamper = Tamper(extra_entries=[(name, b"#!/bin/sh\n", zipfile.ZIP_DEFLATED)])
    # when
    firmware = upload(spec, tamper)
    # then
    assert_rejected(firmware, firmware_root, message)


def test_it_rejects_duplicate_entry_names(spec: FirmwareSpec, upload: Uploader, firmware_root: Path) -> None:
    # given: a second data/rootfs.img after the signed one
    tamper = Tamper(extra_entries=[("data/rootfs.img", b"evil", zipfile.ZIP_DEFLATED)])
    # when
    with pytest.warns(UserWarning, match="Duplicate name"):
        data = build_firmware(spec, tamper)
    firmware = upload(data)
    # then
    assert_rejected(firmware, firmware_root, "more than once")


def test_it_rejects_a_decompression_bomb_by_ratio(spec: FirmwareSpec, upload: Uploader, firmware_root: Path) -> None:
    # given: 8 MiB of zeros deflate about 1000:1
    tamper = Tamper(extra_entries=[("data/bomb.img", bytes(8 * 1024 * 1024), zipfile.ZIP_DEFLATED)])
    # when
    firmware = upload(spec, tamper)
    # then
    assert_rejected(firmware, firmware_root, "decompression bomb")


def test_it_rejects_a_decompression_bomb_by_total_size(
    spec: FirmwareSpec, upload: Uploader, firmware_root: Path, settings: Settings
) -> None:
    # given
    settings.FIRMWARE_MAX_INFLATED_SIZE = 5000
    # when
    firmware = upload(spec)
    # then
    assert_rejected(firmware, firmware_root, "inflate to more than")


def test_it_refuses_a_file_over_the_size_cap_while_streaming(
    tenant: Tenant, firmware_root: Path, settings: Settings
) -> None:
    # given: a stream that does not announce its size
    settings.FIRMWARE_MAX_SIZE = 10_000

    class Unsized(io.RawIOBase):
        def __init__(self) -> None:
            self.left = 50_000

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: WriteableBuffer) -> int:
            view = memoryview(buffer)
            n = min(len(view), self.left, 4096)
            view[:n] = b"x" * n
            self.left -= n
            return n

    # when
    with pytest.raises(services.UploadRefused, match="larger than"):
        services.upload_firmware(tenant.admin, tenant.product, io.BufferedReader(Unsized()), "big.fw")
    # then
    assert stored_files(firmware_root) == []
    assert not Firmware.objects.exists()


def test_it_refuses_a_file_whose_declared_size_is_over_the_cap(
    tenant: Tenant, firmware_root: Path, settings: Settings
) -> None:
    # given
    from django.core.files.uploadedfile import SimpleUploadedFile

    settings.FIRMWARE_MAX_SIZE = 100
    upload = SimpleUploadedFile("big.fw", b"x" * 101)
    # when
    with pytest.raises(services.UploadRefused):
        services.upload_firmware(tenant.admin, tenant.product, upload, "big.fw")
    # then
    assert stored_files(firmware_root) == []


def test_it_rejects_a_firmware_for_another_product(spec: FirmwareSpec, upload: Uploader, firmware_root: Path) -> None:
    # given
    spec.product = "some-other-product"
    # when
    firmware = upload(spec)
    # then
    assert_rejected(firmware, firmware_root, "was uploaded to 'widget'")


def test_it_rejects_a_duplicate_uuid_in_the_product(spec: FirmwareSpec, upload: Uploader, firmware_root: Path) -> None:
    # given
    data = build_firmware(spec)
    first = upload(data)
    assert first.status == FirmwareStatus.VALID
    # when
    second = upload(data)
    # then
    assert second.status == FirmwareStatus.REJECTED
    assert "already uploaded" in second.rejected_reason
    assert [p.read_bytes() for p in stored_files(firmware_root)] == [data]  # the first one stays


def test_it_rejects_when_the_stored_file_vanished(
    tenant: Tenant,
    spec: FirmwareSpec,
    firmware_root: Path,
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
) -> None:
    # given
    with django_capture_on_commit_callbacks(execute=False):
        firmware = services.upload_firmware(tenant.admin, tenant.product, io.BytesIO(build_firmware(spec)), "a.fw")
    for path in stored_files(firmware_root):
        path.unlink()
    # when
    services.validate_firmware(firmware.pk)
    # then
    firmware.refresh_from_db()
    assert firmware.status == FirmwareStatus.REJECTED
    assert "missing" in firmware.rejected_reason


def test_it_is_a_no_op_for_a_missing_or_decided_row(spec: FirmwareSpec, upload: Uploader) -> None:
    # given
    firmware = upload(spec)
    # when
    again = services.validate_firmware(firmware.pk)
    missing = services.validate_firmware(999_999)
    # then
    assert again is not None and again.status == FirmwareStatus.VALID
    assert missing is None
    assert AuditEvent.objects.filter(action="firmware.validated").count() == 1


def test_it_retries_only_on_storage_errors() -> None:
    # given
    from firmware.tasks import validate_firmware_task

    # then
    assert validate_firmware_task.autoretry_for == (services.StorageUnavailable,)
    assert validate_firmware_task.soft_time_limit
