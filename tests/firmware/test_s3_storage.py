"""Firmware on S3 (django-storages) against moto in server mode: upload,
validation, presigned download URL, deletion."""

from __future__ import annotations

import hashlib
import io
import random
import urllib.request
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from pytest_django.fixtures import DjangoCaptureOnCommitCallbacks, Settings

from firmware import delta, deltas, services
from firmware.models import DeltaStatus, Firmware, FirmwareStatus
from firmware.tasks import validate_firmware_task
from nerveshub.tenancy import services as tenancy
from tests.conftest import Tenant
from tests.support.fwup import FirmwareSpec, build_firmware, delta_pair
from tests.support.hub import free_port

pytestmark = pytest.mark.django_db

BUCKET = "firmware-test"
CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3(moto_endpoint: str, settings: Settings) -> Any:
    client = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1", **CREDENTIALS)
    client.create_bucket(Bucket=BUCKET)
    settings.STORAGES = {
        **settings.STORAGES,
        "firmware": {
            "BACKEND": "storages.backends.s3.S3Storage",
            "OPTIONS": {
                "bucket_name": BUCKET,
                "endpoint_url": moto_endpoint,
                "region_name": "us-east-1",
                "access_key": CREDENTIALS["aws_access_key_id"],
                "secret_key": CREDENTIALS["aws_secret_access_key"],
                "location": "firmware",
                "default_acl": None,
                "file_overwrite": False,
                "querystring_auth": True,
                "querystring_expire": settings.FIRMWARE_URL_TTL,
                "max_memory_size": 2_621_440,
                "signature_version": "s3v4",
            },
        },
    }
    yield client
    for obj in client.list_objects_v2(Bucket=BUCKET).get("Contents", []):
        client.delete_object(Bucket=BUCKET, Key=obj["Key"])
    client.delete_bucket(Bucket=BUCKET)


def keys(client: Any) -> list[str]:
    return [obj["Key"] for obj in client.list_objects_v2(Bucket=BUCKET).get("Contents", [])]


def upload_and_validate(tenant: Tenant, data: bytes, capture: Any) -> Any:
    with capture(execute=False):
        firmware = services.upload_firmware(tenant.admin, tenant.product, io.BytesIO(data), "s3.fw")
    with capture(execute=True):
        validate_firmware_task(firmware.pk)
    firmware.refresh_from_db()
    return firmware


def test_it_stores_validates_presigns_and_deletes_on_s3(
    s3: Any,
    tenant: Tenant,
    spec: FirmwareSpec,
    settings: Settings,
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
) -> None:
    # given
    spec.resources = {"rootfs.img": random.Random(5).randbytes(3 * 1024 * 1024)}
    data = build_firmware(spec)
    # when
    firmware = upload_and_validate(tenant, data, django_capture_on_commit_callbacks)
    # then: validated from S3
    assert firmware.status == FirmwareStatus.VALID, firmware.rejected_reason
    assert keys(s3) == [f"firmware/{firmware.storage_name}"]
    # when: a device fetches the presigned URL, then resumes with a range
    url = services.download_url(firmware)
    with urllib.request.urlopen(url) as response:
        fetched = response.read()
    ranged = urllib.request.Request(url, headers={"Range": f"bytes=100-{len(data)}"})
    with urllib.request.urlopen(ranged) as response:
        status, tail = response.status, response.read()
    # then
    assert fetched == data
    assert (status, tail) == (206, data[100:])
    query = parse_qs(urlsplit(url).query)
    assert query["X-Amz-Expires"] == [str(settings.FIRMWARE_URL_TTL)]
    assert "X-Amz-Signature" in query
    # when: deleted
    with django_capture_on_commit_callbacks(execute=True):
        services.delete_firmware(tenant.admin, firmware)
    # then
    assert keys(s3) == []


def test_it_deletes_a_rejected_file_from_s3(
    s3: Any, tenant: Tenant, spec: FirmwareSpec, django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks
) -> None:
    # given
    spec.key = None
    # when
    firmware = upload_and_validate(tenant, build_firmware(spec), django_capture_on_commit_callbacks)
    # then
    assert firmware.status == FirmwareStatus.REJECTED
    assert keys(s3) == []


