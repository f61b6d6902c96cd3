"""The body guard as ASGI middleware in front of Django (the shape any ASGI
server other than daphne sees): refusals come before the application reads a
byte, and a chunked body is read only up to the limit."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from nerveshub.asgi import application
from nerveshub.tenancy import services as tenancy

pytestmark = pytest.mark.django_db(transaction=True)

MIB = 1024 * 1024


async def _call(path: str, headers: list[tuple[bytes, bytes]], chunks: int) -> tuple[list[dict[str, Any]], int]:
    """Run the real application; the body is `chunks` pieces of 64 KiB (more
    follow each). Returns the messages sent and the pieces read."""
    read = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal read
        if read >= chunks:
            # A client that sent its body and waits for the answer (Django
            # listens for a disconnect while its view runs).
            await asyncio.sleep(3600)
        read += 1
        return {"type": "http.request", "body": b"x" * 65536, "more_body": read < chunks}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1"), *headers],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 4000),
    }
    await application(scope, receive, send)
    return sent, read


async def test_a_declared_size_past_the_limit_is_refused_unread(settings: Any) -> None:
    settings.REQUEST_MAX_BODY_SIZE = MIB
    sent, read = await _call("/accounts/login/", [(b"content-length", str(300 * MIB).encode())], chunks=4800)
    assert sent[0]["status"] == 413
    assert read == 0


async def test_an_api_body_without_a_token_is_refused_unread(tenant: Any) -> None:
    path = f"/api/v1/orgs/{tenant.org.name}/products/{tenant.product.name}/firmwares"
    sent, read = await _call(path, [(b"content-length", str(100 * MIB).encode())], chunks=1600)
    assert sent[0]["status"] == 401
    assert b"missing or invalid API token" in sent[1]["body"]
    assert read == 0


async def test_a_chunked_body_is_read_only_up_to_the_limit(settings: Any) -> None:
    # given: no Content-Length, 100 MiB on offer
    settings.REQUEST_MAX_BODY_SIZE = MIB
    # when
    sent, read = await _call("/accounts/login/", [(b"transfer-encoding", b"chunked")], chunks=1600)
    # then: 413 after reading just past 1 MiB
    assert sent[0]["status"] == 413
    assert read == MIB // 65536 + 1


async def test_a_valid_token_passes_to_the_api(tenant: Any) -> None:
    from asgiref.sync import sync_to_async

    token = (await sync_to_async(tenancy.create_api_token)(tenant.admin, tenant.admin, "ci")).clear
    sent, _read = await _call(
        "/api/v1/orgs/acme/keys",
        [
            (b"content-length", b"65536"),
            (b"authorization", f"token {token}".encode()),
            (b"content-type", b"application/json"),
        ],
        chunks=1,
    )
    # the API itself answers (the body is not JSON)
    assert sent[0]["status"] in (400, 422)
