"""Oversized requests against a real hub process (daphne): a header block or a
body past the limits is refused with a 4xx, the process stays up, and the next
request is served."""

from __future__ import annotations

import json
import socket

import pytest

from devices.models import Device
from nerveshub.tenancy import services as tenancy
from tests.conftest import Tenant
from tests.support.hub import HubLauncher

pytestmark = pytest.mark.django_db(transaction=True)


def _exchange(port: int, request: bytes) -> bytes:
    """Send raw bytes, return what came back before the hub closed (or 5 s)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        try:
            conn.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before it read everything: the answer may still be there
        chunks = []
        try:
            while data := conn.recv(65536):
                chunks.append(data)
        except (TimeoutError, ConnectionResetError):
            pass
    return b"".join(chunks)


def _status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/1.1 ") else 0


def _alive(port: int) -> int:
    return _status(
        _exchange(port, f"GET /status/health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
    )


@pytest.mark.parametrize("path", ["/api/v1/users/me", "/device-socket/websocket?vsn=2.0.0"])
def test_an_oversized_header_block_is_refused(live_hub: HubLauncher, path: str) -> None:
    # given: the same request without credentials, with a little and with 100 KB
    # of extra headers
    hub = live_hub()
    upgrade = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
    upgrade += "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"

    def request(fillers: int) -> bytes:
        filler = "".join(f"X-Filler-{i}: {'a' * 1000}\r\n" for i in range(fillers))
        extra = upgrade if "socket" in path else "Connection: close\r\n"
        return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{hub.port}\r\n{extra}{filler}\r\n".encode()

    # when
    small, big = _exchange(hub.port, request(2)), _exchange(hub.port, request(100))
    # then: the small one reaches the application, which refuses the missing
    # credentials; the big one is refused by the server before it, and the hub
    # goes on
    assert _status(small) in (401, 403), small[:200]
    assert _status(big) == 400, big[:200]
    assert _alive(hub.port) == 200
    assert hub.process.poll() is None


def test_an_oversized_api_body_gets_a_json_413_and_changes_nothing(live_hub: HubLauncher, tenant: Tenant) -> None:
    # given
    hub = live_hub()
    token = tenancy.create_api_token(tenant.admin, tenant.admin, "ci").clear
    body = json.dumps({"identifier": "too-big", "description": "x" * 3_000_000}).encode()
    head = (
        f"POST /api/v1/orgs/{tenant.org.name}/products/{tenant.product.name}/devices HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{hub.port}\r\nAuthorization: token {token}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    # when
    response = _exchange(hub.port, head.encode() + body)
    # then
    assert _status(response) == 413, response[:300]
    answer = json.loads(response.split(b"\r\n\r\n", 1)[1])
    assert "larger than" in answer["errors"]["detail"]
    assert not Device.objects.filter(identifier="too-big").exists()
    assert _alive(hub.port) == 200
