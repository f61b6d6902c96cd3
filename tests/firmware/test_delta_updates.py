"""Delta updates from a deployment: the `update` push carries the delta only
when every condition holds, otherwise the full file; the setting through the
API, the pages and the admin, with their refusals; the preview and the
deployment page.

Source and target are real signed, delta-capable uploads; the delta is built
by the hub's own service with the xdelta3 program."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from pytest_django.fixtures import DjangoCaptureOnCommitCallbacks

from deployments import deltas as deployment_deltas
from deployments import rollout
from deployments.models import Deployment, DeviceUpdate, UpdateStatus
from devices.models import Device
from firmware import delta, deltas
from firmware import services as firmware_services
from firmware.downloads import PREFIX, read_token
from firmware.models import DeltaFirmware, DeltaStatus, Firmware, FirmwareStatus
from nerveshub.web.access import org_slug
from tests.api.conftest import api_for
from tests.conftest import Tenant
from tests.deployments.conftest import make_device
from tests.firmware.conftest import Uploader
from tests.support.fwup import KeyPair, delta_pair

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.skipif(delta.xdelta3_path() is None, reason="xdelta3 is not installed (apt-get install xdelta3)"),
]

API = "/orgs/acme/products/widget/deployments"


@dataclass
class Setup:
    tenant: Tenant
    source: Firmware
    target: Firmware
    deployment: Deployment
    delta: DeltaFirmware
    root: Path


@pytest.fixture
def receiving_loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture
def setup(
    tenant: Tenant,
    upload: Uploader,
    keypair: KeyPair,
    firmware_root: Path,
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
) -> Setup:
    source_spec, target_spec = delta_pair(keypair)
    source, target = upload(source_spec), upload(target_spec)
    assert source.status == target.status == FirmwareStatus.VALID
    deployment = Deployment.objects.create(
        org=tenant.org, product=tenant.product, name="stable", firmware=target, is_active=True, delta_updates=True
    )
    with django_capture_on_commit_callbacks(execute=False):
        (delta_id,) = deltas.request_deltas(target, [source.uuid or ""])
    row = deltas.generate_delta(delta_id)
    assert row is not None and row.status == DeltaStatus.READY, row and row.reason
    return Setup(tenant, source, target, deployment, row, firmware_root)


def _socket() -> str:
    return str(async_to_sync(get_channel_layer().new_channel)())


def _device(setup: Setup, name: str = "d1", **fields: Any) -> Device:
    fields.setdefault("firmware_uuid", setup.source.uuid)
    fields.setdefault("fwup_version", "1.16.0")
    device = make_device(setup.tenant.product, name, socket_channel=_socket(), **fields)
    rollout.assign_deployment(device.pk)
    return device


def _pushed(device: Device, loop: asyncio.AbstractEventLoop) -> dict[str, Any]:
    async def receive() -> dict[str, Any]:
        message = await asyncio.wait_for(get_channel_layer().receive(device.socket_channel), 2)
        assert message["event"] == "update"
        return dict(message["payload"])

    return loop.run_until_complete(receive())


def _rollout(setup: Setup, captured: DjangoCaptureOnCommitCallbacks) -> None:
    with captured(execute=True):
        run = rollout.run_rollout(setup.deployment.pk)
    assert run.claimed, run.skipped


def test_a_device_with_a_new_fwup_on_a_known_firmware_is_sent_the_delta(
    setup: Setup,
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
    receiving_loop: asyncio.AbstractEventLoop,
    tmp_path: Path,
) -> None:
    # given
    device = _device(setup)
    # when
    _rollout(setup, django_capture_on_commit_callbacks)
    payload = _pushed(device, receiving_loop)
    # then: the delta's URL, size and checksums, the target's metadata
    row = setup.delta
    assert payload["size"] == row.size < setup.target.size
    assert payload["checksum"] == row.sha256.upper()
    assert payload["partials_checksums"] == [p.upper() for p in row.partial_sha256]
    assert payload["firmware_meta"]["uuid"] == setup.target.uuid
    assert payload["firmware_meta"]["version"] == "1.1.0"
    update = DeviceUpdate.objects.get(device=device)
    assert update.delta_id == row.pk and update.firmware_id == setup.target.pk
    # the URL is a signed download of the delta file: its bytes match the
    # checksum, and they decode against the source to the target
    path = urlparse(payload["firmware_url"]).path
    assert payload["firmware_url"].startswith(settings.PUBLIC_URL) and path.startswith(PREFIX)
    token, _, filename = path[len(PREFIX) :].partition("/")
    assert read_token(token, filename) == row.storage_name
    downloaded = (setup.root / row.storage_name).read_bytes()
    assert hashlib.sha256(downloaded).hexdigest().upper() == payload["checksum"]
    (tmp_path / "got.fw").write_bytes(downloaded)
    delta.verify_delta(
        setup.root / setup.source.storage_name,
        setup.root / setup.target.storage_name,
        tmp_path / "got.fw",
        tmp_path,
        limits=firmware_services._limits(),
        timeout=60,
    )


def _fail_a_delta_attempt(setup: Setup, device: Device) -> None:
    DeviceUpdate.objects.create(
        device=device,
        deployment=setup.deployment,
        firmware=setup.target,
        delta=setup.delta,
        status=UpdateStatus.FAILED,
        finished_at=timezone.now(),
    )


FULL_CASES: dict[str, tuple[dict[str, Any], Callable[[Setup, Device], object]]] = {
    "delta updates off": ({}, lambda s, d: Deployment.objects.filter(pk=s.deployment.pk).update(delta_updates=False)),
    "no fwup version reported": ({"fwup_version": ""}, lambda s, d: None),
    "fwup too old": ({"fwup_version": "1.5.9"}, lambda s, d: None),
    "firmware unknown to the product": ({"firmware_uuid": str(uuid.uuid4())}, lambda s, d: None),
    "no ready delta": ({}, lambda s, d: DeltaFirmware.objects.update(status=DeltaStatus.FAILED, reason="x")),
    "a delta attempt failed before": ({}, _fail_a_delta_attempt),
}


@pytest.mark.parametrize("case", list(FULL_CASES))
def test_a_device_missing_any_condition_is_sent_the_full_file(
    case: str,
    setup: Setup,
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
    receiving_loop: asyncio.AbstractEventLoop,
) -> None:
    # given
    fields, arrange = FULL_CASES[case]
    device = _device(setup, **fields)
    arrange(setup, device)
    setup.deployment.refresh_from_db()
    # when
    _rollout(setup, django_capture_on_commit_callbacks)
    payload = _pushed(device, receiving_loop)
    # then
    assert payload["size"] == setup.target.size
    assert payload["checksum"] == setup.target.sha256.upper()
    assert DeviceUpdate.objects.get(device=device, status=UpdateStatus.REQUESTED).delta_id is None


def test_without_xdelta3_every_device_is_sent_the_full_file(
    setup: Setup,
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
    receiving_loop: asyncio.AbstractEventLoop,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    # given
    device = _device(setup)
    monkeypatch.setenv("PATH", str(tmp_path))
    # when
    _rollout(setup, django_capture_on_commit_callbacks)
    # then
    assert _pushed(device, receiving_loop)["size"] == setup.target.size
    client = Client()
    client.force_login(setup.tenant.viewer)
    page = client.get(f"/org/{org_slug(setup.tenant.org)}/deployments/{setup.deployment.pk}/")
    assert "Deltas are unavailable on this hub" in page.content.decode()
    assert api_for(setup.tenant.viewer).get(API + "/stable").json()["deltas_available"] is False


def test_a_join_resends_an_unacknowledged_delta_update(
    setup: Setup,
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
    receiving_loop: asyncio.AbstractEventLoop,
) -> None:
    # given: a delta update claimed for a device that went away before its push
    device = _device(setup)
    DeviceUpdate.objects.create(device=device, deployment=setup.deployment, firmware=setup.target, delta=setup.delta)
    # when
    with django_capture_on_commit_callbacks(execute=True):
        assert rollout.push_pending_update(device.pk, device.socket_channel)
    # then
    assert _pushed(device, receiving_loop)["size"] == setup.delta.size


def test_the_preview_and_the_page_say_who_gets_a_delta(setup: Setup) -> None:
    # given
    _device(setup, "new-fwup")
    _device(setup, "old-fwup", fwup_version="1.2.0")
    # when
    rows = {r.device.identifier: r for r in rollout.preview(setup.deployment)}
    client = Client()
    client.force_login(setup.tenant.viewer)
    page = client.get(f"/org/{org_slug(setup.tenant.org)}/deployments/{setup.deployment.pk}/").content.decode()
    preview = client.get(f"/org/{org_slug(setup.tenant.org)}/deployments/{setup.deployment.pk}/preview/")
    # then
    assert rows["new-fwup"].delivery == f"delta ({setup.delta.size:,} bytes)"
    assert rows["old-fwup"].delivery == "full: fwup 1.2.0 < 1.6.0"
    assert "full: fwup 1.2.0 &lt; 1.6.0" in preview.content.decode()
    assert 'id="delta-pairs"' in page and "Ready" in page and "1.0.0" in page


def test_the_api_shows_the_setting_the_pairs_and_the_firmwares_capability(setup: Setup) -> None:
    viewer = api_for(setup.tenant.viewer)
    body = viewer.get(API + "/stable").json()
    assert body["delta_updates"] is True and body["deltas_available"] is True
    assert body["deltas"] == [
        {
            "source_uuid": setup.source.uuid,
            "source_version": "1.0.0",
            "status": "ready",
            "reason": "",
            "size": setup.delta.size,
            "saving": setup.target.size - setup.delta.size,
        }
    ]
    firmware = viewer.get(f"/orgs/acme/products/widget/firmwares/{setup.target.uuid}").json()
    assert firmware["delta_resources"] == ["rootfs.img"] and firmware["delta_fwup_version"] == "1.6.0"


def _requests_deltas(callbacks: list[Callable[[], Any]], deployment: Deployment) -> bool:
    return any(
        getattr(c, "func", None) is deployment_deltas._dispatch and getattr(c, "args", None) == (deployment.pk,)
        for c in callbacks
    )


def test_turning_deltas_on_through_the_api_requests_them_and_refuses_others(
    setup: Setup, django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks
) -> None:
    # given
    Deployment.objects.filter(pk=setup.deployment.pk).update(delta_updates=False)
    tenant = setup.tenant
    # when / then: refused to a viewer and an outsider, hostile values are a 422
    assert api_for(tenant.viewer).patch(API + "/stable", {"delta_updates": True}).status_code == 403
    assert api_for(tenant.outsider).patch(API + "/stable", {"delta_updates": True}).status_code == 404
    for hostile in ("yes", 10**30, [True], {"on": True}, None):
        response = api_for(tenant.manager).patch(API + "/stable", {"delta_updates": hostile})
        assert response.status_code in (200, 422), hostile
        assert Deployment.objects.get(pk=setup.deployment.pk).delta_updates is False
    # when: a manager turns them on
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = api_for(tenant.manager).patch(API + "/stable", {"delta_updates": True})
    # then
    assert response.status_code == 200 and response.json()["delta_updates"] is True
    assert _requests_deltas(callbacks, setup.deployment)


def test_the_request_asks_for_the_firmware_the_members_run(setup: Setup) -> None:
    # given: the existing pair, and a member on a firmware the product does not know
    DeltaFirmware.objects.all().delete()
    _device(setup, "known")
    _device(setup, "unknown", firmware_uuid=str(uuid.uuid4()))
    # when
    created = deployment_deltas.request_for_deployment(setup.deployment.pk)
    again = deployment_deltas.request_for_deployment(setup.deployment.pk)
    # then
    assert (created, again) == (1, 0)
    assert list(DeltaFirmware.objects.values_list("source_id", "target_id", "status")) == [
        (setup.source.pk, setup.target.pk, DeltaStatus.PENDING)
    ]


SETTINGS = {
    "concurrent_updates": 10,
    "inflight_timeout_minutes": 30,
    "penalty_attempts": 3,
    "penalty_rate_attempts": 5,
    "penalty_rate_seconds": 180,
    "penalty_minutes": 1440,
    "breaker_failure_percent": 20,
    "breaker_min_attempts": 10,
}


def test_the_page_and_the_admin_set_it_for_managers_only(setup: Setup) -> None:
    # given
    tenant, deployment = setup.tenant, setup.deployment
    Deployment.objects.filter(pk=deployment.pk).update(delta_updates=False)
    page = f"/org/{org_slug(tenant.org)}/deployments/{deployment.pk}/edit/"
    form = {"product": tenant.product.pk, "name": "stable", "firmware": setup.target.pk, **SETTINGS}
    admin = reverse("admin:deployments_deployment_change", args=[deployment.pk])
    admin_form = {
        **form,
        "org": tenant.org.pk,
        "conditions_tags": "[]",
        "is_active": "on",
        "stages-TOTAL_FORMS": 0,
        "stages-INITIAL_FORMS": 0,
    }

    def as_user(user: Any) -> Client:
        client = Client()
        client.force_login(user)
        return client

    manager = as_user(tenant.manager)
    assert 'name="delta_updates"' in manager.get(admin).content.decode()
    assert 'name="delta_updates"' in manager.get(page).content.decode()
    # when / then: refused below manage and outside the organization
    assert as_user(tenant.viewer).post(page, {**form, "delta_updates": "on"}).status_code == 403
    assert as_user(tenant.outsider).post(page, {**form, "delta_updates": "on"}).status_code == 404
    assert as_user(tenant.viewer).post(admin, {**admin_form, "delta_updates": "on"}).status_code == 403
    # the admin answers another organization's object as missing: back to its index
    refused = as_user(tenant.outsider).post(admin, {**admin_form, "delta_updates": "on"})
    assert (refused.status_code, refused["Location"]) == (302, reverse("admin:index"))
    assert Deployment.objects.get(pk=deployment.pk).delta_updates is False
    # when / then: a manager turns it on on the page, off in the admin
    assert as_user(tenant.manager).post(page, {**form, "delta_updates": "on"}).status_code == 302
    assert Deployment.objects.get(pk=deployment.pk).delta_updates is True
    assert as_user(tenant.manager).post(admin, admin_form).status_code == 302
    assert Deployment.objects.get(pk=deployment.pk).delta_updates is False
