"""Teach daphne the ASGI "websocket.http.response" extension.

Daphne 4.2 can only refuse a websocket upgrade with a bare 403. A device that
fails authentication must get 401 (or 503 when the database is down) with a
Date header (nerves_hub_link ≥ 2.13 corrects its clock from it) and the
nh-connection-error-reason header (server-behaviour.md §1.5). The ASGI spec has
an extension for exactly this; this module adds it to daphne's websocket
protocol and announces it in the scope. Installed by nerveshub.serve, before
daphne starts.

It also lets the application close with the RFC 6455 status codes 1008 (policy
violation: a malformed frame) and 1009 (message too big). Autobahn's sendClose
accepts only 1000 and 3000-4999 from an application, so daphne turned those
closes into an exception inside the application and a 1011.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

_installed = False

# Codes RFC 6455 §7.4.1 lets an endpoint send, which autobahn's sendClose refuses.
PROTOCOL_CLOSE_CODES = frozenset({1001, 1008, 1009, 1011})


def install() -> None:
    global _installed
    if _installed:
        return
    from daphne.server import Server
    from daphne.ws_protocol import WebSocketProtocol

    original_reply = WebSocketProtocol.handle_reply
    original_close = WebSocketProtocol.serverClose
    original_create = Server.create_application

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
        original_reply(self, message)

    def create_application(self: Any, protocol: Any, scope: dict[str, Any]) -> Any:
        if scope.get("type") == "websocket":
            scope = {**scope, "extensions": {**scope.get("extensions", {}), "websocket.http.response": {}}}
        return original_create(self, protocol, scope)

    def server_close(self: Any, code: int | None = None) -> None:
        if code in PROTOCOL_CLOSE_CODES:
            # sendCloseFrame is what sendClose calls after its check; it ignores
            # a close on a socket that is already closing or closed.
            self.sendCloseFrame(code=code, isReply=False)
            return
        original_close(self, code)

    WebSocketProtocol.handle_reply = handle_reply
    WebSocketProtocol.serverClose = server_close
    Server.create_application = create_application
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
