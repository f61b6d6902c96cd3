"""A device that behaves like nerves_hub_link (docs/device-protocol.md), in Python.

Independent of the server code on purpose: the NH1 signer below is written from
docs/device-protocol.md §2, not imported from devicelink.nh1, so a bug shared by both sides
cannot hide.

What it reproduces: the upgrade request's header order (Mint lower-case names,
x-nh-* last, in alg/key/time/signature order), refs as decimal strings from "1"
shared by all topics, join `device` then `console` (remote_iex), push
`report_network_interface` right after the device join reply, heartbeats
`[null, ref, "phoenix", "heartbeat", {}]`, the extensions handshake, and the
backoff list. Any `phx_reply` to one of its pushes (other than detach) is a
protocol violation that crashes the real client: it is recorded and
`assert_no_violations()` fails the test.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import random
import struct
import time
from dataclasses import dataclass, field
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection, connect

BACKOFF_MS = [1000, 2000, 4000, 8000, 16000, 32000, 60000]

DEFAULT_FW = {
    "nerves_fw_application_part0_devpath": "/dev/mmcblk0p3",
    "nerves_fw_application_part0_fstype": "f2fs",
    "nerves_fw_application_part0_target": "/root",
    "nerves_fw_architecture": "aarch64",
    "nerves_fw_author": "The Nerves Team",
    "nerves_fw_description": "",
    "nerves_fw_misc": "",
    "nerves_fw_platform": "rpi4",
    "nerves_fw_product": "my_app",
    "nerves_fw_uuid": "d9492bdb-94de-5288-425e-2de6928ef99c",
    "nerves_fw_vcs_identifier": "",
    "nerves_fw_version": "0.1.0",
}


def _b64url(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def _etf_int(n: int) -> bytes:
    if 0 <= n <= 255:
        return bytes([97, n])
    if -(2**31) <= n < 2**31:
        return b"\x62" + struct.pack(">i", n)
    mag = abs(n)
    digits = mag.to_bytes((mag.bit_length() + 7) // 8, "little")
    return bytes([110, len(digits), 1 if n < 0 else 0]) + digits


def nh1_headers(
    key: str,
    secret: str,
    identifier: str,
    signed_at: int,
    digest: str = "sha256",
    iterations: int = 1000,
    length: int = 32,
    alg: str | None = None,
) -> list[tuple[str, str]]:
    alg = alg or f"NH1-HMAC-{digest}-{iterations}-{length}"
    salt = f"NH1:device-socket:shared-secret:connect\n\nx-nh-alg={alg}\nx-nh-key={key}\nx-nh-time={signed_at}\n"
    derived = hashlib.pbkdf2_hmac(digest, secret.encode(), salt.encode(), iterations, length)
    ident = identifier.encode()
    payload = b"\x83\x68\x03\x6d" + struct.pack(">I", len(ident)) + ident + _etf_int(signed_at * 1000) + _etf_int(86400)
    signing_input = "SFMyNTY." + _b64url(payload)
    mac = hmac.new(derived, signing_input.encode(), hashlib.sha256).digest()
    return [
        ("x-nh-alg", alg),
        ("x-nh-key", key),
        ("x-nh-time", str(signed_at)),
        ("x-nh-signature", signing_input + "." + _b64url(mac)),
    ]


def backoff_delays(rng: random.Random | None = None) -> list[float]:
    """Seconds before attempts 1..n: the list with up to +50 % jitter (§1.6)."""
    rng = rng or random.Random()
    return [ms * (1 + rng.random() * 0.5) / 1000 for ms in BACKOFF_MS]


def encode(message: list[Any]) -> str:
    # Jason's output: no whitespace, sorted keys for small maps, raw UTF-8.
    return json.dumps(message, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


@dataclass
class NHLDevice:
    url: str  # ws://127.0.0.1:PORT
    identifier: str
    key: str
    secret: str
    firmware: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_FW))
    device_api_version: str = "2.3.0"
    console_version: str = "2.0.0"
    remote_iex: bool = False
    request_keys: bool = True
    currently_downloading_uuid: str | None = None
    firmware_validated: bool | None = True
    auto_reverted: bool = False  # the join's firmware_auto_revert_detected
    extensions: dict[str, str] = field(
        default_factory=lambda: {"geo": "0.0.1", "health": "0.0.1", "network_identity": "0.0.1"}
    )
    interface: str = "eth0"
    path: str = "/device-socket/websocket"
    signed_at: int | None = None
    rejoin_after: float = 5.0  # Slipstream's rejoin_after default (§1.7)
    rejoins: int = 0
    unsent: list[tuple[str, str]] = field(default_factory=list)  # pushes while the topic was not joined

    ws: ClientConnection | None = None
    ref: int = 0
    join_refs: dict[str, str] = field(default_factory=dict)
    pushes: set[str] = field(default_factory=set)  # refs of our pushes (no reply allowed)
    attach_refs: dict[str, str] = field(default_factory=dict)
    received: list[list[Any]] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    replies: dict[str, asyncio.Future[list[Any]]] = field(default_factory=dict)
    events: asyncio.Queue[list[Any]] = field(default_factory=asyncio.Queue)
    detached: list[str] = field(default_factory=list)
    _reader: asyncio.Task[None] | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    # --- connection -----------------------------------------------------------------

    def headers(self) -> list[tuple[str, str]]:
        signed_at = self.signed_at if self.signed_at is not None else int(time.time())
        return nh1_headers(self.key, self.secret, self.identifier, signed_at)

    def join_params(self) -> dict[str, Any]:
        params: dict[str, Any] = {
            **self.firmware,
            "fwup_version": "1.13.2",
            "device_api_version": self.device_api_version,
            "console_version": self.console_version,
            "currently_downloading_uuid": self.currently_downloading_uuid,
            "meta": {
                "firmware_auto_revert_detected": self.auto_reverted,
                "firmware_validated": self.firmware_validated,
            },
        }
        if self.firmware_validated is None:
            params["meta"] = {"firmware_auto_revert_detected": self.auto_reverted}
        if self.request_keys:
            params["fwup_public_keys"] = "on_connect"
            params["archive_public_keys"] = "on_connect"
        return params

    async def open(self, vsn: str = "2.0.0") -> None:
        """The upgrade alone (raises websockets' InvalidStatus on refusal)."""
        # Refs restart on every connection (§1.4), and so does everything keyed by them.
        self.ref = 0
        self.pushes, self.replies, self.join_refs, self.attach_refs = set(), {}, {}, {}
        self.ws = await connect(
            f"{self.url}{self.path}?vsn={vsn}",
            additional_headers=self.headers(),
            user_agent_header="mint/1.9.3",
            compression="deflate",
            ping_interval=None,
            max_size=None,
            open_timeout=10,
        )
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def connect(self, timeout: float = 10) -> list[Any]:
        """Upgrade, join device (and console), report the interface: a connect
        as handle_connect/1 does it. Returns the device join reply."""
        await self.open()
        device_reply = self.join("device", self.join_params())
        console_reply = (
            self.join(
                "console", {"console_version": self.console_version, "device_api_version": self.device_api_version}
            )
            if self.remote_iex
            else None
        )
        reply = await asyncio.wait_for(device_reply, timeout)
        if reply[4]["status"] == "ok":
            await self.push("device", "report_network_interface", {"interface": self.interface})
        if console_reply is not None:
            await asyncio.wait_for(console_reply, timeout)
        return reply

    def next_ref(self) -> str:
        self.ref += 1
        return str(self.ref)

    async def send(self, message: list[Any]) -> None:
        assert self.ws is not None
        await self.ws.send(encode(message))

    def join(self, topic: str, params: dict[str, Any]) -> asyncio.Future[list[Any]]:
        ref = self.next_ref()
        self.join_refs[topic] = ref
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self.replies[ref] = future
        self._tasks.append(asyncio.get_running_loop().create_task(self.send([ref, ref, topic, "phx_join", params])))
        return future

    async def push(self, topic: str, event: str, payload: dict[str, Any]) -> str:
        if topic not in self.join_refs:
            # Slipstream's push/4 answers {:error, :not_joined} and sends nothing.
            self.unsent.append((topic, event))
            return ""
        ref = self.next_ref()
        self.pushes.add(ref)
        await self.send([self.join_refs.get(topic), ref, topic, event, payload])
        return ref

    async def heartbeat(self, timeout: float = 5) -> list[Any]:
        ref = self.next_ref()
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self.replies[ref] = future
        await self.send([None, ref, "phoenix", "heartbeat", {}])
        reply = await asyncio.wait_for(future, timeout)
        assert reply == [None, ref, "phoenix", "phx_reply", {"status": "ok", "response": {}}], reply
        return reply

    async def _read(self) -> None:
        assert self.ws is not None
        try:
            async for raw in self.ws:
                message = json.loads(raw)
                self.received.append(message)
                await self._handle(message)
        except websockets.ConnectionClosed:
            pass

    async def _handle(self, message: list[Any]) -> None:
        _join_ref, ref, topic, event, payload = message[:5]
        if event == "phx_reply":
            if ref in self.pushes:
                if payload == {"status": "error", "response": "detach"} and ref in self.attach_refs.values():
                    name = next(n for n, r in self.attach_refs.items() if r == ref)
                    self.detached.append(name)
                else:
                    # NervesHubLink.Socket.handle_reply/3 has one clause: this
                    # reply would crash the device's socket process (§1.7).
                    self.violations.append(f"reply to push {ref}: {message}")
                return
            future = self.replies.pop(ref, None)
            if future is not None and not future.done():
                future.set_result(message)
            elif future is None:
                self.violations.append(f"reply to unknown ref: {message}")
            return
        if ref is not None and event not in ("phx_error", "phx_close"):
            # Slipstream drops server pushes that carry a ref (§1.7).
            self.violations.append(f"server push with a ref: {message}")
        if event == "phx_error" and ref != self.join_refs.get(topic):
            self.violations.append(f"phx_error whose ref is not the join ref: {message}")
        await self.events.put(message)
        if event == "phx_error" and topic in self.join_refs:
            # handle_topic_close → rejoin with the same params after rejoin_after.
            self.join_refs.pop(topic, None)
            self._tasks.append(asyncio.get_running_loop().create_task(self._rejoin(topic)))
        if topic == "device" and event == "extensions:get":
            # Not awaited here: the reader must keep reading to see the reply.
            self._tasks.append(asyncio.get_running_loop().create_task(self._join_extensions()))

    async def _rejoin(self, topic: str) -> None:
        while self.ws is not None:
            await asyncio.sleep(self.rejoin_after)
            params = self.join_params() if topic == "device" else {}
            try:
                reply = await asyncio.wait_for(self.join(topic, params), 10)
            except (TimeoutError, websockets.ConnectionClosed):
                return
            if reply[4].get("status") == "ok":
                self.rejoins += 1
                return

    async def _join_extensions(self) -> None:
        reply = await self.join("extensions", dict(self.extensions))
        response = reply[4]["response"]
        if reply[4]["status"] != "ok" or not isinstance(response, list):
            # A map here crashes v2.12.0 devices (§8.1).
            self.violations.append(f"extensions join reply is not a list: {reply}")
            return
        for name in response:
            self.attach_refs[name] = await self.push("extensions", f"{name}:attached", {})

    async def next_event(self, event: str, timeout: float = 5) -> list[Any]:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            message = await asyncio.wait_for(self.events.get(), max(0.01, remaining))
            # "extensions" matches any push on that topic.
            if message[3] == event or message[2] == event:
                return message

    async def wait_closed(self, timeout: float = 5) -> None:
        assert self.ws is not None
        await asyncio.wait_for(self.ws.wait_closed(), timeout)

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)

    def assert_no_violations(self) -> None:
        assert not self.violations, self.violations
