"""Archives offered on join, and support scripts run on a device, from the
device client's side against a real hub process."""

from __future__ import annotations

import asyncio
import hashlib
import io
import urllib.request
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.test import Client
from django.urls import reverse

from deployments.models import Deployment
from devices import scripts
from devices.models import Device, ScriptRun, ScriptRunStatus, SupportScript
from firmware import services as firmware_services
from firmware.models import Firmware, FirmwareKind, FirmwareStatus, SigningKey
from firmware.tasks import validate_firmware_task
from nerveshub.tenancy.models import AuditEvent
from tests.conftest import Tenant
from tests.devices.conftest import Credentials, run, wait_until
from tests.support.fwup import FirmwareSpec, KeyPair, build_firmware, generate_keypair
from tests.support.hub import HubLauncher


def _publish(tenant: Tenant, version: str, kind: str, keys: KeyPair) -> Firmware:
    data = build_firmware(FirmwareSpec(product="widget", version=version, architecture="aarch64", key=keys))
    row = firmware_services.upload_firmware(tenant.admin, tenant.product, io.BytesIO(data), "f.fw", kind=kind)
    validate_firmware_task(row.pk)  # the worker's part (a no-op if embedded mode already ran it)
    row.refresh_from_db()
    assert row.status == FirmwareStatus.VALID, row.rejected_reason
    return row


def test_it_offers_the_deployment_archive_to_devices_that_know_archives(
    live_hub: HubLauncher, creds: Credentials
) -> None:
    # given
    tenant = creds.tenant
    keys = generate_keypair()
    SigningKey.objects.create(org=tenant.org, name="release", key=keys.public)
    firmware = _publish(tenant, "2.0.0", FirmwareKind.FIRMWARE, keys)
    archive = _publish(tenant, "0.9.0", FirmwareKind.ARCHIVE, keys)
    Deployment.objects.create(
        org=tenant.org, product=tenant.product, name="main", firmware=firmware, archive=archive, is_active=True
    )
    hub = live_hub()
    current = creds.device(hub.ws_url, "dev-new")
    old = creds.device(hub.ws_url, "dev-old", device_api_version="1.0.0")

    async def scenario() -> list[Any]:
        await current.connect()
        offered = await current.next_event("archive")
        await old.connect()
        await old.heartbeat()
        await asyncio.sleep(0.5)
        await current.close()
        await old.close()
        return offered

    # when
    offered = run(scenario())
    # then
    payload = offered[4]
    assert offered[:4] == [None, None, "device", "archive"]
    assert payload["uuid"] == archive.uuid and payload["version"] == "0.9.0"
    assert payload["size"] == archive.size
    assert set(payload) == {"url", "uuid", "version", "size", "description", "platform", "architecture", "uploaded_at"}
    assert "+" not in payload["uploaded_at"] and "Z" not in payload["uploaded_at"]  # naive ISO 8601
    with urllib.request.urlopen(payload["url"], timeout=10) as response:
        assert hashlib.sha256(response.read()).hexdigest() == archive.sha256
    assert not [m for m in old.received if m[3] == "archive"]
    current.assert_no_violations()
    old.assert_no_violations()


@pytest.mark.django_db
def test_it_refuses_an_archive_as_deployment_firmware_and_a_deployed_archive_deletion(
    tenant: Tenant, client: Client
) -> None:
    # given
    keys = generate_keypair()
    SigningKey.objects.create(org=tenant.org, name="release", key=keys.public)
    firmware = _publish(tenant, "2.0.0", FirmwareKind.FIRMWARE, keys)
    archive = _publish(tenant, "0.9.0", FirmwareKind.ARCHIVE, keys)
    client.force_login(tenant.manager)
    # when
    response = client.post(
        reverse("admin:deployments_deployment_add"),
        {
            "org": tenant.org.pk,
            "product": tenant.product.pk,
            "name": "wrong",
            "firmware": archive.pk,
            "archive": firmware.pk,
            "conditions_tags": "",
            "concurrent_updates": 10,
            "inflight_timeout_minutes": 30,
            "penalty_attempts": 3,
            "penalty_rate_attempts": 5,
            "penalty_rate_seconds": 180,
            "penalty_minutes": 1440,
            "breaker_failure_percent": 20,
            "breaker_min_attempts": 10,
            "stages-TOTAL_FORMS": 0,
            "stages-INITIAL_FORMS": 0,
        },
    )
    # then
    assert response.status_code == 200  # the form again, with errors
    assert not Deployment.objects.exists()
    Deployment.objects.create(org=tenant.org, product=tenant.product, name="ok", firmware=firmware, archive=archive)
    with pytest.raises(firmware_services.FirmwareInUse):
        firmware_services.delete_firmware(tenant.admin, archive)


