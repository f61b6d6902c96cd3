"""The one way sync code (services, admin, tasks) reaches device sockets.

Every function here sends after the current transaction commits, so a rolled
back change never reaches a device. Two paths (docs/device-link.md, "Device
sockets and fan-out"):

* per device: a channel-layer `send` to the device socket's address
  (Device.socket_channel, written when the socket connected), wherever the
  socket lives: its server process's channel plus the socket's number there
  (send_to_socket; the device link's dispatcher hands the message to that socket);
* fleet: ONE group message to FLEET_GROUP, which holds one dispatcher channel
  per server process; each process then writes to its local sockets directly.
  A push to 30,000 devices costs one message per process, not 30,000.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction
from django.utils import timezone

from devices import pagefeed
from devices.models import ConnectionStatus, Device

logger = logging.getLogger(__name__)

FLEET_GROUP = "devices.fleet"
# A fleet event the sockets act on themselves rather than push on `device`.
EXTENSIONS_CHANGED = "nerveshub:extensions_changed"


# Between a server process's channel and a socket's number in a socket address.
SOCKET_MARK = "#"


def socket_address(process_channel: str, number: int) -> str:
    return f"{process_channel}{SOCKET_MARK}{number}"


async def send_to_socket(layer: Any, address: str, message: dict[str, Any]) -> None:
    """Send `message` to a device socket's address (Device.socket_channel). An
    address without a socket number is a plain channel (an operator's console)."""
    channel, _, number = address.partition(SOCKET_MARK)
    if number:
        message = {**message, "socket": int(number)}
    await layer.send(channel, message)


def _send_now(channel: str, message: dict[str, Any]) -> bool:
    layer = get_channel_layer()
    if layer is None:
        return False
    try:
        async_to_sync(send_to_socket)(layer, channel, message)
    except Exception:
        # A full or unreachable layer must not fail the operator's request: the
        # change is committed; the device gets it on its next join at the latest.
        logger.exception("could not send %s to %s", message.get("type"), channel)
        return False
    return True


def _group_send_now(message: dict[str, Any]) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        async_to_sync(layer.group_send)(FLEET_GROUP, message)
    except Exception:
        logger.exception("could not broadcast %s", message.get("type"))


def _to_device_on_commit(device_id: int, message: dict[str, Any]) -> None:
    def send() -> None:
        channel = Device.objects.filter(pk=device_id).values_list("socket_channel", flat=True).first()
        if channel:
            _send_now(channel, message)
        else:
            logger.info("device %s is not connected; %s not sent", device_id, message.get("type"))

    transaction.on_commit(send)


def send_to_device(device_id: int, event: str, payload: dict[str, Any], *, topic: str = "device") -> None:
    """Push `event` to one device on `topic` (device or extensions)."""
    _to_device_on_commit(device_id, {"type": "device.push", "topic": topic, "event": event, "payload": payload})


def push_message(
    event: str, payload: dict[str, Any], *, topic: str = "device", once: str | None = None
) -> dict[str, Any]:
    """The channel-layer message that has a device socket push `event`."""
    message: dict[str, Any] = {"type": "device.push", "topic": topic, "event": event, "payload": payload}
    if once is not None:
        message["once"] = once
    return message


def send_to_channel(
    channel: str,
    event: str,
    payload: dict[str, Any],
    *,
    topic: str = "device",
    then: Callable[[], None] | None = None,
    once: str | None = None,
) -> None:
    """Push `event` to the one socket `channel` (a device's, as the caller read
    it): after commit, like every function here; `then` runs once it was sent.
    A socket sends its device only the first of consecutive pushes with the same
    `once` key (a sender's repeat of a push it could not confirm)."""
    message = push_message(event, payload, topic=topic, once=once)

    def send() -> None:
        if _send_now(channel, message) and then is not None:
            then()

    transaction.on_commit(send)


def disconnect_device(device_id: int) -> None:
    """Close the device's socket; it reconnects and joins afresh."""
    _to_device_on_commit(device_id, {"type": "device.disconnect"})


def broadcast_to_devices(device_ids: Iterable[int], event: str, payload: dict[str, Any]) -> None:
    """Push to many devices on `device`: one message per server process."""
    ids = sorted(set(device_ids))
    message = {"type": "fleet.push", "device_ids": ids, "deployment_id": None, "event": event, "payload": payload}
    transaction.on_commit(lambda: _group_send_now(message))


def broadcast_to_deployment(deployment_id: int, event: str, payload: dict[str, Any]) -> None:
    """Push to every connected device whose deployment (as known at its join) is
    `deployment_id`: one message per server process, whatever the fleet size."""
    message: dict[str, Any] = {
        "type": "fleet.push",
        "device_ids": None,
        "deployment_id": deployment_id,
        "event": event,
        "payload": payload,
    }
    transaction.on_commit(lambda: _group_send_now(message))


def broadcast_extensions(device_ids: Iterable[int], extensions: Iterable[str]) -> None:
    """Tell these devices' sockets the extensions their product now allows: a
    socket attaches what became allowed and detaches what no longer is, without
    waiting for the device to reconnect (one message per server process)."""
    broadcast_to_devices(device_ids, EXTENSIONS_CHANGED, {"extensions": sorted(set(extensions))})


# --- Organization pages ---------------------------------------------------------
# What the open organization pages show live (devices.pagefeed, docs/pages.md):
# each function notes a small typed change after commit, which the feed
# coalesces per organization and sends at most once per LIVE_FLUSH_MS. None
# queries the database, except a device event whose organization this process
# has not seen (its socket lives elsewhere: one query, rare).


def _now_iso() -> str:
    return timezone.now().isoformat()


def _org_for(device_id: int, org_id: int | None) -> int | None:
    if org_id is not None:
        pagefeed.remember_org(device_id, org_id)
        return org_id
    known = pagefeed.known_org(device_id)
    if known is None:
        known = Device.objects.filter(pk=device_id).values_list("org_id", flat=True).first()
        if known is not None:
            pagefeed.remember_org(device_id, known)
    return known


def _page_change(device_id: int, change: pagefeed.DeviceChange, org_id: int | None, *, counts: bool) -> None:
    def note() -> None:
        org = _org_for(device_id, org_id)
        if org is not None:
            pagefeed.feed.device(org, device_id, change, counts=counts)
            pagefeed.ensure_flushing()

    transaction.on_commit(note)


def page_device_connected(org_id: int, device_id: int) -> None:
    """A device socket was recorded as the device's connection."""
    _page_change(device_id, {"presence": ConnectionStatus.CONNECTED.value, "seen": _now_iso()}, org_id, counts=True)


def page_device_connected_now(org_id: int, device_id: int) -> None:
    """`page_device_connected` for a connection recorded outside any Django
    transaction (devicelink.auth.connect_returning_device, on the event loop)."""
    pagefeed.remember_org(device_id, org_id)
    pagefeed.feed.device(
        org_id, device_id, {"presence": ConnectionStatus.CONNECTED.value, "seen": _now_iso()}, counts=True
    )
    pagefeed.ensure_flushing()


def page_device_polled(org_id: int, device_id: int) -> None:
    """A polling device's presence was written (docs/polling.md)."""
    _page_change(device_id, {"presence": ConnectionStatus.POLLING.value, "seen": _now_iso()}, org_id, counts=True)


def page_devices_disconnected(devices: Iterable[tuple[int, int, str]]) -> None:
    """These devices, as (id, org id, identifier), were recorded offline."""
    rows = [(pk, org_id) for pk, org_id, _ in devices]

    def note() -> None:
        for pk, org_id in rows:
            pagefeed.remember_org(pk, org_id)
            pagefeed.feed.device(org_id, pk, {"presence": ConnectionStatus.DISCONNECTED.value}, counts=True)
        pagefeed.ensure_flushing()

    transaction.on_commit(note)


def page_devices_seen(device_ids: Iterable[int]) -> None:
    """This process's connected devices were seen now (the periodic refresh of
    last_seen_at): one field per organization, not one row per device."""
    orgs = {org for org in map(pagefeed.known_org, device_ids) if org is not None}
    if orgs:
        pagefeed.feed.seen(orgs, _now_iso())
        pagefeed.ensure_flushing()


def page_device_firmware(device_id: int, version: str, *, org_id: int | None = None) -> None:
    _page_change(device_id, {"fw": version}, org_id, counts=False)


def page_device_health(device_id: int, level: str) -> None:
    _page_change(device_id, {"health": level}, None, counts=False)


def page_device_update(
    device_id: int, status: str, progress: int, deployment_id: int | None, *, org_id: int | None = None
) -> None:
    """The device's update moved (claimed, a status it reported, progress, an outcome)."""
    change: pagefeed.DeviceChange = {"update": str(status), "progress": int(progress)}
    if deployment_id is not None:
        change["deployment"] = deployment_id

    def note() -> None:
        org = _org_for(device_id, org_id)
        if org is not None:
            pagefeed.feed.device(org, device_id, change, counts=True)
            if deployment_id is not None:
                pagefeed.feed.deployment(org, deployment_id)
            pagefeed.ensure_flushing()

    transaction.on_commit(note)


def page_deployment_progress(org_id: int, deployment_id: int) -> None:
    """The deployment's progress moved (claims, outcomes the hub decided)."""

    def note() -> None:
        pagefeed.feed.deployment(org_id, deployment_id)
        pagefeed.ensure_flushing()

    transaction.on_commit(note)
