"""Small crafted files, from an uploader who means harm: each one ends as a
`rejected` row with a reason and no stored bytes, through the service, the REST
API and the organization page, and no request answers 500. Unsigned and forged
files are refused on the signature, before anything parses their meta.conf.

Every file is a real fwup-format archive from tests/support/fwup.py, spoiled in
one precise way."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from firmware import metaconf, services
from firmware.models import Firmware, FirmwareStatus, SigningKey
from firmware.tasks import validate_firmware_task
from nerveshub.tenancy import services as tenancy
from nerveshub.tenancy.models import AuditEvent
from nerveshub.web.access import org_slug
from tests.conftest import Tenant
from tests.firmware.conftest import Uploader, stored_files
from tests.support.fwup import (
    FirmwareSpec,
    KeyPair,
    build_firmware,
    corrupt_entry_data,
    generate_keypair,
    set_compression_method,
)

NESTED = "a {\n" * 5000 + "}\n" * 5000  # one Python frame per level in a recursive parser
RESOURCE = b"\x00rootfs" * 1000  # FirmwareSpec's default rootfs.img, 7,000 bytes


@dataclass(frozen=True)
class Hostile:
    build: Callable[[KeyPair], bytes]  # given the org's registered key
    reason: str  # a fragment of the rejection reason


def _spec(key: KeyPair | None, **changes: Any) -> FirmwareSpec:
    return FirmwareSpec(**{"product": "widget", "version": "1.0.0", "key": key, **changes})


def _truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


HOSTILE: dict[str, Hostile] = {
    "meta.conf nested 5,000 deep, unsigned": Hostile(
        lambda key: build_firmware(_spec(None, extra_meta=NESTED)), "not signed"
    ),
    "meta.conf nested 5,000 deep, signed by the org": Hostile(
        lambda key: build_firmware(_spec(key, extra_meta=NESTED)), "nested more than"
    ),
    "meta.conf nested 5,000 deep, signed by an unknown key": Hostile(
        lambda key: build_firmware(_spec(generate_keypair(), extra_meta=NESTED)), "does not match"
    ),
    "meta.conf with an unsupported compression method": Hostile(
        lambda key: set_compression_method(build_firmware(_spec(None)), "meta.conf", 99), "cannot be read"
    ),
    "signed resource with an unsupported compression method": Hostile(
        lambda key: set_compression_method(build_firmware(_spec(key)), "data/rootfs.img", 99), "cannot be read"
    ),
    "meta.conf with a corrupt deflate stream": Hostile(
        lambda key: corrupt_entry_data(build_firmware(_spec(None)), "meta.conf"), "cannot be read"
    ),
    "signed resource with a corrupt deflate stream": Hostile(
        lambda key: corrupt_entry_data(build_firmware(_spec(key)), "data/rootfs.img"), "cannot be read"
    ),
    "truncated ZIP": Hostile(lambda key: _truncated(build_firmware(_spec(key))), "damaged or truncated"),
    "signed meta.conf declaring a 20,000-digit resource length": Hostile(
        lambda key: build_firmware(
            _spec(key, edit_meta=lambda meta: meta.replace(b"length=7000", b"length=0x" + b"f" * 20_000))
        ),
        "length that is too large",
    ),
    "signed meta.conf with a NUL in a stored field": Hostile(
        lambda key: build_firmware(_spec(key, description="before\x00after")), "NUL"
    ),
    "signed meta.conf with a version longer than its column": Hostile(
        lambda key: build_firmware(_spec(key, version="1.0.0-" + "a" * 200)), "longer than 100"
    ),
}


def assert_rejected(firmware: Firmware, root: Path, fragment: str) -> None:
    firmware.refresh_from_db()
    assert firmware.status == FirmwareStatus.REJECTED, (firmware.status, firmware.rejected_reason)
    assert fragment.lower() in firmware.rejected_reason.lower(), firmware.rejected_reason
    assert len(firmware.rejected_reason) < 400, firmware.rejected_reason
    assert firmware.storage_name == ""
    assert stored_files(root) == []
    assert AuditEvent.objects.filter(action="firmware.rejected", subject_id=str(firmware.pk)).exists()


# --- The service: what the worker runs -------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("case", HOSTILE, ids=list(HOSTILE))
def test_it_rejects_a_hostile_file_through_the_service(
    case: str, keypair: KeyPair, upload: Uploader, firmware_root: Path
) -> None:
    # given
    data = HOSTILE[case].build(keypair)
    # when
    firmware = upload(data)
    # then
    assert_rejected(firmware, firmware_root, HOSTILE[case].reason)


@pytest.mark.django_db
def test_it_never_parses_a_meta_conf_whose_signature_does_not_verify(
    tenant: Tenant, keypair: KeyPair, upload: Uploader, firmware_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given: a meta.conf that would crash an unbounded parser, signed by a key the
    # org does not have, and a spy on the parser
    calls: list[bytes] = []
    real = metaconf.parse_bytes

    def spy(data: bytes) -> metaconf.Block:
        calls.append(data)
        return real(data)

    monkeypatch.setattr(metaconf, "parse_bytes", spy)
    forged = build_firmware(_spec(generate_keypair(), extra_meta=NESTED))
    unsigned = build_firmware(_spec(None, extra_meta=NESTED))
    # when
    rejected = [upload(forged), upload(unsigned)]
    # then
    assert_rejected(rejected[0], firmware_root, "does not match")
    assert_rejected(rejected[1], firmware_root, "not signed")
    assert calls == []
    # and the spy is live: a correctly signed file does reach the parser
    assert upload(_spec(keypair)).status == FirmwareStatus.VALID
    assert len(calls) == 1


@pytest.mark.django_db
def test_it_rejects_a_signed_meta_conf_past_the_parser_limits(
    keypair: KeyPair, upload: Uploader, firmware_root: Path
) -> None:
    # given: a flat meta.conf of 30,000 options, validly signed
    many = "".join(f"k{i}=v\n" for i in range(30_000))
    # when
    firmware = upload(_spec(keypair, extra_meta=many))
    # then
    assert_rejected(firmware, firmware_root, "more than 20,000 entries")


@pytest.mark.django_db
def test_it_rejects_a_zip_of_thousands_of_entries_before_zipfile_reads_them(
    upload: Uploader, firmware_root: Path
) -> None:
    # given: 20,000 empty entries (ZIP64, past 65,535 it would be the same), each
    # of which zipfile would turn into an object before any other check
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("meta.conf", b"meta-product=widget\n")
        for i in range(20_000):
            archive.writestr(zipfile.ZipInfo(f"data/{i}"), b"")
    # when
    firmware = upload(buffer.getvalue())
    # then
    assert_rejected(firmware, firmware_root, "declares 20,001 entries")


# --- The upload requests: the REST API and the organization page ---------------------


def _org_key(tenant: Tenant) -> KeyPair:
    pair = generate_keypair()
    SigningKey.objects.create(org=tenant.org, name="release", key=pair.public)
    return pair


def _only_row() -> Firmware:
    rows = list(Firmware.objects.all())
    assert len(rows) == 1, rows
    return rows[0]


# transaction=True: the upload's on-commit dispatch runs as in production (in-process
# in embedded mode, so a crash there is the request's 500; to the broker otherwise).
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("case", HOSTILE, ids=list(HOSTILE))
def test_it_answers_a_hostile_api_upload_without_a_500(case: str, tenant: Tenant, firmware_root: Path) -> None:
    # given
    data = HOSTILE[case].build(_org_key(tenant))
    client = Client(raise_request_exception=False)
    token = tenancy.create_api_token("test", tenant.manager, "tests").clear
    # when
    response = client.post(
        "/api/v1/orgs/acme/products/widget/firmwares",
        {"firmware": SimpleUploadedFile("evil.fw", data, content_type="application/octet-stream")},
        HTTP_AUTHORIZATION=f"token {token}",
    )
    # then
    assert response.status_code == 201, response.content
    assert response.json()["status"] in ("pending", "rejected")
    validate_firmware_task(response.json()["id"])  # the worker's part (a no-op once decided)
    shown = client.get(
        f"/api/v1/orgs/acme/products/widget/firmwares/{response.json()['id']}", HTTP_AUTHORIZATION=f"token {token}"
    ).json()
    assert shown["status"] == "rejected" and HOSTILE[case].reason.lower() in shown["rejected_reason"].lower()
    assert_rejected(_only_row(), firmware_root, HOSTILE[case].reason)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("case", HOSTILE, ids=list(HOSTILE))
def test_it_answers_a_hostile_page_upload_without_a_500(case: str, tenant: Tenant, firmware_root: Path) -> None:
    # given
    data = HOSTILE[case].build(_org_key(tenant))
    client = Client(raise_request_exception=False)
    client.force_login(tenant.manager)
    slug = org_slug(tenant.org)
    upload = io.BytesIO(data)
    upload.name = "evil.fw"
    # when
    response = client.post(
        f"/org/{slug}/firmware/",
        {"product": tenant.product.pk, "kind": "firmware", "file": upload},
        HTTP_ACCEPT="application/json",
    )
    # then
    assert response.status_code == 201, response.content
    validate_firmware_task(response.json()["id"])
    status = client.get(response.json()["status_url"]).json()
    assert status["status"] == "rejected" and status["done"] is True
    assert HOSTILE[case].reason.lower() in status["reason"].lower()
    assert_rejected(_only_row(), firmware_root, HOSTILE[case].reason)


@pytest.mark.django_db(transaction=True)
def test_it_answers_a_hostile_admin_upload_without_a_500(tenant: Tenant, firmware_root: Path) -> None:
    # given
    data = HOSTILE["meta.conf nested 5,000 deep, signed by the org"].build(_org_key(tenant))
    client = Client(raise_request_exception=False)
    client.force_login(tenant.manager)
    # when
    response = client.post(
        "/admin/firmware/firmware/add/",
        {"product": tenant.product.pk, "kind": "firmware", "file": SimpleUploadedFile("evil.fw", data)},
    )
    # then
    assert response.status_code == 302, response.content[:2000]
    validate_firmware_task(_only_row().pk)
    assert_rejected(_only_row(), firmware_root, "nested more than")


# --- The stored bytes stay while the committed row is pending --------------------------


@pytest.mark.django_db(transaction=True)
def test_it_keeps_the_bytes_of_a_committed_upload_when_its_validation_fails(
    tenant: Tenant, firmware_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given: the storage cannot be read back while the upload's validation runs
    # (in embedded mode that is inside the upload request)
    key = _org_key(tenant)
    data = build_firmware(_spec(key))

    def unreachable(name: str) -> Any:
        raise services.StorageUnavailable(f"cannot open {name}: connection refused")

    monkeypatch.setattr(services, "_open_stored", unreachable)
    # when
    firmware = services.upload_firmware(tenant.manager, tenant.product, io.BytesIO(data), "fw.fw")
    # then: the row is committed pending, its bytes are still there for the sweep
    firmware.refresh_from_db()
    assert firmware.status == FirmwareStatus.PENDING
    assert [p.read_bytes() for p in stored_files(firmware_root)] == [data]
    # and once the storage is back, the sweep's run validates it
    monkeypatch.undo()
    services.validate_firmware(firmware.pk)
    firmware.refresh_from_db()
    assert firmware.status == FirmwareStatus.VALID