@pytest.mark.services
def test_it_runs_a_support_script_and_stores_the_answer(live_hub: HubLauncher, creds: Credentials) -> None:
    # given
    tenant = creds.tenant
    script = SupportScript.objects.create(
        org=tenant.org, product=tenant.product, name="uptime", text=":erlang.statistics(:wall_clock)"
    )
    hub = live_hub()
    device = creds.device(hub.ws_url, "dev-scripts")

    async def scenario() -> tuple[Any, list[Any]]:
        await device.connect()
        # database_sync_to_async closes the worker thread's connection afterwards.
        row = await database_sync_to_async(Device.objects.get)(identifier="dev-scripts")
        started = await database_sync_to_async(scripts.run_script)(tenant.manager, row, script)
        pushed = await device.next_event("scripts/run")
        ref = pushed[4]["ref"]
        await device.push(
            "device",
            "scripts/run",
            {"ref": ref, "result": "completed", "return": "{1234, 5}", "output": "ok\n"},
        )
        # a repeated or late answer changes nothing
        await device.push("device", "scripts/run", {"ref": ref, "result": "error", "reason": "late", "output": ""})
        await device.heartbeat()
        return started, pushed

    # when
    started, pushed = run(scenario())
    # then
    assert pushed[:4] == [None, None, "device", "scripts/run"]
    assert pushed[4] == {"ref": started.ref, "text": script.text, "timeout": 10_000}
    wait_until(lambda: ScriptRun.objects.get(pk=started.pk).status != ScriptRunStatus.PENDING)
    finished = ScriptRun.objects.get(pk=started.pk)
    assert finished.status == ScriptRunStatus.COMPLETED
    assert finished.return_value == "{1234, 5}" and finished.output == "ok\n"
    assert AuditEvent.objects.filter(action="device.script_run", actor_user=tenant.manager).exists()
    device.assert_no_violations()


@pytest.mark.django_db
def test_it_says_why_a_device_cannot_run_a_script(tenant: Tenant, other_tenant: Tenant) -> None:
    # given
    script = SupportScript.objects.create(org=tenant.org, product=tenant.product, name="s", text="1 + 1")
    old = Device.objects.create(org=tenant.org, product=tenant.product, identifier="old", device_api_version="2.0.0")
    offline = Device.objects.create(
        org=tenant.org, product=tenant.product, identifier="off", device_api_version="2.3.0"
    )
    foreign = Device.objects.create(
        org=other_tenant.org, product=other_tenant.product, identifier="x", device_api_version="2.3.0"
    )
    # when / then
    with pytest.raises(scripts.ScriptRefused, match=r"2\.1\.0 or later"):
        scripts.run_script(tenant.manager, old, script)
    with pytest.raises(scripts.ScriptRefused, match="offline"):
        scripts.run_script(tenant.manager, offline, script)
    with pytest.raises(scripts.ScriptRefused, match="another product"):
        scripts.run_script(tenant.manager, foreign, script)
    assert not ScriptRun.objects.exists()


@pytest.mark.django_db
def test_it_keeps_scripts_and_runs_from_viewers_and_outsiders(tenant: Tenant, client: Client) -> None:
    # given
    script = SupportScript.objects.create(org=tenant.org, product=tenant.product, name="s", text="1 + 1")
    device = Device.objects.create(
        org=tenant.org,
        product=tenant.product,
        identifier="d1",
        device_api_version="2.3.0",
        connection_status="connected",
    )
    action = {"action": "run_script", "_selected_action": [device.pk], "apply": "1", "script": script.pk}
    changelist = reverse("admin:devices_device_changelist")
    # when: an outsider
    client.force_login(tenant.outsider)
    outsider_script = client.get(reverse("admin:devices_supportscript_change", args=[script.pk]))
    client.post(changelist, action)
    # when: a viewer
    client.force_login(tenant.viewer)
    viewer_edit = client.post(
        reverse("admin:devices_supportscript_change", args=[script.pk]),
        {"product": tenant.product.pk, "name": "s", "text": "System.halt()", "timeout_ms": 10000},
    )
    client.post(changelist, action)
    # then
    assert outsider_script.status_code in (302, 403, 404)
    assert viewer_edit.status_code == 403
    script.refresh_from_db()
    assert script.text == "1 + 1"
    assert not ScriptRun.objects.exists()
    # and the same request from a manager runs it
    client.force_login(tenant.manager)
    client.post(changelist, action)
    assert ScriptRun.objects.get().requested_by == tenant.manager


def test_it_runs_the_connecting_code_on_every_join(live_hub: HubLauncher, creds: Credentials) -> None:
    # given: a deployment's and a device's connecting code
    tenant = creds.tenant
    keys = generate_keypair()
    SigningKey.objects.create(org=tenant.org, name="release", key=keys.public)
    firmware = _publish(tenant, "2.0.0", FirmwareKind.FIRMWARE, keys)
    deployment = Deployment.objects.create(
        org=tenant.org,
        product=tenant.product,
        name="main",
        firmware=firmware,
        is_active=True,
        connecting_code="Logger.info(:fleet)",
    )
    Device.objects.create(
        org=tenant.org, product=tenant.product, identifier="dev-code", connecting_code="Logger.info(:me)"
    )
    Device.objects.create(
        org=tenant.org, product=tenant.product, identifier="dev-code-old", connecting_code="Logger.info(:me)"
    )
    Device.objects.filter(identifier__startswith="dev-code").update(deployment=deployment)
    hub = live_hub()
    current = creds.device(hub.ws_url, "dev-code")
    old = creds.device(hub.ws_url, "dev-code-old", device_api_version="2.0.0")

    async def scenario() -> list[Any]:
        await current.connect()
        pushed = await current.next_event("scripts/run")
        await current.push("device", "scripts/run", {"ref": "connecting_code", "result": "completed", "return": ":ok"})
        await old.connect()
        await old.heartbeat()
        await current.heartbeat()
        await asyncio.sleep(0.3)
        await current.close()
        await old.close()
        return pushed

    # when
    pushed = run(scenario())
    # then
    assert pushed == [
        None,
        None,
        "device",
        "scripts/run",
        {"text": "Logger.info(:fleet)\nLogger.info(:me)", "ref": "connecting_code"},
    ]
    assert not [m for m in old.received if m[3] == "scripts/run"]
    assert not ScriptRun.objects.exists()  # telemetry only, not a run anybody waits for
    current.assert_no_violations()
