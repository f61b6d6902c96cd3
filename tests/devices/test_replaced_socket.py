"""A socket replaced by the device's newer one (last connection wins) still
records what the device sent on it before it reconnected: the last status
report of an update (`failed` just before the reboot) is the attempt's
outcome, and the new socket's join judges the attempt by what is recorded
(docs/rollout.md, "What a device's join and reports do to its update")."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from deployments import rollout
from deployments.models import Deployment, DeviceUpdate, UpdateStatus
from devicelink.consumer import DeviceSocketConsumer
from devicelink.protocol import JsonCodec
from devices.models import Device
from tests.conftest import Tenant
from tests.deployments.conftest import make_device, make_firmware

# The socket records on its database threads, which must see the test's rows.
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def deployment(tenant: Tenant) -> Deployment:
    return Deployment.objects.create(
        org=tenant.org,
        product=tenant.product,
        name="stable",
        firmware=make_firmware(tenant.product, "2.0.0"),
        is_active=True,
        concurrent_updates=5,
        penalty_attempts=1,
    )


def _socket(device: Device, sent: list[dict[str, Any]]) -> DeviceSocketConsumer:
    """A socket that authenticated `device` and joined `device`."""
    socket = DeviceSocketConsumer()
    socket.device_id = device.pk
    socket.codec = JsonCodec
    socket.joined = {"device": "1"}
    socket.closing = False

    async def base_send(message: dict[str, Any]) -> None:
        sent.append(message)

    socket.base_send = base_send
    return socket


def _status(status: str) -> dict[str, Any]:
    return {"type": "websocket.receive", "text": json.dumps([None, "9", "device", "status_update", {"status": status}])}


def test_it_records_the_failure_a_replaced_socket_received_before_its_close(
    tenant: Tenant, deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given: a device updating on its socket
    device = make_device(tenant.product, "d1", deployment=deployment, socket_channel="specific.a!1")
    rollout.run_rollout(deployment.pk)
    update = DeviceUpdate.objects.get(device=device)
    sent: list[dict[str, Any]] = []
    socket = _socket(device, sent)
    frames = [_status("received"), _status("started"), _status("failed")]

    # The socket records `started` slowly (a busy database); meanwhile the
    # device, done with its update, reconnects and its new socket replaces this
    # one. The socket handles the replacement before its next frame, `failed`,
    # which the device sent before it reconnected.
    record = rollout.on_status_report
    replaced: list[bool] = []

    def slow_record(device_id: int, payload: dict[str, Any]) -> None:
        record(device_id, payload)
        if payload.get("status") == "started":
            replaced.append(True)

    monkeypatch.setattr(rollout, "on_status_report", slow_record)

    async def scenario() -> None:
        for frame in frames:
            await socket.websocket_receive(frame)
            if replaced and not socket.closing:
                await socket.device_disconnect({"type": "device.disconnect"})

    # when
    asyncio.run(scenario())
    # then: the failure counts (penalty box), and the socket closed without answering
    update.refresh_from_db()
    assert update.status == UpdateStatus.FAILED, (update.status, update.reason)
    device.refresh_from_db()
    assert device.penalty_box_until is not None
    assert [m["type"] for m in sent] == ["websocket.close"]


def test_a_replaced_socket_records_no_join_and_no_other_topic(
    tenant: Tenant, deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given: a replaced socket
    device = make_device(tenant.product, "d1", deployment=deployment, socket_channel="specific.a!1")
    sent: list[dict[str, Any]] = []
    socket = _socket(device, sent)
    calls: list[str] = []
    monkeypatch.setattr(DeviceSocketConsumer, "join_device", lambda self, frame: calls.append("join"))

    async def scenario() -> None:
        await socket.device_disconnect({"type": "device.disconnect"})
        # when: a join, a heartbeat and a console frame arrive after the close
        messages: list[list[Any]] = [
            [None, "2", "device", "phx_join", {}],
            [None, "3", "phoenix", "heartbeat", {}],
            [None, "4", "console", "dn", {"data": "x"}],
        ]
        for message in messages:
            await socket.websocket_receive({"type": "websocket.receive", "text": json.dumps(message)})

    asyncio.run(scenario())
    # then: nothing handled, nothing answered
    assert calls == []
    assert [m["type"] for m in sent] == ["websocket.close"]


def test_it_still_drops_what_follows_a_close_for_a_malformed_frame(tenant: Tenant, deployment: Deployment) -> None:
    # given: a socket closed for a malformed frame (not replaced)
    device = make_device(tenant.product, "d1", deployment=deployment)
    sent: list[dict[str, Any]] = []
    socket = _socket(device, sent)

    async def scenario() -> None:
        await socket.websocket_receive({"type": "websocket.receive", "text": "not json"})
        # when: a report follows
        await socket.websocket_receive(_status("failed"))

    asyncio.run(scenario())
    # then: the socket closed once and handled nothing more
    assert [m["type"] for m in sent] == ["websocket.close"]
