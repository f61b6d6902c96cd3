"""Signing keys and firmware through the API, with real fwup-format files."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from firmware.models import Firmware, SigningKey
from firmware.tasks import validate_firmware_task
from tests.api.conftest import ApiClient
from tests.conftest import Tenant
from tests.support.fwup import FirmwareSpec, build_firmware, generate_keypair

if TYPE_CHECKING:
    # django-stubs' name for what the test client returns (no runtime class).
    from django.test.client import _MonkeyPatchedWSGIResponse as TestResponse

KEYS = "/orgs/acme/keys"
FIRMWARE = "/orgs/acme/products/widget/firmwares"


def _upload(api: ApiClient, data: bytes, name: str = "fw.fw") -> TestResponse:
    response = Client().post(
        "/api/v1" + FIRMWARE,
        {"firmware": SimpleUploadedFile(name, data, content_type="application/octet-stream")},
        HTTP_AUTHORIZATION=f"token {api.token}",
    )
    if response.status_code == 201:
        # The worker's part, called directly (a no-op when embedded mode already ran it).
        validate_firmware_task(response.json()["id"])
    return response


@pytest.mark.django_db(transaction=True)
def test_it_registers_a_key_and_publishes_signed_firmware(
    tenant: Tenant, as_admin: ApiClient, as_manager: ApiClient, as_viewer: ApiClient
) -> None:
    # given
    keys = generate_keypair(padded=False)
    # when
    created = as_admin.post(KEYS, {"name": "release", "key": keys.public})
    uploaded = _upload(as_manager, build_firmware(FirmwareSpec(product="widget", version="1.2.3", key=keys)))
    firmware_id = uploaded.json()["id"]
    fetched = as_viewer.get(f"{FIRMWARE}/{firmware_id}").json()
    # then
    assert created.status_code == 201
    assert uploaded.status_code == 201, uploaded.content
    assert fetched["status"] == "valid", fetched
    assert fetched["version"] == "1.2.3" and fetched["signing_key"] == "release"
    assert as_viewer.get(f"{FIRMWARE}/{fetched['uuid']}").json()["id"] == firmware_id
    assert [f["uuid"] for f in as_viewer.get(FIRMWARE).json()] == [fetched["uuid"]]


@pytest.mark.django_db(transaction=True)
def test_it_rejects_unsigned_firmware_with_a_reason(tenant: Tenant, as_admin: ApiClient, as_manager: ApiClient) -> None:
    as_admin.post(KEYS, {"name": "release", "key": generate_keypair().public})
    uploaded = _upload(as_manager, build_firmware(FirmwareSpec(product="widget", key=None)))
    body = as_manager.get(f"{FIRMWARE}/{uploaded.json()['id']}").json()
    assert body["status"] == "rejected"
    assert body["rejected_reason"]


@pytest.mark.django_db
def test_it_refuses_malformed_keys_and_key_writes_below_admin(
    tenant: Tenant, as_admin: ApiClient, as_manager: ApiClient
) -> None:
    bad = as_admin.post(KEYS, {"name": "bad", "key": "not-base64!"})
    assert bad.status_code == 422 and "key" in bad.json()["errors"]
    assert as_manager.post(KEYS, {"name": "k", "key": generate_keypair().public}).status_code == 403
    assert not SigningKey.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_it_refuses_to_delete_a_key_that_signed_firmware(
    tenant: Tenant, as_admin: ApiClient, as_manager: ApiClient
) -> None:
    keys = generate_keypair()
    as_admin.post(KEYS, {"name": "release", "key": keys.public})
    _upload(as_manager, build_firmware(FirmwareSpec(product="widget", key=keys)))
    response = as_admin.delete(KEYS + "/release")
    assert response.status_code == 409
    assert "signed 1 firmware" in response.json()["errors"]["detail"]
    firmware = Firmware.objects.get()
    assert as_manager.delete(f"{FIRMWARE}/{firmware.uuid}").status_code == 204
    assert as_admin.delete(KEYS + "/release").status_code == 204


@pytest.mark.django_db
def test_it_refuses_uploads_to_a_viewer(tenant: Tenant, as_viewer: ApiClient) -> None:
    assert _upload(as_viewer, b"PK\x03\x04whatever").status_code == 403
    assert not Firmware.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_it_publishes_an_archive_and_attaches_it_to_a_deployment(
    tenant: Tenant, as_admin: ApiClient, as_manager: ApiClient
) -> None:
    # given
    keys = generate_keypair()
    as_admin.post(KEYS, {"name": "release", "key": keys.public})
    firmware = _upload(as_manager, build_firmware(FirmwareSpec(product="widget", version="2.0.0", key=keys))).json()
    archive = Client().post(
        "/api/v1" + FIRMWARE,
        {
            "firmware": SimpleUploadedFile(
                "a.fw", build_firmware(FirmwareSpec(product="widget", version="0.1.0", key=keys))
            ),
            "kind": "archive",
        },
        HTTP_AUTHORIZATION=f"token {as_manager.token}",
    )
    validate_firmware_task(archive.json()["id"])
    archive_uuid = Firmware.objects.get(pk=archive.json()["id"]).uuid
    firmware_uuid = Firmware.objects.get(pk=firmware["id"]).uuid
    deployments = "/orgs/acme/products/widget/deployments"
    # when
    wrong = as_manager.post(deployments, {"name": "main", "firmware": archive_uuid})
    created = as_manager.post(deployments, {"name": "main", "firmware": firmware_uuid, "archive": archive_uuid})
    removed = as_manager.patch(deployments + "/main", {"archive": ""})
    bad_kind = Client().post(
        "/api/v1" + FIRMWARE,
        {"firmware": SimpleUploadedFile("b.fw", b"PK"), "kind": "rootfs"},
        HTTP_AUTHORIZATION=f"token {as_manager.token}",
    )
    # then
    assert archive.json()["kind"] == "archive"
    assert wrong.status_code == 404  # an archive is not firmware
    assert created.status_code == 201, created.content
    assert created.json()["archive_uuid"] == archive_uuid
    assert removed.json()["archive_uuid"] is None
    assert bad_kind.status_code == 422
