"""Business rules of the remote console: who may open it, what is audited, and
the relay between a device's `console` topic and the people watching it.

Two consumers call in here and stay thin:

* the device socket (devicelink.consumer, console section) holds one
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
from importlib import import_module
from typing import Any

from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model, load_backend
from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.models import AnonymousUser
from django.utils.crypto import constant_time_compare

from console import protocol
from devices.models import Device
from devices.publish import send_to_socket
from nerveshub.lib.semver import parse_semver
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
class AccessCheck:
    access: ConsoleAccess | None  # None: the console must end
    reason: str  # why it ends, for the operator and the audit log


def session_user(session_key: str | None) -> AbstractBaseUser | None:
    """The user a session still signs in, as Django would decide on a request:
    None once the session row is gone or expired (signed out), the password
    changed (the session's auth hash no longer matches), or the user is
    inactive. Unlike django.contrib.auth.get_user it never writes: a check
    must not flush a session that a password change is about to re-hash."""
    if not session_key:
        return None
    data = import_module(settings.SESSION_ENGINE).SessionStore(session_key).load()
    backend_path, user_id, session_hash = (data.get(k) for k in (BACKEND_SESSION_KEY, SESSION_KEY, HASH_SESSION_KEY))
    if backend_path not in settings.AUTHENTICATION_BACKENDS or user_id is None or not session_hash:
        return None
    user = load_backend(backend_path).get_user(get_user_model()._meta.pk.to_python(user_id))
    if user is None:
        return None
    hashes = [user.get_session_auth_hash(), *user.get_session_auth_fallback_hash()]
    if not any(constant_time_compare(session_hash, known) for known in hashes):
        return None
    return user


def recheck_console_access(session_key: str | None, user_id: int, device_id: int) -> AccessCheck:
    """What the user of an open console may do now (before every write, on an
    access event, and every CONSOLE_ACCESS_CHECK_SECONDS)."""
    user = session_user(session_key)
    if user is None or user.pk != user_id:
        return AccessCheck(None, "signed out (session ended or password changed)")
    access = console_access(user, device_id)
    if access is None:
        return AccessCheck(None, "access ended (no longer a member of the organization, or the device is gone)")
    return AccessCheck(access, "")


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


def record_restart(user: AbstractBaseUser, device_id: int) -> None:
    device = _device(device_id)
    if device is not None:
        audit(user, "console.restarted", device)


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
    """The last output of a device's console, so an operator who opens it sees
    what the device printed before: at most SCROLLBACK_LINES lines and
    CONSOLE_SCROLLBACK_BYTES bytes (oldest lines go first), plus the unfinished
    line. An unfinished line past CONSOLE_MAX_LINE_BYTES, or any longer line, is
    kept in pieces of that size: a device that never sends a newline costs the
    hub a bounded amount of memory, and nothing it printed is reordered."""

    def __init__(self, lines: int = SCROLLBACK_LINES, max_bytes: int = 0, max_line_bytes: int = 0) -> None:
        self.max_lines = lines
        self.max_bytes = max_bytes or settings.CONSOLE_SCROLLBACK_BYTES
        self.max_line_bytes = max_line_bytes or settings.CONSOLE_MAX_LINE_BYTES
        self._lines: deque[tuple[str, int]] = deque()  # (text, its UTF-8 size)
        self._size = 0
        self._partial = ""

    def add(self, data: str) -> None:
        parts = (self._partial + data).split("\n")
        self._partial = parts.pop()
        for part in parts:
            self._keep(part + "\n")
        self._partial = self._keep(self._partial, whole=False)

    def _keep(self, text: str, *, whole: bool = True) -> str:
        """Store `text` in pieces of at most max_line_bytes; with whole=False
        the last piece, if it fits, is returned instead (the unfinished line)."""
        encoded = text.encode()
        while len(encoded) > self.max_line_bytes:
            cut = self.max_line_bytes
            while encoded[cut] & 0xC0 == 0x80:  # never inside a character
                cut -= 1
            self._append(encoded[:cut].decode(), cut)
            encoded = encoded[cut:]
        if whole and encoded:
            self._append(encoded.decode(), len(encoded))
            return ""
        return encoded.decode()

    def _append(self, text: str, size: int) -> None:
        self._lines.append((text, size))
        self._size += size
        while self._lines and (self._size > self.max_bytes or len(self._lines) > self.max_lines):
            self._size -= self._lines.popleft()[1]

    @property
    def size(self) -> int:
        """Bytes held (UTF-8), the unfinished line included."""
        return self._size + len(self._partial.encode())

    def text(self) -> str:
        return "".join(text for text, _ in self._lines) + self._partial


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
