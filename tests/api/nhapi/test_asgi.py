"""What NervesHub's tools send over a real connection, through the real ASGI
application with its body guard: the firmware upload streamed with chunked
transfer encoding (no Content-Length), and sign-in, which has no token yet."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings

from firmware import services as firmware
from firmware.models import Firmware, FirmwareStatus
from nerveshub.asgi import application
from nerveshub.lib import bodyguard
from nerveshub.tenancy import services as tenancy
from tests.conftest import Tenant
from tests.support.fwup import FirmwareSpec, build_firmware, generate_keypair

pytestmark = pytest.mark.django_db(transaction=True)

BOUNDARY = "----tesla-multipart-7f3a"


async def _call(
    method: str, path: str, headers: list[tuple[bytes, bytes]], body: bytes
) -> tuple[int, bytes, dict[bytes, bytes]]:
    pieces = [body[i : i + 4096] for i in range(0, len(body), 4096)] or [b""]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if pieces:
            piece = pieces.pop(0)
            return {"type": "http.request", "body": piece, "more_body": bool(pieces)}
        # A client that sent its body and waits for the answer (Django
        # listens for a disconnect while its view runs).
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
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
    start = sent[0]
    answered = {bytes(k).lower(): bytes(v) for k, v in start["headers"]}
    return start["status"], b"".join(m.get("body", b"") for m in sent[1:]), answered


def _multipart(firmware: bytes, ttl: str) -> bytes:
    # The shape Tesla.Multipart writes: the file part, then each field.
    return b"".join(
        [
            f"--{BOUNDARY}\r\n".encode(),
            b'content-type: application/octet-stream\r\ncontent-disposition: form-data; name="firmware"; '
            b'filename="widget.fw"\r\n\r\n',
            firmware,
            f"\r\n--{BOUNDARY}\r\n".encode(),
            b'content-disposition: form-data; name="ttl"\r\n\r\n',
            ttl.encode(),
            f"\r\n--{BOUNDARY}--\r\n".encode(),
        ]
    )


async def test_a_chunked_multipart_upload_publishes_the_firmware(tenant: Tenant) -> None:
    # given
    keys = generate_keypair()
    token = (await sync_to_async(tenancy.create_api_token)("test", tenant.manager, "ci")).clear
    await sync_to_async(firmware.create_signing_key)("test", tenant.org, "release", keys.public)
    body = _multipart(build_firmware(FirmwareSpec(version="3.1.4", key=keys)), "86400")
    # when: no Content-Length, the body in 4 KiB pieces
    status, answer, headers = await _call(
        "POST",
        "/api/orgs/acme/products/widget/firmwares",
        [
            (b"authorization", f"token {token}".encode()),
            (b"content-type", f"multipart/form-data; boundary={BOUNDARY}".encode()),
            (b"transfer-encoding", b"chunked"),
        ],
        body,
    )
    # then
    assert status == 201, answer
    data = json.loads(answer)["data"]
    assert data["version"] == "3.1.4"
    assert headers[b"location"] == f"/api/orgs/acme/products/widget/firmwares/{data['uuid']}".encode()
    stored = await sync_to_async(Firmware.objects.get)(uuid=data["uuid"])
    assert stored.status == FirmwareStatus.VALID


async def test_sign_in_needs_no_token_but_other_bodies_do(tenant: Tenant) -> None:
    body = json.dumps({"email": "alice", "password": "pw-alice", "note": "laptop"}).encode()
    json_body = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    signed_in = await _call("POST", "/api/users/login", json_body, body)
    refused = await _call("POST", "/api/orgs/acme/products", json_body, body)
    assert signed_in[0] == 200, signed_in[1]
    assert json.loads(signed_in[1])["data"]["token"].startswith("nhu_")
    assert refused[0] == 401 and b"missing or invalid API token" in refused[1]


def test_the_upload_route_has_the_firmware_limit() -> None:
    rule = bodyguard.rule_for("/api/orgs/acme/products/widget/firmwares")
    assert rule.limit == settings.FIRMWARE_MAX_SIZE + bodyguard.MULTIPART_ENVELOPE
    assert rule.credentials == bodyguard.TOKEN
    assert bodyguard.rule_for("/api/orgs/acme/products").limit == settings.REQUEST_MAX_BODY_SIZE
    assert bodyguard.rule_for("/api/users/login").credentials is None
