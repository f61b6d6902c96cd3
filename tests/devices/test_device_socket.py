"""The device socket from the device's side: a nerves_hub_link mimic against real
daphne processes (live_hub)."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import msgpack
import websockets
from django.db import connection
from websockets.asyncio.client import connect

from deployments.models import DeviceUpdate, UpdateStatus
from devices.models import ConnectionStatus, Device, ValidationStatus
from firmware.models import Firmware, SigningKey
from nerveshub.tenancy.models import AuditEvent
from tests.devices.conftest import Credentials, run, wait_until
from tests.support.hub import HubLauncher
from tests.support.nhl_client import DEFAULT_FW

KEY = base64.b64encode(bytes(range(32))).decode()


def test_it_runs_a_full_device_session(live_hub: HubLauncher, creds: Credentials) -> None:
    # given
    SigningKey.objects.create(org=creds.tenant.org, name="prod", key=KEY)
    hub = live_hub()
    device = creds.device(hub.ws_url, "dev-full", remote_iex=True)

    async def scenario() -> tuple[list[Any], list[Any], list[Any], list[Any], list[Any], list[Any]]:
        # when: connect and join device + console as handle_connect/1 does
        reply = await device.connect()
        fwup_keys = await device.next_event("fwup_public_keys")
        archive_keys = await device.next_event("archive_public_keys")
        await device.next_event("extensions:get")
        # the device attaches in the reply's order (geo, health); each attach gets its request
        first, second = await device.next_event("extensions"), await device.next_event("extensions")
        health_check = next(m for m in (first, second) if m[3] == "health:check")
        geo_request = next(m for m in (first, second) if m[3] == "geo:location:request")
        await device.push("extensions", "health:report", {"value": {"metrics": {"cpu_temp": 48.3}, "alarms": {}}})
        await device.push("extensions", "geo:location:update", {"latitude": 1.5, "longitude": 2.5, "source": "geoip"})
        await device.push("device", "firmware_validated", {})
        heartbeat = await device.heartbeat()
        await asyncio.sleep(0.3)
        await device.close()
        return reply, fwup_keys, archive_keys, health_check, geo_request, heartbeat

    reply, fwup_keys, archive_keys, health_check, geo_request, heartbeat = run(scenario())
    # then: the wire
    assert reply == ["1", "1", "device", "phx_reply", {"status": "ok", "response": {}}]
    assert fwup_keys == [None, None, "device", "fwup_public_keys", {"keys": [KEY]}]
    assert archive_keys[4] == {"keys": [KEY]}
    assert device.join_refs["console"] == "2"
    extensions_reply = next(m for m in device.received if m[2] == "extensions" and m[3] == "phx_reply")
    assert extensions_reply[4] == {"status": "ok", "response": ["geo", "health"]}
    assert health_check[:4] == [device.join_refs["extensions"], None, "extensions", "health:check"]
    assert geo_request[3] == "geo:location:request"
    assert heartbeat[2] == "phoenix"
    device.assert_no_violations()
    # then: the database, once the hub has recorded the close
    wait_until(lambda: Device.objects.get(identifier="dev-full").connection_status == ConnectionStatus.DISCONNECTED)
    row = Device.objects.get(identifier="dev-full")
    assert row.product_id == creds.tenant.product.pk
    assert row.firmware_uuid == DEFAULT_FW["nerves_fw_uuid"]
    assert row.firmware_platform == "rpi4"
    assert row.fwup_version == "1.13.2"
    assert row.device_api_version == "2.3.0"
    assert row.console_version == "2.0.0"
    assert row.console_available is False  # cleared on disconnect
    assert row.network_interface == "eth0"
    assert row.firmware_validation == ValidationStatus.VALIDATED
    assert row.health == {"metrics": {"cpu_temp": 48.3}, "alarms": {}}
    assert list(row.health_reports.values_list("metrics", flat=True)) == [{"cpu_temp": 48.3}]
    assert row.location == {"latitude": 1.5, "longitude": 2.5, "source": "geoip"}
    assert row.connection_status == ConnectionStatus.DISCONNECTED
    assert row.first_seen_at is not None and row.socket_channel == ""
    assert AuditEvent.objects.filter(action="device.registered", subject_id=str(row.pk)).exists()


def test_it_pushes_nothing_for_keys_when_the_org_has_none_and_old_devices_get_no_extensions(
    live_hub: HubLauncher, creds: Credentials
) -> None:
    # given
    hub = live_hub()
    device = creds.device(hub.ws_url, "dev-old", device_api_version="2.1.0", firmware_validated=None)

    async def scenario() -> None:
        await device.connect()
        await device.heartbeat()
        await asyncio.sleep(0.2)
        await device.close()

    # when
    run(scenario())
    # then: only the join reply and the heartbeat reply came back
    assert [m[3] for m in device.received] == ["phx_reply", "phx_reply"]
    assert Device.objects.get(identifier="dev-old").firmware_validation == ValidationStatus.UNKNOWN
    device.assert_no_violations()


def test_it_defaults_a_missing_or_invalid_api_version_to_1_0_0(live_hub: HubLauncher, creds: Credentials) -> None:
    # given
    hub = live_hub()
    device = creds.device(hub.ws_url, "dev-api", device_api_version="banana")

    async def scenario() -> None:
        await device.connect()
        await asyncio.sleep(0.2)
        await device.close()

    # when
    run(scenario())
    # then
    assert Device.objects.get(identifier="dev-api").device_api_version == "1.0.0"


def test_it_detaches_a_disallowed_extension_and_ignores_unknown_events(
    live_hub: HubLauncher, creds: Credentials
) -> None:
    # given: the product allows health only
    creds.tenant.product.extensions = ["health"]
    creds.tenant.product.save()
    hub = live_hub()
    device = creds.device(hub.ws_url, "dev-ext")

    async def scenario() -> None:
        await device.connect()
        await device.next_event("extensions")
        # when: the device attaches geo anyway, and sends events nobody knows
        device.attach_refs["geo"] = await device.push("extensions", "geo:attached", {})
        await device.push("device", "no_such_event", {"x": 1})
        await device.push("device", "rebooting", {})
        await device.push("device", "scripts/run", {"ref": "r", "result": "completed", "return": "nil", "output": ""})
        await device.heartbeat()
        await device.close()

    run(scenario())
    # then
    assert device.detached == ["geo"]
    device.assert_no_violations()


def test_it_answers_phoenix_style_on_topics_and_refs(live_hub: HubLauncher, creds: Credentials) -> None:
    # given
    hub = live_hub()
    device = creds.device(hub.ws_url, "dev-topics")

    async def scenario() -> tuple[list[Any], Any, Any, list[Any]]:
        await device.connect()
        # when: join an unknown topic, push with join_ref null on a joined topic,
        # push on a topic not joined, leave and rejoin
        unknown = await device.join("room:lobby", {})
        await device.send([None, device.next_ref(), "device", "report_network_interface", {"interface": "wlan0"}])
        ref = device.next_ref()
        fut = asyncio.get_running_loop().create_future()
        device.replies[ref] = fut
        await device.send([None, ref, "console", "up", {"data": "x"}])
        not_joined = await asyncio.wait_for(fut, 5)
        leave_ref = device.next_ref()
        fut = asyncio.get_running_loop().create_future()
        device.replies[leave_ref] = fut
        await device.send([device.join_refs["device"], leave_ref, "device", "phx_leave", {}])
        left = await asyncio.wait_for(fut, 5)
        rejoin = await device.join("device", device.join_params())
        await device.heartbeat()
        await device.close()
        return unknown, not_joined, left, rejoin

    unknown, not_joined, left, rejoin = run(scenario())
    # then
    assert unknown[4] == {"status": "error", "response": {"reason": "unmatched topic"}}
    assert not_joined[4] == {"status": "error", "response": {"reason": "unmatched topic"}}
    assert left[4] == {"status": "ok", "response": {}}
    assert rejoin[4] == {"status": "ok", "response": {}}
    assert Device.objects.get(identifier="dev-topics").network_interface == "wlan0"
    device.assert_no_violations()


def test_it_refuses_a_missing_or_unknown_vsn_with_403(live_hub: HubLauncher, creds: Credentials) -> None:
    # given
    hub = live_hub()
    device = creds.device(hub.ws_url, "dev-vsn")

    async def scenario(vsn: str) -> int:
        try:
            await device.open(vsn=vsn)
        except websockets.InvalidStatus as exc:
            return exc.response.status_code
        await device.close()
        return 101

    # then
    assert run(scenario("1.0.0")) == 403
    assert run(scenario("2.1")) == 403
    assert not Device.objects.filter(identifier="dev-vsn").exists()  # refused before auth


def test_it_speaks_msgpack_on_vsn_3(live_hub: HubLauncher, creds: Credentials) -> None:
    # given
    hub = live_hub()
    device = creds.device(hub.ws_url, "dev-msgpack")

    async def scenario() -> tuple[Any, list[Any]]:
        async with connect(
            f"{hub.ws_url}/device-socket/websocket?vsn=3.0.0", additional_headers=device.headers()
        ) as ws:
            await ws.send(msgpack.packb([1, 1, "device", "phx_join", device.join_params()]))
            join = msgpack.unpackb(await ws.recv())
            await ws.send(msgpack.packb([None, "2", "phoenix", "heartbeat", {}]))
            frames = [msgpack.unpackb(await ws.recv()) for _ in range(2)]
            await ws.send('["not","binary"]')
            await asyncio.wait_for(ws.wait_closed(), 5)
            return join, frames

    # when
    join, frames = run(scenario())
    # then
    assert join == ["1", "1", "device", "phx_reply", {"status": "ok", "response": {}}]
    assert [None, "2", "phoenix", "phx_reply", {"status": "ok", "response": {}}] in frames


def test_it_closes_the_older_socket_when_the_device_connects_again(live_hub: HubLauncher, creds: Credentials) -> None:
    # given
    hub = live_hub()
    first = creds.device(hub.ws_url, "dev-twice")
    second = creds.device(hub.ws_url, "dev-twice")

    async def scenario() -> None:
        await first.connect()
        # when
        await second.connect()
        await first.wait_closed()
        await second.heartbeat()
        await second.close()
        await asyncio.sleep(0.3)

    run(scenario())
    # then
    assert first.ws is not None and first.ws.close_code == 1000
    first.assert_no_violations()
    second.assert_no_violations()


def test_it_closes_idle_sockets(live_hub: HubLauncher, creds: Credentials) -> None:
    # given
    hub = live_hub({"DEVICE_IDLE_TIMEOUT": "2"})
    idle = creds.device(hub.ws_url, "dev-idle")
    busy = creds.device(hub.ws_url, "dev-busy")

    async def scenario() -> None:
        await idle.connect()
        await busy.connect()
        # when: one keeps heartbeating, the other says nothing
        for _ in range(8):
            await busy.heartbeat()
            await asyncio.sleep(0.5)
        await idle.wait_closed(timeout=3)
        assert busy.ws is not None and busy.ws.close_code is None
        await busy.close()

    run(scenario())
    # then
    assert Device.objects.get(identifier="dev-idle").connection_status == ConnectionStatus.DISCONNECTED


def test_it_moves_the_inflight_update_and_marks_success_on_rejoin(live_hub: HubLauncher, creds: Credentials) -> None:
    # given: an update to a new firmware is in flight
    tenant = creds.tenant
    device_row = Device.objects.create(org=tenant.org, product=tenant.product, identifier="dev-upd")
    new_uuid = "11111111-2222-3333-4444-555555555555"
    firmware = Firmware.objects.create(org=tenant.org, product=tenant.product, uuid=new_uuid, version="0.2.0")
    update = DeviceUpdate.objects.create(device=device_row, firmware=firmware)
    hub = live_hub()
    device = creds.device(hub.ws_url, "dev-upd")
    statuses = []

    async def scenario() -> None:
        await device.connect()
        await device.push("device", "status_update", {"status": "received"})
        await device.push("device", "status_update", {"downloader_network_interface": "eth0", "status": "started"})
        await device.push("device", "fwup_progress", {"stage": "updating", "value": 40})
        await device.heartbeat()
        statuses.append(await _status(update.pk))
        await device.push("device", "fwup_progress", {"stage": "updating", "value": 100})
        await device.push("device", "status_update", {"status": "completed"})
        await device.heartbeat()
        statuses.append(await _status(update.pk))
        await device.close()
        # when: the device comes back on the new firmware
        device.firmware = {**device.firmware, "nerves_fw_uuid": new_uuid, "nerves_fw_version": "0.2.0"}
        await device.connect()
        await device.heartbeat()
        await device.close()

    run(scenario())
    # then
    assert statuses == [("updating", 40), ("completed", 100)]
    update.refresh_from_db()
    assert update.status == UpdateStatus.SUCCEEDED and update.attempted_at is not None
    assert Device.objects.get(pk=device_row.pk).firmware_version == "0.2.0"
    device.assert_no_violations()


def _close_recorded() -> bool:
    try:
        return Device.objects.filter(identifier="dev-dl", socket_channel="").exists()
    finally:
        connection.close()  # this thread's: the test database can be dropped


def test_it_keeps_the_inflight_update_while_the_device_is_downloading(
    live_hub: HubLauncher, creds: Credentials
) -> None:
    # given
    tenant = creds.tenant
    device_row = Device.objects.create(org=tenant.org, product=tenant.product, identifier="dev-dl")
    firmware = Firmware.objects.create(org=tenant.org, product=tenant.product, uuid="aaaa", version="0.3.0")
    update = DeviceUpdate.objects.create(device=device_row, firmware=firmware, status=UpdateStatus.DOWNLOADING)
    hub = live_hub()
    device = creds.device(hub.ws_url, "dev-dl", currently_downloading_uuid="aaaa")

    async def scenario() -> None:
        await device.connect()
        await device.close()
        # it reboots: the hub records the close before the device is back
        await asyncio.to_thread(wait_until, _close_recorded)
        device.currently_downloading_uuid = None
        await device.connect()
        await device.close()

    # when
    run(scenario())
    # then: kept on the first join, expired on the second (rebooted into the old slot)
    update.refresh_from_db()
    assert update.status == UpdateStatus.EXPIRED


def test_it_accepts_the_bare_progress_payload_of_old_clients(live_hub: HubLauncher, creds: Credentials) -> None:
    # given
    tenant = creds.tenant
    device_row = Device.objects.create(org=tenant.org, product=tenant.product, identifier="dev-bare")
    firmware = Firmware.objects.create(org=tenant.org, product=tenant.product, uuid="bbbb", version="0.3.0")
    update = DeviceUpdate.objects.create(device=device_row, firmware=firmware, status=UpdateStatus.STARTED)
    hub = live_hub()
    device = creds.device(hub.ws_url, "dev-bare", currently_downloading_uuid="bbbb")

    async def scenario() -> None:
        await device.connect()
        await device.push("device", "fwup_progress", {"value": 12})
        await device.heartbeat()
        await device.close()

    # when
    run(scenario())
    # then
    update.refresh_from_db()
    assert (update.status, update.progress) == (UpdateStatus.UPDATING, 12)
    device.assert_no_violations()


async def _status(pk: int) -> tuple[str, int]:
    from channels.db import database_sync_to_async

    def read() -> tuple[str, int]:
        row = DeviceUpdate.objects.get(pk=pk)
        return row.status, row.progress

    status: tuple[str, int] = await database_sync_to_async(read)()  # channels is untyped
    return status


def test_it_serves_the_certificate_path_too(live_hub: HubLauncher, creds: Credentials) -> None:
    # given: /socket/websocket is the certificate path; without a certificate a
    # shared-secret device is still accepted there (the reference mounts one socket)
    hub = live_hub()
    device = creds.device(hub.ws_url, "dev-cert-path", path="/socket/websocket")

    async def scenario() -> list[Any]:
        reply = await device.connect()
        await device.close()
        return reply

    # then
    assert run(scenario())[4]["status"] == "ok"


def test_it_writes_json_the_device_can_read(live_hub: HubLauncher, creds: Credentials) -> None:
    # given: a unicode identifier and firmware text
    hub = live_hub()
    device = creds.device(hub.ws_url, "dev-ünï", firmware={**DEFAULT_FW, "nerves_fw_author": "Zoë / ACME"})

    async def scenario() -> None:
        await device.connect()
        await device.close()

    # when
    run(scenario())
    # then
    assert Device.objects.get(identifier="dev-ünï").firmware_author == "Zoë / ACME"
    assert json.dumps(device.received)


def test_an_update_waiting_for_the_device_comes_after_its_join_reply(live_hub: HubLauncher, creds: Credentials) -> None:
    # given: a device with an update it never acknowledged (pushed to a socket
    # that closed before the device read it)
    from deployments.models import Deployment
    from tests.deployments.conftest import make_firmware

    hub = live_hub()
    device = creds.device(hub.ws_url, "dev-waiting")

    async def first_visit() -> None:
        await device.connect()
        await device.close()

    run(first_visit())
    row = Device.objects.get(identifier="dev-waiting")
    target = make_firmware(creds.tenant.product, "2.0.0", platform="rpi4", architecture="aarch64")
    deployment = Deployment.objects.create(
        org=creds.tenant.org, product=creds.tenant.product, name="stable", firmware=target, is_active=True
    )
    Device.objects.filter(pk=row.pk).update(deployment=deployment)
    DeviceUpdate.objects.create(
        device=row, deployment=deployment, firmware=target, pushes=1, pushed_channel="specific.gone!x#1"
    )

    seen_before = len(device.received)

    async def second_visit() -> tuple[list[Any], list[Any]]:
        # when: it comes back; the join sends the update from inside the join
        reply = await device.connect()
        update = await device.next_event("update")
        await device.close()
        return reply, update

    reply, update = run(second_visit())
    # then: the join reply first, then the update
    events = [m[3] for m in device.received[seen_before:]]
    assert reply[4]["status"] == "ok"
    # (and after what the join handler itself pushes)
    assert events == ["phx_reply", "extensions:get", "update"], events
    assert update[4]["firmware_meta"]["uuid"] == target.uuid
    assert DeviceUpdate.objects.get(device=row).pushes == 2
    device.assert_no_violations()


def test_a_connect_survives_failing_to_close_the_older_socket(live_hub: HubLauncher, creds: Credentials) -> None:
    # given: the row names an older socket that cannot be reached (here: an
    # address the channel layer refuses; in production, Redis out of connections)
    hub = live_hub()
    device = creds.device(hub.ws_url, "dev-older")

    async def visit() -> list[Any]:
        reply = await device.connect()
        await device.heartbeat()
        await device.close()
        return reply

    run(visit())
    wait_until(lambda: Device.objects.get(identifier="dev-older").connection_status == ConnectionStatus.DISCONNECTED)
    Device.objects.filter(identifier="dev-older").update(socket_channel="no such channel")
    # when / then: the device connects and joins all the same
    assert run(visit())[4]["status"] == "ok"
    assert "could not close its older socket" in hub.log()
    device.assert_no_violations()