def test_it_treats_an_unreachable_s3_as_transient(
    tenant: Tenant,
    spec: FirmwareSpec,
    settings: Settings,
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
    s3: Any,
) -> None:
    # given: the object was stored, then the endpoint goes away
    with django_capture_on_commit_callbacks(execute=False):
        firmware = services.upload_firmware(tenant.admin, tenant.product, io.BytesIO(build_firmware(spec)), "a.fw")
    options = settings.STORAGES["firmware"]["OPTIONS"]
    settings.STORAGES = {
        **settings.STORAGES,
        "firmware": {
            **settings.STORAGES["firmware"],
            "OPTIONS": {**options, "endpoint_url": f"http://127.0.0.1:{free_port()}"},
        },
    }
    # when / then: the task would retry; the row stays pending
    with pytest.raises(services.StorageUnavailable):
        services.validate_firmware(firmware.pk)
    firmware.refresh_from_db()
    assert firmware.status == FirmwareStatus.PENDING


def test_it_refuses_an_oversized_upload_to_s3_without_leaving_an_object(
    tenant: Tenant, settings: Settings, s3: Any
) -> None:
    # given: bigger than the cap and bigger than one multipart part (8 MiB)
    settings.FIRMWARE_MAX_SIZE = 9 * 1024 * 1024
    stream = io.BufferedReader(io.BytesIO(bytes(10 * 1024 * 1024)))
    # when
    with pytest.raises(services.UploadRefused):
        services.upload_firmware(tenant.admin, tenant.product, stream, "big.fw")
    # then
    assert keys(s3) == []
    assert s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []


def test_it_answers_503_and_keeps_nothing_when_the_store_refuses_an_upload(
    tenant: Tenant, spec: FirmwareSpec, settings: Settings, s3: Any
) -> None:
    # given: the configured bucket does not exist (S3 refuses every write)
    firmware = settings.STORAGES["firmware"]
    settings.STORAGES = {
        **settings.STORAGES,
        "firmware": {**firmware, "OPTIONS": {**firmware["OPTIONS"], "bucket_name": "no-such-bucket"}},
    }
    token = tenancy.create_api_token("ci", tenant.manager, "tests").clear
    # when
    response = Client().post(
        "/api/v1/orgs/acme/products/widget/firmwares",
        {"firmware": SimpleUploadedFile("a.fw", build_firmware(spec))},
        HTTP_AUTHORIZATION=f"token {token}",
    )
    # then: the store's fault, said as such; no row, no object anywhere
    assert response.status_code == 503, response.content
    assert response.json()["errors"]["detail"] == services.UPLOAD_STORE_FAILED
    assert not Firmware.objects.exists()
    assert keys(s3) == []


@pytest.mark.skipif(delta.xdelta3_path() is None, reason="xdelta3 is not installed (apt-get install xdelta3)")
def test_it_builds_presigns_and_deletes_a_delta_on_s3(
    s3: Any, tenant: Tenant, spec: FirmwareSpec, django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks
) -> None:
    # given: two delta-capable firmware files on S3
    assert spec.key is not None
    source_spec, target_spec = delta_pair(spec.key)
    source, target = (
        upload_and_validate(tenant, build_firmware(s), django_capture_on_commit_callbacks)
        for s in (source_spec, target_spec)
    )
    # when: the delta is built from S3 and stored there
    with django_capture_on_commit_callbacks(execute=False):
        (delta_id,) = deltas.request_deltas(target, [source.uuid or ""])
    row = deltas.generate_delta(delta_id)
    # then
    assert row is not None and row.status == DeltaStatus.READY, row and row.reason
    assert f"firmware/{row.storage_name}" in keys(s3)
    with urllib.request.urlopen(deltas.delta_payload(row)["firmware_url"]) as response:
        fetched = response.read()
    assert len(fetched) == row.size and hashlib.sha256(fetched).hexdigest() == row.sha256
    # when: the target is deleted, its delta goes with it
    with django_capture_on_commit_callbacks(execute=True):
        services.delete_firmware(tenant.admin, target)
    # then
    assert keys(s3) == [f"firmware/{source.storage_name}"]
