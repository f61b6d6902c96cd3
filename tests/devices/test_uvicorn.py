"""The hub under uvicorn (`python -m nerveshub.serve --server uvicorn`): a
device session from connect to a pushed command, a refused upgrade's 401 with
its reason, a body refused on its headers, and a header block past daphne's limit."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import urllib.request
from email.utils import parsedate_to_datetime
from typing import Any

import websockets
from websockets.asyncio.client import connect

from devicelink.auth import REASON_INVALID
from devices.models import ConnectionStatus, Device
from nerveshub.tenancy import services as tenancy
from tests.devices.conftest import Credentials, run, wait_until
from tests.support.hub import HubLauncher, HubProcess
from tests.support.nhl_client import nh1_headers

UVICORN = {"HUB_SERVER": "uvicorn"}


def _uvicorn_hub(live_hub: HubLauncher, extra: dict[str, str] | None = None) -> HubProcess:
    hub = live_hub({**UVICORN, **(extra or {})})
    # uvicorn's start line: the hub really is served by uvicorn, not daphne.
    wait_until(lambda: "Uvicorn running on" in hub.log())
    return hub


def test_a_device_connects_joins_heartbeats_and_gets_a_command(live_hub: HubLauncher, creds: Credentials) -> None:
    # given
    hub = _uvicorn_hub(live_hub)
    device = creds.device(hub.ws_url, "dev-uvicorn")
    token = tenancy.create_api_token(creds.tenant.admin, creds.tenant.admin, "ci").clear
    org, product = creds.tenant.org.name, creds.tenant.product.name

    def reboot() -> int:
        # Through the hub's API: the hub process holding the socket pushes it,
        # with or without a channel layer shared with this test process.
        request = urllib.request.Request(
            f"{hub.http_url}/api/v1/orgs/{org}/products/{product}/devices/dev-uvicorn/reboot",
            method="POST",
            headers={"Authorization": f"token {token}"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)

    async def scenario() -> tuple[list[Any], list[Any], int, list[Any]]:
        # when
        reply = await device.connect()
        heartbeat = await device.heartbeat()
        status = await asyncio.to_thread(reboot)
        command = await device.next_event("reboot")
        await device.close()
        return reply, heartbeat, status, command

    reply, heartbeat, status, command = run(scenario())
    # then
    assert reply == ["1", "1", "device", "phx_reply", {"status": "ok", "response": {}}]
    assert heartbeat[2] == "phoenix" and heartbeat[4]["status"] == "ok"
    assert status == 202
    assert command == [None, None, "device", "reboot", {}]
    device.assert_no_violations()
    wait_until(lambda: Device.objects.get(identifier="dev-uvicorn").connection_status == ConnectionStatus.DISCONNECTED)
    assert "Traceback" not in hub.log()


def test_a_wrong_secret_gets_401_with_its_reason(live_hub: HubLauncher, creds: Credentials) -> None:
    # given
    hub = _uvicorn_hub(live_hub)
    headers = nh1_headers(creds.product_key, "not-the-secret", "dev-wrong", int(time.time()))

    async def upgrade() -> tuple[int, dict[str, str]]:
        try:
            ws = await connect(
                f"{hub.ws_url}/device-socket/websocket?vsn=2.0.0", additional_headers=headers, open_timeout=10
            )
        except websockets.InvalidStatus as exc:
            return exc.response.status_code, {k.lower(): v for k, v in exc.response.headers.raw_items()}
        await ws.close()
        return 101, {}

    # when
    status, answer = run(upgrade())
    # then: the status, the reason and a Date the device can set its clock from
    assert status == 401
    assert answer["nh-connection-error-reason"] == REASON_INVALID
    assert abs(parsedate_to_datetime(answer["date"]).timestamp() - time.time()) < 30
    assert not Device.objects.filter(identifier="dev-wrong").exists()


def test_an_oversized_upload_gets_413_before_its_body(live_hub: HubLauncher, creds: Credentials) -> None:
    # given
    hub = _uvicorn_hub(live_hub)
    tenant = creds.tenant
    path = f"/api/v1/orgs/{tenant.org.name}/products/{tenant.product.name}/firmwares"
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{hub.port}\r\n"
        f"Content-Type: multipart/form-data; boundary=xyz\r\nContent-Length: {300 * 1024 * 1024}\r\n\r\n"
    )
    # when: only the headers of a 300 MiB upload are sent
    with socket.create_connection(("127.0.0.1", hub.port), timeout=10) as conn:
        conn.sendall(head.encode())
        chunks = []
        while data := conn.recv(65536):
            chunks.append(data)
    answer = b"".join(chunks)
    # then: the refusal comes without the body, and the connection is closed
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:300]
    assert b"connection: close" in answer.lower()
    assert "larger than" in json.loads(answer.split(b"\r\n\r\n", 1)[1])["errors"]["detail"]
    assert hub.process.poll() is None


def test_an_oversized_header_block_gets_400(live_hub: HubLauncher) -> None:
    # given: httptools sets no limit of its own; the hub's protocol keeps daphne's
    hub = _uvicorn_hub(live_hub)
    filler = "".join(f"X-Filler-{i}: {'a' * 1000}\r\n" for i in range(100))
    request = f"GET /status/alive HTTP/1.1\r\nHost: 127.0.0.1:{hub.port}\r\n{filler}\r\n".encode()
    # when
    with socket.create_connection(("127.0.0.1", hub.port), timeout=10) as conn:
        try:
            conn.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before it read everything: the answer may still be there
        answer = conn.recv(65536)
    # then
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:300]
    assert hub.process.poll() is None
