"""A real HTTP receiver on 127.0.0.1 that checks signatures as docs/webhooks.md
tells receivers to, can fail its first N requests, and records what it got."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import ip_network
from typing import Any, Protocol

import pytest

from nerveshub.tenancy.models import Organization
from tests.conftest import Tenant
from webhooks import services
from webhooks.models import WebhookEndpoint

REPLAY_WINDOW = 300


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    verified: bool
    answered: int

    @property
    def payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = json.loads(self.body)
        return payload


@dataclass
class Receiver:
    port: int = 0
    secret: str = ""
    fail_first: int = 0
    # An answer of the receiver's choosing (an internal service's error page, a
    # redirect): (status, body, extra headers) instead of the usual one.
    answer: tuple[int, bytes, dict[str, str]] | None = None
    delay: float = 0.0  # seconds each request takes (a slow receiver)
    in_flight: int = 0
    max_in_flight: int = 0
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/nerveshub"

    @property
    def accepted(self) -> list[Received]:
        return [r for r in self.received if r.answered == 204]

    def verify(self, headers: dict[str, str], body: bytes) -> bool:
        """What a receiver does: fresh timestamp, then a constant-time compare."""
        timestamp = headers.get("x-nerveshub-timestamp", "")
        signature = headers.get("x-nerveshub-signature", "")
        if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > REPLAY_WINDOW:
            return False
        expected = hmac.new(self.secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(signature, "v1=" + expected)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while len(self.accepted) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"receiver accepted {len(self.accepted)} of {count} deliveries in {timeout} s")
            time.sleep(0.05)
        return self.accepted


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with receiver.lock:
                receiver.in_flight += 1
                receiver.max_in_flight = max(receiver.max_in_flight, receiver.in_flight)
            time.sleep(receiver.delay)
            with receiver.lock:
                receiver.in_flight -= 1
            # Header names are case-insensitive: keep them lower-cased.
            headers = {name.lower(): value for name, value in self.headers.items()}
            with receiver.lock:
                verified = receiver.verify(headers, body)
                failing = len(receiver.received) < receiver.fail_first
                answer = 503 if failing else (204 if verified else 401)
                chosen = receiver.answer
                if chosen is not None:
                    answer = chosen[0]
                receiver.received.append(Received(self.path, headers, body, verified, answer))
            status, content, extra = chosen or (answer, b"", {})
            self.send_response(status)
            for name, value in extra.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture(autouse=True)
def local_receivers_allowed(settings: Any) -> None:
    """The test receivers listen on 127.0.0.1, which webhooks may reach only
    when the operator allows it (WEBHOOK_ALLOWED_NETWORKS); the attacker's
    tests take the allowance away again."""
    settings.WEBHOOK_ALLOWED_NETWORKS = [ip_network("127.0.0.0/8")]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


class Subscribe(Protocol):
    """The `subscribe` fixture."""

    def __call__(self, *event_types: str, org: Organization | None = None) -> WebhookEndpoint: ...


@pytest.fixture
def subscribe(tenant: Tenant, receiver: Receiver) -> Subscribe:
    """Register the receiver as an endpoint of the tenant's org (or another org)."""

    def make(*event_types: str, org: Organization | None = None) -> WebhookEndpoint:
        created = services.create_endpoint("test", org or tenant.org, receiver.url, list(event_types))
        receiver.secret = created.secret
        return created.endpoint

    return make


# The rollout fixtures (a valid target firmware and an active deployment).
from tests.deployments.conftest import deployment, target  # noqa: E402, F401
from tests.devices.conftest import creds  # noqa: E402, F401
