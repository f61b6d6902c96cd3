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

from devices.models import Device

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
