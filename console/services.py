"""Business rules of the remote console: who may open it, what is audited, and
the relay between a device's `console` topic and the people watching it.

Two consumers call in here and stay thin:

* the device socket (devices.consumers, console section) holds one
  `DeviceConsole` while the device has the topic joined: output is kept for
  late joiners and fanned out to `console_group(device_id)`;
* the operator socket (console.consumers) asks `console_access` who the user
  is to this device, and uses `UploadTracker` / `InputRecorder` for the rules
  about files and attribution.

Operator → device messages go to the device socket's address
(Device.socket_channel), device → operators messages to one group per device;
both cross server processes through the channel layer (Redis in production).
"""

from __future__ import annotations

import base64
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.models import AnonymousUser

from console import protocol
from devices.models import Device
from devices.protocol import parse_semver
from devices.publish import send_to_socket
from nerveshub.tenancy.models import Role
from nerveshub.tenancy.services import audit, role_in

logger = logging.getLogger(__name__)

SCROLLBACK_LINES = 1024
# An attributed input line longer than this is cut in the audit log.
AUDIT_INPUT_CHARS = 500


def console_group(device_id: int) -> str:
    """The channel-layer group of the people watching one device's console."""
    return f"console.device.{device_id}"


# --- access ------------------------------------------------------------------------


@dataclass(frozen=True)
class ConsoleAccess:
    device_id: int
    org_id: int
    identifier: str
    role: str
    can_write: bool


def console_access(user: AbstractBaseUser | AnonymousUser, device_id: int) -> ConsoleAccess | None:
    """What `user` may do with the device's console; None when the device does
    not exist for them (outsiders, deleted devices): callers answer 404."""
    device = Device.objects.alive().filter(pk=device_id).values("org_id", "identifier").first()
    if device is None:
        return None
    role = role_in(user, device["org_id"])
    if role is None:
        return None
    return ConsoleAccess(
        device_id=device_id,
        org_id=device["org_id"],
        identifier=device["identifier"],
        role=role,
        # Typing into a device's shell is acting on the device: manage or admin.
        can_write=role in (Role.MANAGE, Role.ADMIN),
    )


@dataclass(frozen=True)
class DeviceConsoleState:
    channel: str  # the device socket's channel; "" while offline
    joined: bool  # the device has the console topic joined
    console_version: str


def device_console_state(device_id: int) -> DeviceConsoleState:
    row = Device.objects.filter(pk=device_id).values("socket_channel", "console_available", "console_version").first()
    if row is None:
        return DeviceConsoleState(channel="", joined=False, console_version="")
    return DeviceConsoleState(
        channel=row["socket_channel"],
        joined=bool(row["socket_channel"]) and row["console_available"],
        console_version=row["console_version"],
    )


def files_supported(console_version: str) -> bool:
    """Devices take files on the console from console_version 2.0.0 on."""
    parsed = parse_semver(console_version)
    return parsed is not None and parsed >= (2, 0, 0)


# --- audit -------------------------------------------------------------------------


# The audit rows are the only writes here, and audit() makes its own
# transaction. The device is read before it, outside any transaction: on SQLite
# a transaction that reads and then writes cannot wait for another writer.


def _device(device_id: int) -> Device | None:
    return Device.objects.filter(pk=device_id).first()


def open_console_session(user: AbstractBaseUser, access: ConsoleAccess) -> None:
    device = _device(access.device_id)
    if device is not None:
        audit(user, "console.opened", device, details={"role": access.role, "read_only": not access.can_write})


def close_console_session(user: AbstractBaseUser, device_id: int, *, reason: str, seconds: float) -> None:
    device = _device(device_id)
    if device is not None:
        audit(user, "console.closed", device, details={"reason": reason, "seconds": round(seconds, 1)})


def record_input(user: AbstractBaseUser, device_id: int, text: str) -> None:
    """One audit row per line typed (flushed at Enter, on close, or when long),
    so a shared console says who typed what."""
    device = _device(device_id)
    if device is not None:
        audit(user, "console.input", device, details={"text": text[:AUDIT_INPUT_CHARS]})


def record_upload(user: AbstractBaseUser, device_id: int, filename: str, size: int, *, complete: bool) -> None:
    device = _device(device_id)
    if device is not None:
        action = "console.file_uploaded" if complete else "console.file_upload_aborted"
        audit(user, action, device, details={"filename": filename, "bytes": size})


def record_download(user: AbstractBaseUser, device_id: int, filename: str, size: int) -> None:
    device = _device(device_id)
    if device is not None:
        audit(user, "console.file_received", device, details={"filename": filename, "bytes": size})


# --- device side -------------------------------------------------------------------


class Scrollback:
    """The last SCROLLBACK_LINES lines of output plus the unfinished one, so an
    operator who opens the console sees what the device printed before."""

    def __init__(self, lines: int = SCROLLBACK_LINES) -> None:
        self._lines: deque[str] = deque(maxlen=lines)
        self._partial = ""

    def add(self, data: str) -> None:
        parts = (self._partial + data).split("\n")
        self._partial = parts.pop()
        self._lines.extend(part + "\n" for part in parts)

    def text(self) -> str:
        return "".join(self._lines) + self._partial


