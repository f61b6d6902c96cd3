"""Daphne's HTTP side, made to refuse early and to time out slow headers.

Twisted (under daphne) reads a request's whole body into a temporary file
before daphne creates the application, so an ASGI middleware sees a 300 MiB
upload only after it was received and written to disk. This module hooks
Twisted's HTTP channel at the end of the headers and applies the rules of
nerveshub.lib.bodyguard there:

* a declared Content-Length over the route's limit: 413 at once;
* a route that needs credentials: the socket stops being read (TCP
  backpressure holds the client) while they are checked in the event loop;
  refused: 401/403; accepted: reading resumes (and `Expect: 100-continue` is
  answered only then);
* a chunked body is counted as it arrives and cut at the limit with a 413.

A refusal is written with `Connection: close`; the connection then half-closes
and discards what the client still sends for at most LINGER_SECONDS /
LINGER_BYTES, so the client reads the answer instead of a reset (closing a
socket with unread data makes the kernel send RST).

Header timeout: a connection must finish its request line and headers within
HTTP_HEADER_TIMEOUT seconds of connecting (or of the previous response on a
kept-alive connection); otherwise it gets 408 and is closed. Twisted's own
timeout is an idle timeout that every byte resets (and daphne leaves it at
12 h), so a client sending a header byte every few seconds held a connection
for ever.

Installed by nerveshub.serve before daphne starts.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import unquote, urlsplit

from django.conf import settings

logger = logging.getLogger(__name__)

LINGER_SECONDS = 5
LINGER_BYTES = 1024 * 1024
TIMED_OUT = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"

_installed = False


def install() -> None:
    global _installed
    if _installed:
        return
    # bodyguard checks API tokens and sessions, so Django's apps must be ready;
    # daphne would only set Django up when it imports the application.
    import django

    django.setup()
    # Imported when serving: daphne's import installs its reactor (see
    # nerveshub/serve.py), and bodyguard needs the apps set up just above.
    from daphne.http_protocol import WebRequest
    from daphne.server import Server
    from twisted.internet import defer
    from twisted.web import http

    # Twisted's own annotations do not cover patching it: handled as Any here.
    HTTPChannel: Any = http.HTTPChannel

    from nerveshub.lib import bodyguard

    original_made = HTTPChannel.connectionMade
    original_headers = HTTPChannel.allHeadersReceived
    original_done = HTTPChannel.requestDone
    original_lost = HTTPChannel.connectionLost
    original_chunk = WebRequest.handleContentChunk
    original_create = Server.create_application

    # --- header timeout ---------------------------------------------------------

    def start_header_timer(channel: Any) -> None:
        cancel_header_timer(channel)
        timeout = settings.HTTP_HEADER_TIMEOUT
        if timeout:
            channel._header_timer = _reactor().callLater(timeout, header_timed_out, channel)

    def cancel_header_timer(channel: Any) -> None:
        timer = getattr(channel, "_header_timer", None)
        channel._header_timer = None
        if timer is not None and timer.active():
            timer.cancel()

    def header_timed_out(channel: Any) -> None:
        channel._header_timer = None
        transport = channel.transport
        if transport is None:
            return
        peer = transport.getPeer()
        logger.info(
            "closing %s: no complete request headers within %s s",
            getattr(peer, "host", peer),
            settings.HTTP_HEADER_TIMEOUT,
        )
        transport.write(TIMED_OUT)
        transport.loseConnection()
        _reactor().callLater(LINGER_SECONDS, abort, channel)

    def connection_made(self: Any) -> None:
        original_made(self)
        start_header_timer(self)

    def request_done(self: Any, request: Any) -> None:
        original_done(self, request)
        if self.persistent and self.transport is not None:
            start_header_timer(self)

    def connection_lost(self: Any, reason: Any) -> None:
        cancel_header_timer(self)
        original_lost(self, reason)

    # --- refusing on the headers --------------------------------------------------

    def all_headers_received(self: Any) -> None:
        cancel_header_timer(self)
        request = self.requests[-1]
        has_body = self.length is None or self.length > 0  # None: chunked
        upgrade = (request.requestHeaders.getRawHeaders(b"upgrade") or [b""])[0].lower() == b"websocket"
        if not has_body or upgrade:
            original_headers(self)
            return
        path = unquote(urlsplit(self._path).path.decode("latin-1"))
        rule = bodyguard.rule_for(path)
        request._nerveshub_rule = rule
        request._nerveshub_seen = 0
        refusal = bodyguard.size_refusal(rule, self.length)
        if refusal is not None:
            refuse(self, refusal, self._command, path)
            return
        if rule.credentials is None:
            request._nerveshub_checked = True
            original_headers(self)
            return
        # Hold the body in the client's socket while the credentials are checked;
        # the little that already arrived with the headers waits here.
        held: list[bytes] = []
        self.rawDataReceived = held.append
        self._networkProducer.pauseProducing()
        headers = [
            (name.lower(), value) for name, values in request.requestHeaders.getAllRawHeaders() for value in values
        ]
        future = asyncio.ensure_future(bodyguard.credentials_refusal(rule, headers))
        checked: Any = defer.Deferred.fromFuture(future)
        checked.addCallback(decided, self, request, held, path)
        checked.addErrback(check_failed, self, request, path)

    def decided(refusal: Any, channel: Any, request: Any, held: list[bytes], path: str) -> None:
        if channel.transport is None or getattr(request, "_disconnected", False):
            return
        if refusal is not None:
            refuse(channel, refusal, channel._command, path)
            return
        request._nerveshub_checked = True
        del channel.rawDataReceived
        original_headers(channel)
        for data in held:
            channel.rawDataReceived(data)
        channel._networkProducer.resumeProducing()

    def check_failed(failure: Any, channel: Any, request: Any, path: str) -> None:
        logger.error("checking credentials before a request body failed: %s", failure.getTraceback())
        if channel.transport is not None and not getattr(request, "_disconnected", False):
            refuse(
                channel, bodyguard.Refusal(503, "the hub cannot check credentials now; try again", False), b"?", path
            )

    def handle_content_chunk(self: Any, data: bytes) -> None:
        rule = getattr(self, "_nerveshub_rule", None)
        if rule is not None:
            self._nerveshub_seen += len(data)
            if self._nerveshub_seen > rule.limit:
                if not getattr(self, "_nerveshub_refused", False):
                    self._nerveshub_refused = True
                    refuse(self.channel, bodyguard.too_large(rule), self.channel._command, "(a chunked body)")
                return
        original_chunk(self, data)

    def create_application(self: Any, protocol: Any, scope: dict[str, Any]) -> Any:
        if getattr(protocol, "_nerveshub_checked", False):
            scope = {**scope, "extensions": {**scope.get("extensions", {}), bodyguard.CHECKED: {}}}
        return original_create(self, protocol, scope)

    HTTPChannel.connectionMade = connection_made
    HTTPChannel.allHeadersReceived = all_headers_received
    HTTPChannel.requestDone = request_done
    HTTPChannel.connectionLost = connection_lost
    WebRequest.handleContentChunk = handle_content_chunk
    Server.create_application = create_application
    _installed = True


def _reactor() -> Any:
    # Imported when used: importing twisted.internet.reactor at module level
    # would install the default reactor before daphne installs its asyncio one.
    from twisted.internet import reactor

    return reactor


def refuse(channel: Any, refusal: Any, method: bytes | str, path: str) -> None:
    """Answer now, then discard what the client still sends, briefly."""
    reactor = _reactor()
    transport = channel.transport
    if transport is None:
        return
    if isinstance(method, bytes):
        method = method.decode("latin-1")
    logger.info("request refused before its body: %s %s %s", refusal.status, method, path)
    drained = 0

    def discard(data: bytes) -> None:
        nonlocal drained
        drained += len(data)
        if drained > LINGER_BYTES:
            transport.abortConnection()

    # Nothing more reaches the request: not the rest of the body, not the end
    # of it (which would start the application).
    channel.dataReceived = discard
    channel.rawDataReceived = discard
    channel.allContentReceived = lambda: None
    transport.write(refusal.http_bytes())
    if hasattr(transport, "loseWriteConnection"):
        transport.loseWriteConnection()
    else:
        transport.loseConnection()
    channel._networkProducer.resumeProducing()
    reactor.callLater(LINGER_SECONDS, abort, channel)


def abort(channel: Any) -> None:
    transport = channel.transport
    if transport is not None and not getattr(transport, "disconnected", False):
        transport.abortConnection()
