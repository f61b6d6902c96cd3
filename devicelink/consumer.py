"""The device socket: Phoenix V2 over a websocket, as nerves_hub_link speaks it.

Thin by design: parse a frame (devicelink.protocol), call a service on a device
database thread (devicelink.dbthreads.device_db_call), send a frame. The rules the device
relies on (docs/device-protocol.md §1.7) live here because they are about the wire:

* heartbeats are answered without touching the database;
* server pushes carry ref null; phx_error carries the topic's join ref;
* device pushes are never replied to, except `detach` for a disallowed extension;
* a malformed frame closes this socket only, with the reason logged.

Topics are a table (TOPICS): adding one is a join method and an event method.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from typing import Any
from urllib.parse import parse_qs

from channels.consumer import AsyncConsumer, get_handler_name
from channels.exceptions import StopConsumer
from channels.layers import get_channel_layer
from django.conf import settings
from pydantic import ValidationError

from console.services import DeviceConsole
from deployments import rollout
from devicelink import hotpath, join, protocol
from devicelink.auth import authenticate_device, connect_device
from devicelink.dbthreads import device_db_call
from devicelink.dispatcher import dispatcher
from devicelink.errors import AuthError
from devicelink.protocol import Codec, Frame, FrameError
from devices import publish, scripts, services
from nerveshub.lib import gcpolicy

logger = logging.getLogger(__name__)

JOIN_CRASHED = {"reason": "join crashed"}
# `device` messages kept for a socket that has not joined `device` yet.
BEFORE_JOIN_LIMIT = 16
REASON_BUSY = "too many devices are connecting to this server right now; retry later"

# Extension attach → what to ask for straight away (reference server behaviour).
ON_ATTACH = {"health": "health:check", "geo": "geo:location:request"}


class DeviceSocketConsumer(AsyncConsumer):  # type: ignore[misc]
    device_id: int = 0
    deployment_id: int | None = None
    last_frame: float = 0.0

    # Messages from the rest of the hub (devicelink.dispatcher hands them over): queued
    # while this socket handles a frame, so they are handled in turn with the
    # frames as Channels would (the join reply goes out before what the join
    # pushed).
    _inbox: list[dict[str, Any]] | None = None
    _delivering: asyncio.Task[None] | None = None
    _busy = False
    _number = 0
    _before_join: list[dict[str, Any]] | None = None
    _delivered_once: str | None = None  # the `once` key of the last push sent (see device_push)
    _known: hotpath.StoredDevice | None = None
    # Closed because the device connected again (last connection wins): what it
    # sent here before that still counts (see _after_replaced).
    _replaced = False

    async def __call__(
        self,
        scope: dict[str, Any],
        receive: Callable[[], Awaitable[dict[str, Any]]],
        send: Callable[[dict[str, Any]], Awaitable[None]],
    ) -> None:
        # Channels would give this consumer a channel of its own and a task
        # reading it, about 5 KiB per idle socket (M2). A device socket has an
        # address on its process's dispatcher channel instead (devicelink.dispatcher).
        self.scope = scope
        self.base_send = send
        self.channel_layer = get_channel_layer()
        self.channel_name, self._number = await dispatcher.attach(self)
        try:
            while True:
                message = await receive()
                if self._delivering is not None:
                    await self._delivering
                self._busy = True
                try:
                    await self.dispatch(message)
                finally:
                    self._busy = False
                if self._inbox:
                    self._deliver_later()
        except StopConsumer:
            pass
        finally:
            # However the consumer ends (the device closed, a send to a socket
            # that had just closed raised, daphne cancelled it): the device must
            # not stay marked online, nor the socket registered.
            dispatcher.detach(self._number)
            gcpolicy.socket_closed()
            if self._delivering is not None:
                self._delivering.cancel()
            if self.device_id:
                dispatcher.unregister(self)
                dispatcher.connection_closed(self.device_id, self.channel_name)

    def deliver(self, message: dict[str, Any]) -> None:
        if self._inbox is None:
            self._inbox = []
        self._inbox.append(message)
        if not self._busy and self._delivering is None:
            self._deliver_later()

    def _deliver_later(self) -> None:
        self._delivering = asyncio.get_running_loop().create_task(self._drain_inbox())

    async def _drain_inbox(self) -> None:
        try:
            while self._inbox:
                message = self._inbox.pop(0)
                try:
                    await self.dispatch(message)
                except Exception:
                    logger.exception("device %s: %s failed", self.device_id, message.get("type"))
        finally:
            self._inbox = None
            self._delivering = None

    async def dispatch(self, message: dict[str, Any]) -> None:
        # Channels' own dispatch first hops to a worker thread to close stale
        # database connections, before every message: for a heartbeat that was
        # about a sixth of the hub's CPU (M5). This consumer touches the database
        # only through device_db_call, which does that in its own thread.
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"no handler for message type {message['type']}")
        await handler(message)

    async def websocket_connect(self, message: dict[str, Any]) -> None:
        self.codec: Codec = protocol.JsonCodec
        self.joined: dict[str, str | None] = {}
        self.extensions_allowed: frozenset[str] = frozenset()
        self.extensions_offered: frozenset[str] = frozenset()
        self.extensions_attached: set[str] = set()
        self.closing = False
        query = parse_qs(self.scope.get("query_string", b"").decode("latin1"))
        # Phoenix reads a missing vsn as 1.0.0, which no device serializer matches.
        codec = protocol.CODECS.get(query.get("vsn", ["1.0.0"])[-1])
        if codec is None:
            await self._deny(403, "unsupported serializer version")
            return
        self.codec = codec
        if not dispatcher.admit_connect():
            await self._deny(503, REASON_BUSY)
            return
        with dispatcher.onboard():
            info = await self._authenticate_and_accept()
        if info is None:
            return
        replaced = dispatcher.register(self)
        if replaced is not None:
            await replaced.close_replaced()
        elif info.previous_channel:
            # The older socket lives in another process: last connection wins.
            try:
                await publish.send_to_socket(self.channel_layer, info.previous_channel, {"type": "device.disconnect"})
            except Exception as exc:
                # Not this socket's failure: the older one, if it is still
                # open at all, closes when its idle timeout passes.
                logger.warning("device %s: could not close its older socket: %r", self.device_id, exc)

    async def _authenticate_and_accept(self) -> services.ConnectionInfo | None:
        try:
            lease_id = dispatcher.lease_taken()
            if lease_id is not None:
                connected = await connect_device(self.scope, self.channel_name, lease_id)
            else:
                # The process's lease is taken with its first connects: the device
                # is authenticated before the lease is waited for, so that a
                # database outage is answered (503) within the device's timeout.
                device = await authenticate_device(self.scope)
                lease_id = await dispatcher.lease()
                info = await device_db_call(services.open_device_connection)(device, self.channel_name, lease_id)
                connected = hotpath.Connected(device.pk, device.identifier, info, None)
        except AuthError as exc:
            self._forget_headers()
            logger.info("device socket refused (%s): %s from %s", exc.status, exc.detail, self.scope.get("client"))
            await self._deny(exc.status, exc.reason)
            return None
        except Exception:
            self._forget_headers()
            logger.exception("could not authenticate or record the connection of a device")
            await self._deny(503, "the platform could not be reached to authenticate this device")
            return None
        self._forget_headers()
        info = connected.info
        # What the connect read for the join to compare with (devicelink.hotpath).
        self._known = connected.known
        self.device_id = connected.device_id
        self.identifier = connected.identifier
        self.deployment_id = info.deployment_id
        self.product_extensions = info.product_extensions
        self.last_frame = asyncio.get_running_loop().time()
        await self.send({"type": "websocket.accept"})
        return info

    def _forget_headers(self) -> None:
        # Nothing reads the request headers (credentials among them) after the
        # authentication, but daphne keeps this very list for the socket's whole
        # life: emptying it saves about 1.5 KiB per connected device.
        headers = self.scope.get("headers")
        if isinstance(headers, list):
            headers.clear()

    async def _deny(self, status: int, reason: str) -> None:
        self.closing = True
        if "websocket.http.response" in self.scope.get("extensions", {}):
            body = reason.encode()
            await self.send(
                {
                    "type": "websocket.http.response.start",
                    "status": status,
                    "headers": [
                        (b"date", formatdate(usegmt=True).encode()),
                        (b"nh-connection-error-reason", reason.encode("latin1", "replace")),
                        (b"content-type", b"text/plain; charset=utf-8"),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await self.send({"type": "websocket.http.response.body", "body": body})
        else:
            # Servers without the extension can only refuse with 403.
            await self.send({"type": "websocket.close"})

    async def websocket_disconnect(self, message: dict[str, Any]) -> None:
        raise StopConsumer  # the close is recorded as the consumer ends (__call__)

    # --- frames ------------------------------------------------------------------

    async def websocket_receive(self, message: dict[str, Any]) -> None:
        if not self.device_id or (self.closing and not self._replaced):
            return
        self.last_frame = asyncio.get_running_loop().time()
        text, data = message.get("text"), message.get("bytes")
        size = len(text) if text is not None else len(data or b"")
        if size > settings.DEVICE_MAX_FRAME_BYTES:
            await self._close_malformed(f"frame of {size} bytes is too large", code=1009)
            return
        try:
            frame = self.codec.decode(text, data)
        except FrameError as exc:
            await self._close_malformed(str(exc))
            return
        if self._replaced:
            await self._after_replaced(frame)
            return
        if frame.topic == "phoenix":
            if frame.event == "heartbeat":
                await self._send(protocol.heartbeat_reply(frame.ref))
            else:
                await self._send(
                    protocol.reply(frame.join_ref, frame.ref, "phoenix", "error", protocol.UNMATCHED_TOPIC)
                )
            return
        handlers = TOPICS.get(frame.topic)
        if frame.event == "phx_join":
            if handlers is None:
                await self._send(
                    protocol.reply(frame.join_ref, frame.ref, frame.topic, "error", protocol.UNMATCHED_TOPIC)
                )
                return
            await self._guarded(frame, handlers[0])
            return
        if frame.topic not in self.joined or handlers is None:
            await self._send(protocol.reply(frame.join_ref, frame.ref, frame.topic, "error", protocol.UNMATCHED_TOPIC))
            return
        if frame.event == "phx_leave":
            del self.joined[frame.topic]
            await self._send(protocol.reply(frame.join_ref, frame.ref, frame.topic, "ok", {}))
            return
        # join_ref may be null on a joined topic (older Slipstream): route by topic.
        await self._guarded(frame, handlers[1])

    async def _after_replaced(self, frame: Frame) -> None:
        """A frame this socket received after the device's newer socket replaced
        it. The device sent it before it reconnected: a status report here may
        be the attempt's outcome (`failed` just before the reboot), and its new
        socket's join judges the attempt by what is recorded. So `device` events
        are still recorded; nothing is answered on a socket that is closing."""
        if frame.topic != "device" or "device" not in self.joined or frame.event in ("phx_join", "phx_leave"):
            return
        try:
            await self.on_device_event(frame)
        except Exception:
            logger.exception("device %s: %s on its replaced socket failed", self.device_id, frame.event)

    async def _guarded(self, frame: Frame, handler: Handler) -> None:
        try:
            await handler(self, frame)
        except ValidationError as exc:
            # A push whose payload we cannot read is dropped; the device is fine.
            logger.info(
                "device %s: %s/%s payload ignored: %s", self.device_id, frame.topic, frame.event, exc.errors()[:3]
            )
        except Exception:
            # The Phoenix answer to a crashed channel: phx_error with ref = join
            # ref; the device rejoins the topic in 5 s with its old params.
            logger.exception("device %s: %s/%s failed", self.device_id, frame.topic, frame.event)
            if frame.event == "phx_join":
                # What Phoenix answers when a join crashes; the client rejoins in 5 s.
                self.joined.pop(frame.topic, None)
                await self._send(protocol.reply(frame.join_ref, frame.ref, frame.topic, "error", JOIN_CRASHED))
                return
            join_ref = self.joined.pop(frame.topic, frame.join_ref)
            await self._send([join_ref, join_ref, frame.topic, "phx_error", {}])

    async def _close_malformed(self, reason: str, code: int = 1008) -> None:
        logger.warning("device %s: closing socket: %s", self.device_id, reason)
        await self._close(code)

    async def _close(self, code: int = 1000) -> None:
        if not self.closing:
            self.closing = True
            await self.send({"type": "websocket.close", "code": code})

    async def _send(self, message: list[Any]) -> None:
        await self.send(self.codec.encode(message))

    async def _push(self, topic: str, event: str, payload: Any) -> None:
        # `device` pushes go out like the reference's fastlaned broadcasts (join
        # ref null); other topics like its channel pushes (the topic's join ref).
        join_ref = None if topic == "device" else self.joined.get(topic)
        await self._send(protocol.push(join_ref, topic, event, payload))

    # --- topic: device -------------------------------------------------------------

    async def join_device(self, frame: Frame) -> None:
        params = protocol.DeviceJoin.model_validate(frame.payload if isinstance(frame.payload, dict) else {})
        # One trip to the database thread for the whole join. What it pushes
        # travels through the channel layer to this consumer, which handles it
        # only after this method returns: the device gets its join reply first.
        known, self._known = self._known, None  # read at connect: good for this socket's first join only
        if known is not None and join.needs_nothing(known, params):
            # The full join would write and push nothing (devicelink.hotpath):
            # the reply goes out at once, then the deployment's orchestrator is
            # woken, as every join wakes it.
            self.joined["device"] = frame.join_ref
            await self._send(protocol.reply(frame.join_ref, frame.ref, "device", "ok", {}))
            if self.deployment_id is not None:
                await join.quiet_join_from_loop(known, self.device_id, self.deployment_id)
        else:
            with dispatcher.onboard():
                outcome, self.deployment_id = await device_db_call(join.store_join)(self.device_id, params)
            self.joined["device"] = frame.join_ref
            await self._send(protocol.reply(frame.join_ref, frame.ref, "device", "ok", {}))
            if outcome.fwup_public_keys:
                await self._push("device", "fwup_public_keys", {"keys": outcome.fwup_public_keys})
            if outcome.archive_public_keys:
                await self._push("device", "archive_public_keys", {"keys": outcome.archive_public_keys})
        if params.api_version >= (2, 2, 0):
            await self._push("device", "extensions:get", {})
        early, self._before_join = self._before_join or [], None
        for message in early:
            await self.device_push(message)

    async def on_device_event(self, frame: Frame) -> None:
        event, payload = frame.event, frame.payload
        if not isinstance(payload, dict):
            logger.info("device %s: %s with a non-object payload ignored", self.device_id, event)
            return
        if event == "status_update":
            status = protocol.StatusUpdate.model_validate(payload)
            await device_db_call(rollout.on_status_report)(self.device_id, status.model_dump(exclude_none=True))
        elif event in ("fwup_progress", "update_progress"):
            progress = protocol.FwupProgress.model_validate(payload)
            await device_db_call(rollout.on_status_report)(self.device_id, progress.model_dump(exclude_none=True))
        elif event == "report_network_interface":
            report = protocol.NetworkInterfaceReport.model_validate(payload)
            await device_db_call(services.record_network_interface)(self.device_id, report.interface or "")
        elif event == "firmware_validated":
            await device_db_call(services.mark_firmware_validated)(self.device_id)
            await device_db_call(rollout.on_firmware_validated)(self.device_id)
        elif event == "connection_types":
            types = protocol.ConnectionTypes.model_validate(payload)
            await device_db_call(services.record_connection_types)(self.device_id, types.values)
        elif event == "scripts/run":
            await device_db_call(scripts.record_script_result)(self.device_id, payload)
        elif event == "rebooting":
            logger.info("device %s is rebooting", self.device_id)
        else:
            # Future events: ignored, never replied to.
            logger.debug("device %s: event %s ignored", self.device_id, event)

    # --- topic: console (remote IEx; the relay itself is console.services) -----------

    console: DeviceConsole | None = None

    async def join_console(self, frame: Frame) -> None:
        params = protocol.ConsoleJoin.model_validate(frame.payload if isinstance(frame.payload, dict) else {})
        await device_db_call(services.join_console)(self.device_id, params.console_version)
        self.joined["console"] = frame.join_ref
        if self.console is None:
            self.console = DeviceConsole(self.device_id, self.channel_name, params.console_version, self.channel_layer)
        else:
            # A rejoin on the same socket keeps the scrollback.
            self.console.console_version = params.console_version
        await self._send(protocol.reply(frame.join_ref, frame.ref, "console", "ok", {}))
        await self.console.announce_joined()

    async def on_console_event(self, frame: Frame) -> None:
        if self.console is not None:
            await self.console.from_device(frame.event, frame.payload)

    async def console_push(self, message: dict[str, Any]) -> None:
        """Operator input (console.consumers) for the device's console topic."""
        if "console" in self.joined and not self.closing:
            await self._push("console", str(message["event"]), message["payload"])

    async def console_hello(self, message: dict[str, Any]) -> None:
        """An operator opened the console: answer with the scrollback."""
        if self.console is not None and "console" in self.joined:
            await self.console.answer_hello(message)

    # --- topic: extensions -----------------------------------------------------------

    async def join_extensions(self, frame: Frame) -> None:
        offered = frame.payload if isinstance(frame.payload, dict) else {}
        self.extensions_offered = frozenset(str(name) for name in offered)
        allowed = [str(name) for name in offered if name in self.product_extensions]
        self.extensions_allowed = frozenset(allowed)
        self.extensions_attached = set()
        self.joined["extensions"] = frame.join_ref
        # A list, never a map: v2.12.0 crashes on a map (§8.1).
        await self._send(protocol.reply(frame.join_ref, frame.ref, "extensions", "ok", allowed))

    async def on_extensions_event(self, frame: Frame) -> None:
        name, _, action = frame.event.partition(":")
        if action in ("detached", "error") and name in self.extensions_offered:
            # Also for a name the product no longer allows: the device's answer
            # to our `detach` (_extensions_changed) is not replied to.
            self.extensions_attached.discard(name)
            return
        if name not in self.extensions_allowed:
            if frame.ref is not None:
                await self._send(protocol.reply(frame.join_ref, frame.ref, "extensions", "error", protocol.DETACH))
            return
        if action == "attached":
            self.extensions_attached.add(name)
            if name in ON_ATTACH:
                await self._push("extensions", ON_ATTACH[name], {})
        elif frame.event == "health:report":
            report = protocol.HealthReport.model_validate(frame.payload)
            await device_db_call(services.record_health)(self.device_id, report.value)
        elif frame.event == "geo:location:update":
            location = protocol.LocationUpdate.model_validate(frame.payload)
            await device_db_call(services.record_location)(self.device_id, location.model_dump(exclude_none=True))
        else:
            logger.debug("device %s: extension event %s ignored", self.device_id, frame.event)

    # --- messages from the rest of the hub ----------------------------------------

    async def device_push(self, message: dict[str, Any]) -> None:
        """A per-device command (devices.publish.send_to_device)."""
        topic, event = str(message["topic"]), str(message["event"])
        if topic not in self.joined:
            if topic == "device" and not self.closing and len(self._before_join or ()) < BEFORE_JOIN_LIMIT:
                # Sent between this socket's connect and its join (an update
                # claimed for the device meanwhile, which counts as pushed to this
                # socket): it follows the join reply.
                self._before_join = [*(self._before_join or []), message]
                return
            logger.info("device %s: %s dropped, topic %s not joined", self.device_id, event, topic)
            return
        if topic == "extensions" and event.partition(":")[0] not in self.extensions_attached:
            logger.info("device %s: %s dropped, extension not attached", self.device_id, event)
            return
        once = message.get("once")
        if once is not None:
            # A push the sender may repeat because it cannot tell a lost message
            # from a late acknowledgement (an update: deployments.rollout): this
            # socket sends it to its device once.
            if once == self._delivered_once:
                logger.info("device %s: repeated %s not sent again on this socket", self.device_id, event)
                return
            self._delivered_once = str(once)
        await self._push(topic, event, message["payload"])

    async def device_disconnect(self, message: dict[str, Any]) -> None:
        await self._close_replaced()

    async def _close_replaced(self) -> None:
        logger.info("device %s: socket closed (replaced or asked to reconnect)", self.device_id)
        self._replaced = True
        await self._close(1000)

    # The registry's interface (devicelink.dispatcher.LocalSocket).

    async def close_replaced(self) -> None:
        await self._close_replaced()

    async def close_idle(self) -> None:
        logger.info("device %s: closing idle socket", self.device_id)
        await self._close(1000)

    async def push_fleet(self, event: str, message: dict[str, Any]) -> None:
        if event == publish.EXTENSIONS_CHANGED:
            await self._extensions_changed(message["payload"])
        elif "device" in self.joined and not self.closing:
            await self._push("device", event, message["payload"])

    async def _extensions_changed(self, payload: dict[str, Any]) -> None:
        """The product's extensions changed (publish.broadcast_extensions): on a
        joined `extensions` topic, attach what the device offered and is now
        allowed, and detach what no longer is (device-protocol §8.2). A socket
        that joins the topic later answers with the new set."""
        self.product_extensions = frozenset(str(name) for name in payload.get("extensions", []))
        if "extensions" not in self.joined or self.closing:
            return
        allowed = frozenset(name for name in self.extensions_offered if name in self.product_extensions)
        attach, detach = sorted(allowed - self.extensions_allowed), sorted(self.extensions_allowed - allowed)
        self.extensions_allowed = allowed
        self.extensions_attached -= set(detach)
        if detach:
            await self._push("extensions", "detach", {"extensions": detach})
        if attach:
            await self._push("extensions", "attach", {"extensions": attach})


Handler = Callable[[DeviceSocketConsumer, Frame], Awaitable[None]]

# topic → (join handler, event handler)
TOPICS: dict[str, tuple[Handler, Handler]] = {
    "device": (DeviceSocketConsumer.join_device, DeviceSocketConsumer.on_device_event),
    "console": (DeviceSocketConsumer.join_console, DeviceSocketConsumer.on_console_event),
    "extensions": (DeviceSocketConsumer.join_extensions, DeviceSocketConsumer.on_extensions_event),
}
