"""Teach daphne the ASGI "websocket.http.response" extension.

Daphne 4.2 can only refuse a websocket upgrade with a bare 403. A device that
fails authentication must get 401 (or 503 when the database is down) with a
Date header (nerves_hub_link ≥ 2.13 corrects its clock from it) and the
nh-connection-error-reason header (docs/device-protocol.md §1.6). The ASGI spec has
an extension for exactly this; this module adds it to daphne's websocket
protocol and announces it in the scope. Installed by nerveshub.serve, before
daphne starts.

It also lets the application close with the RFC 6455 status codes 1008 (policy
violation: a malformed frame) and 1009 (message too big). Autobahn's sendClose
accepts only 1000 and 3000-4999 from an application, so daphne turned those
closes into an exception inside the application and a 1011.

And it lets go of the HTTP request a websocket was upgraded from (see `process`).

A frame sent after the peer has gone is dropped: a device that closes right
after its join leaves replies and pushes in flight, and autobahn raised
"Attempt to send on a closed protocol" inside the application for each of them,
an error-level traceback for an ordinary disconnect. The consumer learns of the
close from its `websocket.disconnect` message, as ASGI intends.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

_installed = False

# How long a close we start waits for the peer's closing frame.
CLOSE_HANDSHAKE_SECONDS = 10

# Codes RFC 6455 §7.4.1 lets an endpoint send, which autobahn's sendClose refuses.
PROTOCOL_CLOSE_CODES = frozenset({1001, 1008, 1009, 1011})


def install() -> None:
    global _installed
    if _installed:
        return
    # Imported when serving: daphne's import installs its reactor (see
    # nerveshub/serve.py), which a module-level import here would do early.
    from daphne.http_protocol import WebRequest
    from daphne.server import Server
    from daphne.ws_protocol import WebSocketProtocol

    original_reply = WebSocketProtocol.handle_reply
    original_close = WebSocketProtocol.serverClose
    original_create = Server.create_application
    original_process = WebRequest.process

    def handle_reply(self: Any, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "websocket.http.response.start" and self.state == self.STATE_CONNECTING:
            self._denial = (int(message["status"]), list(message.get("headers", [])), [])
            return
        if kind == "websocket.http.response.body" and getattr(self, "_denial", None) is not None:
            status, headers, body = self._denial
            body.append(bytes(message.get("body", b"")))
            if message.get("more_body"):
                return
            self._denial = None
            _send_denial(self, status, headers, b"".join(body))
            return
        if kind == "websocket.send" and self.state in (self.STATE_CLOSING, self.STATE_CLOSED):
            return
        original_reply(self, message)

    def create_application(self: Any, protocol: Any, scope: dict[str, Any]) -> Any:
        if scope.get("type") == "websocket":
            scope = {**scope, "extensions": {**scope.get("extensions", {}), "websocket.http.response": {}}}
        return original_create(self, protocol, scope)

    def server_close(self: Any, code: int | None = None) -> None:
        # Autobahn waits 1 s for the peer's closing frame and then resets the
        # connection; a device on a slow link (or a busy peer) that had not read
        # our close frame by then loses it with the reset and sees 1006.
        self.closeHandshakeTimeout = CLOSE_HANDSHAKE_SECONDS
        if code in PROTOCOL_CLOSE_CODES:
            # sendCloseFrame is what sendClose calls after its check; it ignores
            # a close on a socket that is already closing or closed.
            self.sendCloseFrame(code=code, isReply=False)
            return
        original_close(self, code)

    def process(self: Any) -> None:
        original_process(self)
        network = getattr(self.channel, "_networkProducer", None)
        if self.transport is None and network is not None and network.producer is not None:
            # The request was upgraded: its connection now belongs to the
            # websocket protocol, but the HTTP channel stays registered as the
            # connection's producer, and with it the request, its headers and
            # buffers, for the websocket's whole life (about 4 KiB per device).
            # The channel has no further use for the connection.
            network.unregisterProducer()

    WebSocketProtocol.handle_reply = handle_reply
    WebSocketProtocol.serverClose = server_close
    Server.create_application = create_application
    WebRequest.process = process
    _installed = True


def _send_denial(protocol: Any, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    lines = [f"HTTP/1.1 {status} {phrase}".encode()]
    lines += [name + b": " + value for name, value in headers]
    if not any(name.lower() == b"content-length" for name, _ in headers):
        lines.append(b"content-length: " + str(len(body)).encode())
    lines.append(b"connection: close")
    # The handshake never completes: drop daphne's pending deferred and tell the
    # server the connection is gone, as its own serverReject does.
    if hasattr(protocol, "handshake_deferred"):
        del protocol.handshake_deferred
    protocol.server.protocol_disconnected(protocol)
    protocol.sendData(b"\r\n".join(lines) + b"\r\n\r\n" + body)
    protocol.dropConnection(abort=False)
