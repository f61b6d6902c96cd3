"""uvicorn, made to behave as the hub expects of its server (`--server uvicorn`).

What daphne needed patches for (devicelink/daphne_ext.py, nerveshub/lib/daphne_http.py)
uvicorn mostly does itself:

* refused device upgrades: uvicorn implements the ASGI "websocket.http.response"
  extension, so a refused device gets its 401/503 with the Date and
  nh-connection-error-reason headers;
* close codes 1008 and 1009 go out as the application sends them;
* request bodies: uvicorn hands a body to the application as it arrives, so
  `BodyGuard` (nerveshub/lib/bodyguard.py) refuses a declared Content-Length
  past the limit, or missing credentials, before a byte of the body is read,
  and cuts a chunked body at the limit.

Three things it does not do, added here:

* `DroppingSends`: a frame the application sends after the peer has gone is
  dropped, as under daphne. uvicorn raises ClientDisconnected (or a
  RuntimeError after a close) inside the application for each, an
  error-level traceback for an ordinary disconnect; the consumer learns of
  the close from its `websocket.disconnect` message.
* `HeaderDeadlineProtocol`: a connection must finish its request line and
  headers within HTTP_HEADER_TIMEOUT seconds of connecting (or of the first
  byte of the next request on a kept-alive connection) or it gets 408 and is
  closed. uvicorn has no such deadline: a client sending a header byte every
  few seconds could hold a connection for ever. Between requests uvicorn's own
  keep-alive timeout (5 s) closes an idle connection. The same protocol
  limits a request line and its headers to MAX_HEADER_BYTES and MAX_HEADERS,
  Twisted's limits under daphne, and answers 400 past them: httptools sets
  none, so a client could make the hub hold megabytes of headers per request.

A refused body is answered with `Connection: close`; uvicorn then closes the
connection without draining what the client still sends (daphne_http lingers),
so a client that keeps writing a large body may see a reset instead of the 413.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import MutableMapping
from typing import Any

from django.conf import settings
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.utils import ClientDisconnected

from nerveshub.lib.bodyguard import ASGIApp, Message, Receive, Send

logger = logging.getLogger(__name__)

TIMED_OUT = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
# Twisted's HTTPChannel.totalHeadersSize and maxHeaders: what daphne accepts.
MAX_HEADER_BYTES = 16384
MAX_HEADERS = 500


class HeadersTooLarge(Exception):
    """Raised from a parser callback: uvicorn answers 400 and closes."""


class DroppingSends:
    """ASGI middleware for websockets: frames sent after the close are dropped."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            await self.app(scope, receive, send)
            return
        closed = False

        async def tracked_receive() -> Message:
            nonlocal closed
            message = await receive()
            if message["type"] == "websocket.disconnect":
                closed = True
            return message

        async def dropping_send(message: Message) -> None:
            nonlocal closed
            if closed and message["type"] in ("websocket.send", "websocket.close"):
                return
            try:
                await send(message)
            except ClientDisconnected:
                closed = True
                return
            if message["type"] == "websocket.close":
                closed = True

        await self.app(scope, tracked_receive, dropping_send)


class HeaderDeadlineProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline for each request's headers."""

    _header_timer: asyncio.TimerHandle | None = None
    _header_bytes = 0
    _header_count = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = self._header_count = 0
        if self._header_timer is None:
            self._start_header_timer()

    def on_url(self, url: bytes) -> None:
        self._count_header_bytes(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        self._count_header_bytes(len(name) + len(value) + 4)  # ": " and CRLF
        super().on_header(name, value)

    def _count_header_bytes(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > MAX_HEADER_BYTES or self._header_count > MAX_HEADERS:
            logger.info(
                "refusing a request from %s: headers past %s bytes or %s lines",
                self.client[0] if self.client else "?",
                MAX_HEADER_BYTES,
                MAX_HEADERS,
            )
            raise HeadersTooLarge

    def on_headers_complete(self) -> None:
        self._cancel_header_timer()
        super().on_headers_complete()

    def _start_header_timer(self) -> None:
        self._cancel_header_timer()
        timeout = settings.HTTP_HEADER_TIMEOUT
        if timeout:
            self._header_timer = self.loop.call_later(timeout, self._header_timed_out)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        logger.info(
            "closing %s: no complete request headers within %s s",
            self.client[0] if self.client else "?",
            settings.HTTP_HEADER_TIMEOUT,
        )
        self.transport.write(TIMED_OUT)
        self.transport.close()
