"""Console test parts: a device whose remote IEx echoes like a terminal, and an
operator's browser socket logged in with a real session cookie."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from websockets.asyncio.client import ClientConnection, connect

from tests.devices.conftest import Credentials, creds  # noqa: F401 (fixture re-export)
from tests.support.nhl_client import NHLDevice

PROMPT = "iex(1)> "


@dataclass
class FakeIEx:
    """The device end of the console topic, as nerves_hub_link's ExTTY behaves:
    keystrokes are echoed as `up`, Enter evaluates the line (here: prints it
    back), `window_size` is recorded, uploads are written into `files`."""

    device: NHLDevice
    pushed: list[list[Any]] = field(default_factory=list)  # every console push received
    sizes: list[dict[str, Any]] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)
    finished: set[str] = field(default_factory=set)
    uploaded_by: dict[str, str] = field(default_factory=dict)
    line: str = ""
    task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    async def up(self, data: str) -> None:
        await self.device.push("console", "up", {"data": data})

    async def _run(self) -> None:
        while True:
            message = await self.device.events.get()
            if message[2] != "console":
                continue
            self.pushed.append(message)
            event, payload = message[3], message[4]
            if event == "dn":
                await self._typed(payload["data"])
            elif event == "window_size":
                self.sizes.append(payload)
            elif event == "restart":
                await self.up("\r*** Restarting IEx ***\r")
            elif event == "file-data/start":
                self.files[payload["filename"]] = b""
                self.uploaded_by[payload["filename"]] = payload.get("uploaded_by", "")
            elif event == "file-data":
                self.files[payload["filename"]] += base64.b64decode(payload["data"])
            elif event == "file-data/stop":
                self.finished.add(payload["filename"])

    async def _typed(self, data: str) -> None:
        for char in data:
            if char == "\r":
                line, self.line = self.line, ""
                await self.up(f"\r\n{json.dumps(line)}\r\n{PROMPT}")
            else:
                self.line += char
                await self.up(char)


async def eventually(check: Any, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.02)


@dataclass
class Operator:
    """A browser's console socket. `next` returns messages of one kind in
    order and keeps the others for later calls."""

    ws: ClientConnection
    received: list[dict[str, Any]] = field(default_factory=list)
    pending: list[dict[str, Any]] = field(default_factory=list)
    output: str = ""

    async def send(self, event: str, payload: dict[str, Any]) -> None:
        await self.ws.send(json.dumps({"event": event, "payload": payload}))

    async def next(self, event: str, timeout: float = 10.0, **match: Any) -> dict[str, Any]:
        """The next message of `event` (whose payload has the `match` items)."""

        def matches(message: dict[str, Any]) -> bool:
            payload = message["payload"]
            return message["event"] == event and all(payload.get(k) == v for k, v in match.items())

        for index, message in enumerate(self.pending):
            if matches(message):
                del self.pending[index]
                return dict(message["payload"])
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            message = json.loads(await asyncio.wait_for(self.ws.recv(), max(0.01, remaining)))
            self.received.append(message)
            if matches(message):
                return dict(message["payload"])
            self.pending.append(message)

    async def output_until(self, text: str, timeout: float = 10.0) -> str:
        """All terminal output received so far, once it contains `text`."""
        deadline = asyncio.get_running_loop().time() + timeout
        while text not in self.output:
            remaining = deadline - asyncio.get_running_loop().time()
            self.output += (await self.next("up", timeout=max(0.01, remaining)))["data"]
        return self.output


def session_cookie(user: User) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


async def open_console(base_ws_url: str, device_id: int, user: User | None, origin: str | None = None) -> Operator:
    """Raises websockets' InvalidStatus when the handshake is refused."""
    port = base_ws_url.rsplit(":", 1)[1]
    headers = []
    if user is not None:
        cookie = await asyncio.to_thread(session_cookie, user)
        headers.append(("Cookie", f"sessionid={cookie}"))
    ws = await connect(
        f"{base_ws_url}/console/{device_id}/socket",
        additional_headers=headers,
        origin=origin or f"http://127.0.0.1:{port}",  # type: ignore[arg-type]
        open_timeout=10,
    )
    return Operator(ws)


# The `iex_device` fixture: (url, identifier, **device options) -> a device and its IEx.
IExDevice = Callable[..., tuple[NHLDevice, FakeIEx]]


@pytest.fixture
def iex_device(creds: Credentials) -> IExDevice:  # noqa: F811
    def make(url: str, identifier: str = "dev-console", **kwargs: Any) -> tuple[NHLDevice, FakeIEx]:
        device = creds.device(url, identifier, remote_iex=True, **kwargs)
        return device, FakeIEx(device)

    return make