@dataclass
class DeviceConsole:
    """The console topic of one connected device, held by its device socket.

    `layer` is the consumer's channel layer; every method is called from the
    device socket's event loop."""

    device_id: int
    channel: str
    console_version: str
    layer: Any
    scrollback: Scrollback = field(default_factory=Scrollback)

    async def announce_joined(self) -> None:
        """Tell the people watching that the device is (back) on its console:
        their pages resume and send the window size again."""
        await self._to_operators(protocol.device_status(True, self.channel, self.console_version))

    async def from_device(self, event: str, payload: Any) -> None:
        """A push on the console topic: output and files go to the operators
        unchanged (docs/reference-behaviour.md §4). Raises ValidationError for a bad
        payload of a known event; unknown events are dropped."""
        message = protocol.parse_device_event(event, payload)
        if message is None:
            logger.debug("device %s: console event %s ignored", self.device_id, event)
            return
        if isinstance(message, protocol.DeviceOutput):
            self.scrollback.add(message.data)
        await self._to_operators(protocol.from_device(event, message.model_dump()))

    async def answer_hello(self, message: dict[str, Any]) -> None:
        reply_channel = str(message.get("reply_channel") or "")
        if reply_channel:
            await self._send(
                reply_channel, protocol.scrollback(self.scrollback.text(), self.channel, self.console_version)
            )

    async def _to_operators(self, message: dict[str, Any]) -> None:
        try:
            await self.layer.group_send(console_group(self.device_id), message)
        except Exception:
            # Nobody watching must never break the device's socket.
            logger.exception("device %s: console relay failed", self.device_id)

    async def _send(self, channel: str, message: dict[str, Any]) -> None:
        try:
            await send_to_socket(self.layer, channel, message)
        except Exception:
            logger.exception("device %s: console reply failed", self.device_id)


# --- operator side -----------------------------------------------------------------


class UploadRefused(Exception):
    """An upload step that breaks the rules; the message is for the operator."""


@dataclass
class Upload:
    filename: str
    size: int
    received: int = 0
    next_chunk: int = 0


class UploadTracker:
    """The rules of one browser's uploads: one file at a time, the size given
    up front and never exceeded, chunks in order. The device has no
    acknowledgement (docs/device-protocol.md §7), so order is kept by refusing anything out of order
    here and sending each chunk on the one channel to the device."""

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self.current: Upload | None = None

    def start(self, filename: str, size: int) -> Upload:
        if self.current is not None:
            raise UploadRefused(f"{self.current.filename} is still being uploaded")
        if size > self.max_size:
            raise UploadRefused(f"{filename} is {size} bytes; the limit is {self.max_size}")
        self.current = Upload(filename=filename, size=size)
        return self.current

    def chunk(self, filename: str, chunk: int, data: str) -> Upload:
        upload = self._expect(filename)
        if chunk != upload.next_chunk:
            raise UploadRefused(f"chunk {chunk} of {filename} arrived, chunk {upload.next_chunk} was expected")
        size = len(base64.b64decode(data))
        if upload.received + size > upload.size:
            raise UploadRefused(f"{filename} is larger than the {upload.size} bytes announced")
        upload.received += size
        upload.next_chunk += 1
        return upload

    def stop(self, filename: str) -> Upload:
        upload = self._expect(filename)
        if upload.received != upload.size:
            raise UploadRefused(f"{filename} stopped at {upload.received} of {upload.size} bytes")
        self.current = None
        return upload

    def abort(self) -> Upload | None:
        upload, self.current = self.current, None
        return upload

    def _expect(self, filename: str) -> Upload:
        if self.current is None or self.current.filename != filename:
            raise UploadRefused(f"no upload of {filename} was started")
        return self.current


class InputRecorder:
    """Collects one operator's keystrokes into lines for the audit log."""

    def __init__(self) -> None:
        self._buffer: list[str] = []
        self._length = 0

    def add(self, data: str) -> list[str]:
        """Returns the lines completed by `data` (Enter, or past the audit limit)."""
        lines: list[str] = []
        for char in data:
            if char in "\r\n":
                if self._buffer:
                    lines.append(self._take())
                continue
            if char in "\x7f\b":
                # Backspace: the audit shows the line as the device received it
                # minus what was rubbed out, as a person would read it.
                if self._buffer:
                    self._length -= len(self._buffer.pop())
                continue
            self._buffer.append(char if char.isprintable() else repr(char)[1:-1])
            self._length += len(self._buffer[-1])
            if self._length >= AUDIT_INPUT_CHARS:
                lines.append(self._take())
        return lines

    def flush(self) -> str:
        return self._take() if self._buffer else ""

    def _take(self) -> str:
        text = "".join(self._buffer)
        self._buffer, self._length = [], 0
        return text
