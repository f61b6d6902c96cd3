"""The operator's side of the remote console: `/console/<device id>/socket`.

The session user comes from Channels' AuthMiddlewareStack (nerveshub.routing).
Thin by design: parse a browser message (console.protocol), check it against
the rules (console.services), pass it on through the channel layer:

* to the device: its socket address (Device.socket_channel), wherever that
  socket lives; the device socket pushes it on the `console` topic;
* from the device: the per-device group `console_group(device_id)`.

Each page also runs one small watch task: it notices the device going away
(the device socket clears console_available when it closes, and a crashed
server process sends no message at all, so the row is what is checked) and
closes the page's socket after CONSOLE_IDLE_TIMEOUT without input or output.

Access is decided at connect and again before every message from the browser,
on every "access changed" message to the user's group
(nerveshub.tenancy.access_events: membership, sign-out, password), and every
CONSOLE_ACCESS_CHECK_SECONDS: a member removed or signed out loses the console
(code 4003), one lowered to the view role keeps watching without typing.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from pydantic import ValidationError

from console import protocol, services
from console.services import AccessCheck, ConsoleAccess, InputRecorder, UploadRefused, UploadTracker
from devices.publish import send_to_socket
from nerveshub.tenancy.access_events import session_digest, user_access_group

logger = logging.getLogger(__name__)

# Close codes the page understands (4000-4999 are the application's own).
CLOSE_IDLE = 4000
CLOSE_ACCESS_ENDED = 4003
GROUP_REFRESH_SECONDS = 3600
# A check is four queries (session, user, device, membership): an upload's
# chunks (10,240 for 10 MiB) are checked at most this often, every other
# message always; an access event aborts an upload at once either way.
CHUNK_CHECK_SECONDS = 1.0
# Files the device is sending that one page counts at a time (for the audit):
# the names come from the device, which must not grow this without bound.
MAX_DOWNLOADS = 16


class ConsoleConsumer(AsyncWebsocketConsumer):  # type: ignore[misc]
    access: ConsoleAccess | None = None
    watch: asyncio.Task[None] | None = None
    ended = False
    checked_at = 0.0

    async def connect(self) -> None:
        user = self.scope.get("user")
        device_id = int(self.scope["url_route"]["kwargs"]["device_id"])
        access = None
        if user is not None and user.is_authenticated:
            access = await database_sync_to_async(services.console_access)(user, device_id)
        if access is None:
            # Closing before accepting answers the handshake with 403.
            logger.info("console socket refused for %s on device %s", getattr(user, "pk", None), device_id)
            await self.close()
            return
        self.user = user
        self.access = access
        session = self.scope.get("session")
        self.session_key: str | None = getattr(session, "session_key", None)
        self.group = services.console_group(device_id)
        self.access_group = user_access_group(user.pk)
        self.uploads = UploadTracker(settings.CONSOLE_UPLOAD_MAX_SIZE)
        self.typed = InputRecorder()
        loop = asyncio.get_running_loop()
        self.opened_at = loop.time()
        self.last_activity = self.opened_at
        self.close_reason = "closed by the browser"
        self.download_bytes: dict[str, int] = {}
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.channel_layer.group_add(self.access_group, self.channel_name)
        await self.accept()
        await database_sync_to_async(services.open_console_session)(user, access)
        state = await database_sync_to_async(services.device_console_state)(device_id)
        self.device_channel = state.channel if state.joined else ""
        self.console_version = state.console_version
        await self._to_browser(
            "metadata",
            {
                "identifier": access.identifier,
                "role": access.role,
                "can_write": access.can_write,
                "version": state.console_version,
                "files": services.files_supported(state.console_version),
                "upload_max_size": settings.CONSOLE_UPLOAD_MAX_SIZE,
                "idle_timeout": settings.CONSOLE_IDLE_TIMEOUT,
            },
        )
        await self._to_browser("status", {"connected": state.joined})
        if state.joined:
            await self._send_layer(self.device_channel, protocol.hello_to_device(self.channel_name))
        await self.channel_layer.group_send(self.group, protocol.presence(user.get_username(), "opened"))
        self.watch = loop.create_task(self._watch(), name=f"console-watch-{device_id}")

    async def disconnect(self, code: int) -> None:
        if self.access is None:
            return
        if self.watch is not None:
            self.watch.cancel()
        await self.channel_layer.group_discard(self.group, self.channel_name)
        await self.channel_layer.group_discard(self.access_group, self.channel_name)
        await self.channel_layer.group_send(self.group, protocol.presence(self.user.get_username(), "closed"))
        line = self.typed.flush()
        if line:
            await database_sync_to_async(services.record_input)(self.user, self.access.device_id, line)
        upload = self.uploads.abort()
        if upload is not None:
            await database_sync_to_async(services.record_upload)(
                self.user, self.access.device_id, upload.filename, upload.received, complete=False
            )
        seconds = asyncio.get_running_loop().time() - self.opened_at
        await database_sync_to_async(services.close_console_session)(
            self.user, self.access.device_id, reason=self.close_reason, seconds=seconds
        )

    # --- from the browser ----------------------------------------------------------

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        assert self.access is not None  # nothing is received before connect() accepted
        try:
            message = protocol.parse_browser_message(text_data or "")
        except ValidationError as exc:
            await self._error(f"message refused: {exc.errors()[0]['msg']}")
            return
        # Every message from the browser acts on the device: checked against the
        # session and role as they are now, not as they were at connect.
        checked = isinstance(message, protocol.UploadChunk) and (
            asyncio.get_running_loop().time() - self.checked_at < CHUNK_CHECK_SECONDS
        )
        try:
            allowed = checked or await self._recheck()
        except Exception:
            # Unchecked is refused: nothing goes to the device.
            logger.exception("console access check of user %s failed", self.user.pk)
            await self._error("your access could not be checked; nothing was sent, try again")
            return
        if not allowed:
            return
        assert self.access is not None
        if not self.access.can_write:
            await self._error("read-only: your role in this organization may watch this console, not type")
            return
        self.last_activity = asyncio.get_running_loop().time()
        if isinstance(message, protocol.Keystrokes):
            if await self._to_device("dn", message.payload.model_dump()):
                for line in self.typed.add(message.payload.data):
                    await database_sync_to_async(services.record_input)(self.user, self.access.device_id, line)
        elif isinstance(message, protocol.WindowSize):
            await self._to_device("window_size", message.payload.model_dump())
        elif isinstance(message, protocol.Restart):
            if await self._to_device("restart", {}):
                await database_sync_to_async(services.record_restart)(self.user, self.access.device_id)
        else:
            await self._upload(message)

    async def _upload(self, message: protocol.UploadStart | protocol.UploadChunk | protocol.UploadStop) -> None:
        assert self.access is not None
        if not services.files_supported(self.console_version):
            await self._error("this device's console does not take files (console_version below 2.0.0)")
            return
        filename = message.payload.filename
        try:
            if isinstance(message, protocol.UploadStart):
                upload = self.uploads.start(filename, message.payload.size)
                payload: dict[str, Any] = {"filename": filename, "uploaded_by": self.user.get_username()}
            elif isinstance(message, protocol.UploadChunk):
                upload = self.uploads.chunk(filename, message.payload.chunk, message.payload.data)
                payload = message.payload.model_dump()
            else:
                upload = self.uploads.stop(filename)
                payload = {"filename": filename}
        except UploadRefused as exc:
            aborted = self.uploads.abort()
            await self._error(str(exc), filename=filename)
            if aborted is not None:
                await database_sync_to_async(services.record_upload)(
                    self.user, self.access.device_id, aborted.filename, aborted.received, complete=False
                )
            return
        if not await self._to_device(message.event, payload):
            self.uploads.abort()
            return
        await self._to_browser(
            "upload_progress",
            {
                "filename": filename,
                "received": upload.received,
                "size": upload.size,
                "done": isinstance(message, protocol.UploadStop),
            },
        )
        if isinstance(message, protocol.UploadStop):
            await database_sync_to_async(services.record_upload)(
                self.user, self.access.device_id, filename, upload.size, complete=True
            )

    async def _to_device(self, event: str, payload: dict[str, Any]) -> bool:
        if not self.device_channel:
            await self._error("the device is not connected; nothing was sent")
            return False
        return await self._send_layer(self.device_channel, protocol.push_to_device(event, payload))

    # --- from the channel layer ----------------------------------------------------

    async def console_from_device(self, message: dict[str, Any]) -> None:
        event, payload = str(message["event"]), dict(message["payload"])
        self.last_activity = asyncio.get_running_loop().time()
        if event == "up":
            await self._output(str(payload["data"]))
        else:
            await self._to_browser(event, payload)
        if event == "file-data/start":
            if len(self.download_bytes) >= MAX_DOWNLOADS:
                self.download_bytes.pop(next(iter(self.download_bytes)))
            self.download_bytes[payload["filename"]] = 0
        elif event == "file-data" and payload["filename"] in self.download_bytes:
            self.download_bytes[payload["filename"]] += len(base64.b64decode(payload["data"]))
        elif event == "file-data/stop" and self.access is not None:
            size = self.download_bytes.pop(payload["filename"], 0)
            await database_sync_to_async(services.record_download)(
                self.user, self.access.device_id, payload["filename"], size
            )

    async def console_scrollback(self, message: dict[str, Any]) -> None:
        await self._output(str(message["data"]))

    async def console_device_status(self, message: dict[str, Any]) -> None:
        # An explicit (re)join: the page is told even when the socket is the same
        # one (a rejoin after a channel crash), so it sends its window size again.
        await self._set_device(message["channel"] if message["joined"] else "", str(message["version"]), force=True)

    async def console_presence(self, message: dict[str, Any]) -> None:
        await self._to_browser("presence", {"username": message["username"], "action": message["action"]})

    async def access_changed(self, message: dict[str, Any]) -> None:
        """The user's membership, session or password changed somewhere."""
        ended = message.get("ended_session")
        if ended and self.session_key and ended == session_digest(self.session_key):
            await self._end("signed out")
            return
        await self._recheck()

    # --- access ----------------------------------------------------------------------

    async def _recheck(self) -> bool:
        """Check the session and role now and apply the outcome: end the
        console, or show a changed role. False when the console ended."""
        if self.ended or self.access is None:
            return False
        check: AccessCheck = await database_sync_to_async(services.recheck_console_access)(
            self.session_key, self.user.pk, self.access.device_id
        )
        if check.access is None:
            await self._end(check.reason)
            return False
        self.checked_at = asyncio.get_running_loop().time()
        if check.access != self.access:
            was, self.access = self.access, check.access
            if was.can_write and not check.access.can_write:
                await self._abort_upload()
            await self._to_browser("access", {"role": check.access.role, "can_write": check.access.can_write})
        return True

    async def _end(self, reason: str) -> None:
        if self.ended:
            return
        self.ended = True
        self.close_reason = reason
        await self._abort_upload()
        await self._to_browser("closed", {"reason": reason})
        await self.close(code=CLOSE_ACCESS_ENDED)

    async def _abort_upload(self) -> None:
        assert self.access is not None
        aborted = self.uploads.abort()
        if aborted is not None:
            await database_sync_to_async(services.record_upload)(
                self.user, self.access.device_id, aborted.filename, aborted.received, complete=False
            )

    # --- the watch task --------------------------------------------------------------

    async def _watch(self) -> None:
        assert self.access is not None
        idle = settings.CONSOLE_IDLE_TIMEOUT
        period = max(0.2, min(settings.CONSOLE_DEVICE_CHECK_SECONDS, idle / 4))
        period = min(period, settings.CONSOLE_ACCESS_CHECK_SECONDS)
        loop = asyncio.get_running_loop()
        grouped_at = checked_at = loop.time()
        while True:
            await asyncio.sleep(period)
            if loop.time() - grouped_at > GROUP_REFRESH_SECONDS:
                # channels_redis forgets group members after a day.
                await self.channel_layer.group_add(self.group, self.channel_name)
                await self.channel_layer.group_add(self.access_group, self.channel_name)
                grouped_at = loop.time()
            if loop.time() - checked_at >= settings.CONSOLE_ACCESS_CHECK_SECONDS:
                checked_at = loop.time()
                try:
                    if not await self._recheck():
                        return
                except Exception:
                    logger.exception("console access check of user %s failed", self.user.pk)
            if loop.time() - self.last_activity > idle:
                self.close_reason = "idle"
                await self._to_browser("closed", {"reason": f"closed after {idle} s without input or output"})
                await self.close(code=CLOSE_IDLE)
                return
            try:
                state = await database_sync_to_async(services.device_console_state)(self.access.device_id)
            except Exception:
                logger.exception("console watch of device %s failed", self.access.device_id)
                continue
            await self._set_device(state.channel if state.joined else "", state.console_version)

    async def _set_device(self, channel: str, console_version: str, *, force: bool = False) -> None:
        """Show a change of the device's console (gone, back, or on another
        socket) to the browser, which re-sends its window size on return."""
        was, self.device_channel = self.device_channel, channel
        if console_version:
            self.console_version = console_version
        if force or was != channel:
            await self._to_browser(
                "status", {"connected": bool(channel), "files": services.files_supported(self.console_version)}
            )

    # --- helpers ---------------------------------------------------------------------

    async def _send_layer(self, channel: str, message: dict[str, Any]) -> bool:
        try:
            await send_to_socket(self.channel_layer, channel, message)
        except Exception:
            # A full channel (ChannelFull) or an unreachable layer.
            logger.exception("console message to %s failed", channel)
            await self._error("the device could not be reached; try again")
            return False
        return True

    async def _output(self, data: str) -> None:
        # In messages under daphne's limit: one over it closes the page's socket.
        for chunk in protocol.output_chunks(data):
            await self._to_browser("up", {"data": chunk})

    async def _to_browser(self, event: str, payload: dict[str, Any]) -> None:
        await self.send(text_data=json.dumps(protocol.to_browser(event, payload)))

    async def _error(self, text: str, **extra: Any) -> None:
        await self._to_browser("error", {"message": text, **extra})
