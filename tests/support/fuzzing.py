"""Malformed-frame fuzzing of the device socket, shared by tests/devices/test_fuzz.py
(a few hundred frames) and bench/fuzz_frames.py (tens of thousands).

`frames()` is a hypothesis strategy for one frame as sent on the wire: text that is
not JSON, binary garbage, arrays of the wrong arity or with wrong types, huge refs,
unknown or odd topics, oversized frames, and well-formed joins and events whose
payloads are garbage. `FuzzSocket.run` sends them one at a time on a real device
socket, each followed by a heartbeat probe, and judges what came back with an
oracle written from the wire rules (docs/device-protocol.md §1.3 to §1.7, devicelink/consumer.py):

* a frame larger than the limit closes the socket with 1009; one that is not a
  five-element array of [ref|null, ref|null, string, string, any] (text, JSON)
  closes it with 1008; nothing else closes it;
* a heartbeat gets its ok reply; a frame on `phoenix` that is not a heartbeat,
  a join of an unknown topic, and an event on a topic never joined get the
  "unmatched topic" error reply;
* a frame is answered at most once, and only with its own ref; server pushes
  carry ref null.

After a close, the socket connects again and the run goes on.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import websockets
from hypothesis import strategies as st
from websockets.asyncio.client import ClientConnection, connect

from tests.support.nhl_client import NHLDevice, encode

TOPICS = ("device", "console", "extensions")
EVENTS = (
    "phx_join",
    "phx_leave",
    "heartbeat",
    "status_update",
    "fwup_progress",
    "update_progress",
    "report_network_interface",
    "firmware_validated",
    "connection_types",
    "scripts/run",
    "rebooting",
    "health:report",
    "health:attached",
    "geo:location:update",
    "geo:attached",
    "up",
    "window_size",
)
KEYS = (
    "nerves_fw_uuid",
    "nerves_fw_version",
    "device_api_version",
    "meta",
    "firmware_validated",
    "status",
    "value",
    "stage",
    "interface",
    "values",
    "latitude",
    "console_version",
    "currently_downloading_uuid",
    "fwup_public_keys",
)
UNMATCHED = {"status": "error", "response": {"reason": "unmatched topic"}}
HEARTBEAT_OK = {"status": "ok", "response": {}}


def json_values() -> st.SearchStrategy[Any]:
    scalars = (
        st.none()
        | st.booleans()
        | st.integers(min_value=-(2**70), max_value=2**70)
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=40)
    )
    keys = st.sampled_from(KEYS) | st.text(max_size=12)
    return st.recursive(
        scalars,
        lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=5),
        max_leaves=12,
    )


def refs() -> st.SearchStrategy[Any]:
    return (
        st.none()
        | st.integers(min_value=0, max_value=10**6).map(str)
        | st.integers(min_value=0, max_value=2**200)  # huge integer refs
        | st.text(min_size=500, max_size=3000)  # huge string refs
        | st.floats(allow_nan=False, allow_infinity=False)  # a wrong type
        | st.lists(st.integers(), max_size=2)
    )


def _dump(message: Any) -> str:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False)


def frames(max_frame: int) -> st.SearchStrategy[str | bytes]:
    """One frame as sent: str is a text frame, bytes a binary frame."""
    topic = st.sampled_from((*TOPICS, "phoenix", "room:lobby", "", "DEVICE", "device:1")) | st.text(max_size=20)
    event = st.sampled_from(EVENTS) | st.text(max_size=20)
    ref = st.integers(min_value=1, max_value=10**6).map(str)
    well_formed = st.tuples(st.none() | ref, st.none() | ref, topic, event, json_values()).map(list).map(_dump)
    garbage_join = st.tuples(ref, st.sampled_from(TOPICS), json_values()).map(
        lambda t: _dump([t[0], t[0], t[1], "phx_join", t[2]])
    )
    garbage_event = st.tuples(st.none() | ref, st.sampled_from(TOPICS), st.sampled_from(EVENTS), json_values()).map(
        lambda t: _dump([None, t[0], t[1], t[2], t[3]])
    )
    odd_refs = st.tuples(refs(), refs(), st.sampled_from((*TOPICS, "phoenix")), event).map(
        lambda t: _dump([t[0], t[1], t[2], t[3], {}])
    )
    wrong_types = st.tuples(json_values(), json_values(), json_values(), json_values(), json_values()).map(_dump)
    wrong_arity = st.lists(json_values(), max_size=8).filter(lambda v: len(v) != 5).map(_dump)
    not_json = st.text(max_size=200) | st.text(max_size=50).map(lambda s: '[null,"1","phoenix","heartbeat",{' + s)
    binary = st.binary(min_size=0, max_size=300)
    oversized = st.integers(min_value=1, max_value=2000).map(
        lambda n: _dump([None, "1", "device", "status_update", {"status": "x" * (max_frame + n)}])
    )
    return st.one_of(
        well_formed,
        garbage_join,
        garbage_event,
        odd_refs,
        wrong_types,
        wrong_arity,
        not_json,
        binary,
        oversized,
    )


# --- the oracle ------------------------------------------------------------------


def _is_ref(value: Any) -> bool:
    return value is None or isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def expected_close(frame: str | bytes, max_frame: int) -> int | None:
    """The close code this frame must cause on a JSON socket, or None."""
    if len(frame) > max_frame:
        return 1009
    if isinstance(frame, bytes):
        return 1008
    try:
        message = json.loads(frame)
    except (ValueError, RecursionError):
        return 1008
    if not isinstance(message, list) or len(message) != 5:
        return 1008
    join_ref, ref, topic, event, _ = message
    if not (isinstance(topic, str) and isinstance(event, str) and _is_ref(join_ref) and _is_ref(ref)):
        return 1008
    return None


def _as_ref(value: Any) -> str | None:
    return None if value is None else str(value)


@dataclass
class Outcome:
    frames: int = 0
    closed: Counter[int] = field(default_factory=Counter)
    replied: int = 0
    silent: int = 0
    pushes: int = 0
    reconnects: int = 0
    violations: list[str] = field(default_factory=list)


@dataclass
class FuzzSocket:
    url: str  # ws://host:port
    key: str
    secret: str
    identifier: str
    max_frame: int
    timeout: float = 10.0
    outcome: Outcome = field(default_factory=Outcome)
    ws: ClientConnection | None = None
    joined: set[str] = field(default_factory=set)
    ever_joined: set[str] = field(default_factory=set)
    probes: int = 0

    async def connect(self) -> None:
        device = NHLDevice(url=self.url, identifier=self.identifier, key=self.key, secret=self.secret)
        self.ws = await connect(
            f"{self.url}/device-socket/websocket?vsn=2.0.0",
            additional_headers=device.headers(),
            ping_interval=None,
            max_size=None,
            open_timeout=self.timeout,
        )
        await self.ws.send(encode(["j", "j", "device", "phx_join", device.join_params()]))
        while True:
            message = json.loads(await asyncio.wait_for(self.ws.recv(), self.timeout))
            if message[1] == "j":
                break
        if message[4] != HEARTBEAT_OK:
            raise AssertionError(f"the fuzzing device could not join: {message}")
        self.joined, self.ever_joined = {"device"}, {"device"}

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()

    async def run(self, batch: list[str | bytes]) -> Outcome:
        if self.ws is None:
            await self.connect()
        for frame in batch:
            await self.one(frame)
        return self.outcome

    async def one(self, frame: str | bytes) -> None:
        assert self.ws is not None
        self.outcome.frames += 1
        close = expected_close(frame, self.max_frame)
        self.probes += 1
        probe = f"probe-{self.probes}"
        answers: list[list[Any]] = []
        closed_with: int | None = None
        try:
            await self.ws.send(frame)
            await self.ws.send(encode([None, probe, "phoenix", "heartbeat", {}]))
            deadline = time.monotonic() + self.timeout
            while True:
                raw = await asyncio.wait_for(self.ws.recv(), max(0.01, deadline - time.monotonic()))
                message = json.loads(raw)
                if message[1] == probe and message[2] == "phoenix":
                    if message[4] != HEARTBEAT_OK:
                        self.violation(frame, f"probe answered {message}")
                    break
                answers.append(message)
        except websockets.ConnectionClosed:
            closed_with = self.ws.close_code
        except TimeoutError:
            self.violation(frame, "no answer to the probe heartbeat: the socket hangs")
            await self.ws.close()
            closed_with = -1
        if closed_with is not None:
            self.outcome.closed[closed_with] += 1
            if close is None and closed_with != -1:
                self.violation(frame, f"closed with {closed_with}, should have stayed open")
            elif close is not None and closed_with not in (close, -1):
                self.violation(frame, f"closed with {closed_with}, expected {close}")
            self.outcome.reconnects += 1
            await self.connect()
            return
        if close is not None:
            self.violation(frame, f"stayed open, expected close {close}; answers {answers[:2]}")
            return
        self.judge(json.loads(frame), answers)

    def judge(self, message: list[Any], answers: list[list[Any]]) -> None:
        _join_ref, ref, topic, event, _ = message
        replies = [a for a in answers if a[3] == "phx_reply"]
        pushes = [a for a in answers if a[3] != "phx_reply"]
        self.outcome.pushes += len(pushes)
        self.outcome.replied += bool(replies)
        self.outcome.silent += not replies
        if len(replies) > 1:
            self.violation(message, f"answered {len(replies)} times: {replies[:3]}")
        for each in replies:
            if each[1] != _as_ref(ref) or each[2] != topic:
                self.violation(message, f"reply {each[:4]} does not carry the frame's ref and topic")
        for push in pushes:
            if push[1] is not None:
                self.violation(message, f"push with a ref: {push[:4]}")
            if push[3] == "phx_error":
                self.joined.discard(push[2])
        reply = replies[0] if replies else None
        if topic == "phoenix":
            expected = HEARTBEAT_OK if event == "heartbeat" else UNMATCHED
            if reply is None or reply[4] != expected:
                self.violation(message, f"on phoenix: expected {expected}, got {reply}")
        elif topic not in TOPICS:
            if reply is None or reply[4] != UNMATCHED:
                self.violation(message, f"unknown topic: expected unmatched topic, got {reply}")
        elif event == "phx_join":
            if reply is not None and reply[4].get("status") == "ok":
                self.joined.add(topic)
                self.ever_joined.add(topic)
        elif topic not in self.ever_joined:
            if reply is None or reply[4] != UNMATCHED:
                self.violation(message, f"topic never joined: expected unmatched topic, got {reply}")
        elif event == "phx_leave" and topic in self.joined:
            if reply is None or reply[4] != HEARTBEAT_OK:
                self.violation(message, f"leave: expected ok, got {reply}")
            self.joined.discard(topic)

    def violation(self, frame: Any, what: str) -> None:
        shown = frame if len(repr(frame)) < 300 else repr(frame)[:300] + "…"
        self.outcome.violations.append(f"{what} (frame {shown!r})")


@dataclass
class Bystanders:
    """Well-behaved devices that heartbeat the whole time and report any miss."""

    devices: list[NHLDevice]
    interval: float = 0.1
    heartbeats: int = 0
    failures: list[str] = field(default_factory=list)

    async def run(self, stop: asyncio.Event) -> None:
        for device in self.devices:
            await device.connect()
        while not stop.is_set():
            for device in self.devices:
                try:
                    await device.heartbeat(timeout=5)
                    self.heartbeats += 1
                except Exception as exc:
                    self.failures.append(f"{device.identifier}: heartbeat failed: {exc!r}")
            try:
                await asyncio.wait_for(stop.wait(), self.interval)
            except TimeoutError:
                pass
        for device in self.devices:
            try:
                # A join still works after the fuzzing, and no rule was broken.
                reply = await asyncio.wait_for(device.join("device", device.join_params()), 5)
                if reply[4] != HEARTBEAT_OK:
                    self.failures.append(f"{device.identifier}: rejoin answered {reply}")
                device.assert_no_violations()
            except Exception as exc:
                self.failures.append(f"{device.identifier}: {exc!r}")
            for task in device._tasks:
                task.cancel()
            await device.close()
