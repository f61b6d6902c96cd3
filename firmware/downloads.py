"""Serving firmware files from local storage to devices, at signed URLs.

    GET {PUBLIC_URL}/firmware/<token>/<uuid>.fw

The token is django.core.signing over (stored name, uuid, expiry time), salted
for this use: it cannot be guessed or altered, it expires after FIRMWARE_URL_TTL
seconds, and it carries everything needed to find the file, so a download
touches no database.

This is a small ASGI app mounted in front of Django (nerveshub/asgi.py) rather
than a Django view because Django's FileResponse under ASGI consumes a sync
file iterator whole before sending (StreamingHttpResponse.__aiter__ runs
`list()` over it in a thread: a 200 MB file means 200 MB of RSS per download).
Here the file is read in CHUNK pieces in a worker thread and each piece is
sent before the next is read.

Range (RFC 9110 §14), as nerves_hub_link needs it (docs/device-protocol.md §6.4):
* `bytes=a-b`, `bytes=a-`, `bytes=-n`; an end past the file (the client asks for
  one byte past the end when resuming) is clamped; 206 with Content-Range.
* A ranged request is never answered 200, even when it covers the whole file
  (the client does not check for 206). An unsatisfiable or malformed range is
  416 with `Content-Range: bytes */size`.
* Several ranges: only the first is served (single-part 206). Devices never ask
  for more than one.
* If-Range with a different ETag sends the whole file (200), as RFC 9110 says.

Backpressure: daphne's `send` writes straight into Twisted's transport buffer
and never waits, so a fast disk and a slow device would buffer the whole file
in memory. When the app runs under daphne it registers a Twisted push producer
on the request and waits whenever Twisted says the socket buffer is full. Under
servers whose `send` already waits (uvicorn, hypercorn) nothing extra is needed.

With FIRMWARE_X_ACCEL_REDIRECT set the app checks the token and answers with an
`X-Accel-Redirect` header only; nginx then sends the bytes (with Range) itself.
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import quote

from django.conf import settings
from django.core import signing

from firmware.storage import firmware_storage

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
# Loose on purpose: Django's handler annotates its arguments with narrower types.
ASGIApp = Callable[..., Awaitable[None]]

PREFIX = "/firmware/"
SALT = "nerveshub.firmware.download"
# 1 MiB pieces: big enough that per-chunk overhead (a thread hop and a Twisted
# write) is small against the copy, small enough that eight downloads hold 16 MiB.
CHUNK = 1024 * 1024
_RANGE = re.compile(r"^\s*(\d*)\s*-\s*(\d*)\s*$")


def signed_path(storage_name: str, uuid: str, ttl: int | None = None) -> str:
    expires = int(time.time()) + (ttl if ttl is not None else settings.FIRMWARE_URL_TTL)
    token = signing.dumps([storage_name, uuid, expires], salt=SALT, compress=True)
    return f"{PREFIX}{token}/{uuid}.fw"


def read_token(token: str, filename: str) -> str | None:
    """The stored name for a valid, unexpired token matching the file name, else None."""
    try:
        storage_name, uuid, expires = signing.loads(token, salt=SALT)
    except (signing.BadSignature, ValueError, TypeError):
        return None
    if not isinstance(storage_name, str) or filename != f"{uuid}.fw" or int(expires) < time.time():
        return None
    return storage_name


class RangeNotSatisfiable(Exception):
    pass


def parse_range(header: str, size: int) -> tuple[int, int]:
    """(first, last) inclusive byte positions for the first range in `header`."""
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or not spec:
        raise RangeNotSatisfiable
    match = _RANGE.match(spec.split(",")[0])
    if not match or match.group(1) == match.group(2) == "":
        raise RangeNotSatisfiable
    first_s, last_s = match.groups()
    if first_s == "":
        suffix = int(last_s)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable
        return max(size - suffix, 0), size - 1
    first = int(first_s)
    last = size - 1 if last_s == "" else min(int(last_s), size - 1)
    if first >= size or (last_s != "" and int(last_s) < first):
        raise RangeNotSatisfiable
    return first, last


class _TwistedFlow:
    """A Twisted push producer: the channel calls pauseProducing when the socket
    buffer is full and resumeProducing when it drained; the sender waits on it."""

    def __init__(self, request: Any) -> None:
        self.request = request
        self.ready = asyncio.Event()
        self.stopped = False
        channel = request.channel
        if channel is None or getattr(channel, "_waitingForTransport", False) is False:
            self.ready.set()
        request.registerProducer(self, True)

    def pauseProducing(self) -> None:  # Twisted's IPushProducer names
        self.ready.clear()

    def resumeProducing(self) -> None:
        self.ready.set()

    def stopProducing(self) -> None:
        self.stopped = True
        self.ready.set()

    def close(self) -> None:
        if self.request.producer is self:
            self.request.unregisterProducer()


def _flow_control(send: Send) -> _TwistedFlow | None:
    # daphne builds `send` as partial(server.handle_reply, request); nothing else
    # exposes the request, so this is the one place the app knows its server.
    if isinstance(send, functools.partial) and send.args:
        request = send.args[0]
        if hasattr(request, "registerProducer") and getattr(request, "producer", None) is None:
            try:
                return _TwistedFlow(request)
            except (RuntimeError, ValueError):
                return None
    return None


async def _respond(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes = b"") -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _plain(send: Send, status: int, text: str, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    data = text.encode()
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(data)).encode())]
    await _respond(send, status, headers + (extra or []), data)


async def serve_firmware(scope: Scope, receive: Receive, send: Send) -> None:
    method = scope.get("method", "GET")
    if method not in ("GET", "HEAD"):
        await _plain(send, 405, "Method not allowed\n", [(b"allow", b"GET, HEAD")])
        return
    token, _, filename = scope["path"][len(PREFIX) :].partition("/")
    storage_name = read_token(token, filename)
    if storage_name is None:
        await _plain(send, 403, "This download link is invalid or has expired.\n")
        return
    headers = {k.lower(): v for k, v in scope.get("headers", [])}
    common = [
        (b"accept-ranges", b"bytes"),
        (b"content-type", b"application/octet-stream"),
        (b"content-disposition", f'attachment; filename="{filename}"'.encode()),
        (b"etag", f'"{filename[:-3]}"'.encode()),
        (b"cache-control", b"private, no-transform"),
    ]
    if settings.FIRMWARE_X_ACCEL_REDIRECT:
        target = settings.FIRMWARE_X_ACCEL_REDIRECT.rstrip("/") + "/" + quote(storage_name)
        await _respond(send, 200, [*common, (b"x-accel-redirect", target.encode()), (b"content-length", b"0")])
        return
    try:
        path = firmware_storage().path(storage_name)
        handle = await asyncio.to_thread(open, path, "rb")
    except (FileNotFoundError, NotImplementedError):
        await _plain(send, 404, "Not found\n")
        return
    try:
        size = os.fstat(handle.fileno()).st_size
        status, first, last = 200, 0, size - 1
        range_header = headers.get(b"range")
        if_range = headers.get(b"if-range")
        if range_header is not None and (if_range is None or if_range.strip() == f'"{filename[:-3]}"'.encode()):
            try:
                first, last = parse_range(range_header.decode("latin-1"), size)
            except RangeNotSatisfiable:
                await _plain(send, 416, "Range not satisfiable\n", [(b"content-range", f"bytes */{size}".encode())])
                return
            status = 206
            common.append((b"content-range", f"bytes {first}-{last}/{size}".encode()))
        length = last - first + 1 if size else 0
        common.append((b"content-length", str(length).encode()))
        await send({"type": "http.response.start", "status": status, "headers": common})
        if method == "HEAD" or length == 0:
            await send({"type": "http.response.body", "body": b""})
            return
        await _stream(handle, first, length, receive, send)
    finally:
        handle.close()


async def _stream(handle: Any, offset: int, length: int, receive: Receive, send: Send) -> None:
    flow = _flow_control(send)
    gone = asyncio.Event()

    async def watch_disconnect() -> None:
        # A device that hangs up must not keep us reading the rest of the file.
        while (await receive())["type"] != "http.disconnect":
            pass
        gone.set()
        if flow is not None:
            flow.ready.set()

    watcher = asyncio.ensure_future(watch_disconnect())
    try:
        remaining = length
        await asyncio.to_thread(handle.seek, offset)
        while remaining > 0 and not gone.is_set():
            if flow is not None:
                await flow.ready.wait()
                if flow.stopped or gone.is_set():
                    return
            chunk = await asyncio.to_thread(handle.read, min(CHUNK, remaining))
            if not chunk:
                # The file shrank under us; the short body tells the client to resume.
                break
            remaining -= len(chunk)
            if remaining > 0:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            else:
                if flow is not None:
                    # Unregister before the last write finishes the request, so a
                    # keep-alive connection's next request can register its own.
                    flow.close()
                    flow = None
                await send({"type": "http.response.body", "body": chunk})
                return
        await send({"type": "http.response.body", "body": b""})
    finally:
        watcher.cancel()
        if flow is not None:
            flow.close()


class FirmwareDownloadApp:
    """ASGI middleware: /firmware/… goes to serve_firmware, the rest to `app`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(PREFIX):
            await serve_firmware(scope, receive, send)
        else:
            await self.app(scope, receive, send)
