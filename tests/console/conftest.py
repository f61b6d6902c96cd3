"""Console test parts: a device whose remote IEx echoes like a terminal, and an
operator's browser socket logged in with a real session cookie."""

from __future__ import annotations

import asyncio
import base64
import http.cookiejar
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
from django.contrib.auth.models import User
from django.db import connections
from django.test import Client
from websockets.asyncio.client import ClientConnection, connect

from tests.devices.conftest import Credentials, creds  # noqa: F401 (fixture re-export)
from tests.support.nhl_client import NHLDevice

PROMPT = "iex(1)> "
T = TypeVar("T")


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


async def in_thread(function: Callable[..., T], *args: Any) -> T:
    """Run ORM work off the event loop, giving the thread's database connection
    back: with PostgreSQL's pool, each short-lived thread would keep one."""

    def call() -> T:
        try:
            return function(*args)
        finally:
            connections.close_all()

    return await asyncio.to_thread(call)


async def open_console(
    base_ws_url: str, device_id: int, user: User | None, origin: str | None = None, cookie: str | None = None
) -> Operator:
    """Raises websockets' InvalidStatus when the handshake is refused. `cookie`:
    a session cookie to reuse (session_cookie), instead of a new session."""
    port = base_ws_url.rsplit(":", 1)[1]
    headers = []
    if user is not None and cookie is None:
        cookie = await in_thread(session_cookie, user)
    if cookie is not None:
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


# A CSRF secret of the unmasked form Django accepts both as the cookie and as
# the form field: pages can be posted to without reading a form first.
CSRF = "a" * 32


class HubBrowser:
    """A browser on the pages of a live hub process: its cookies (the session
    `cookie` given, and whatever the hub sets) kept across requests."""

    def __init__(self, hub: Any, cookie: str | None = None) -> None:
        self.hub = hub
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))
        for name, value in (("sessionid", cookie), ("csrftoken", CSRF)):
            if value is not None:
                self.jar.set_cookie(_cookie(name, value))

    def request(self, path: str, data: dict[str, str] | None = None) -> tuple[int, str, str]:
        """GET `path` (or POST `data`), redirects followed: (status, body, final path)."""
        body = None
        if data is not None:
            body = urllib.parse.urlencode({**data, "csrfmiddlewaretoken": CSRF}).encode()
        url = path if path.startswith("http") else self.hub.http_url + path
        request = urllib.request.Request(url, data=body, headers={"Origin": self.hub.http_url})
        try:
            with self.opener.open(request, timeout=30) as response:
                return response.status, response.read().decode(), response.url.removeprefix(self.hub.http_url)
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace"), url


def hub_request(
    hub: Any, path: str, cookie: str | None = None, data: dict[str, str] | None = None
) -> tuple[int, str, str]:
    return HubBrowser(hub, cookie).request(path, data)


def _cookie(name: str, value: str) -> http.cookiejar.Cookie:
    return http.cookiejar.Cookie(
        0, name, value, None, False, "127.0.0.1", False, False, "/", True, False, None, False, None, None, {}
    )
