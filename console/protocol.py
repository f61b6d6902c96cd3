"""Typed messages of the remote console (docs/device-protocol.md §7, docs/reference-behaviour.md §4).

Three wires meet here:

* the device's `console` topic (Phoenix frames on the device socket): `up` and
  `file-data*` from the device; `dn`, `window_size`, `restart` and `file-data*`
  to it;
* the browser's socket (`/console/<device id>/socket`): JSON objects
  `{"event": ..., "payload": {...}}` both ways;
* the channel layer between the two, whichever server processes hold them
  (`console.push` to the device's socket channel, `console.*` to the
  per-device operator group).
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator

# nerves_hub_link sends and expects files in chunks of at most this many bytes.
CHUNK_BYTES = 1024
# Longest keystroke burst accepted from a browser in one message (a paste).
MAX_INPUT_CHARS = 16_384


def _check_filename(value: str) -> str:
    # The device writes uploads to <data_path>/<filename>: a bare name only.
    if value in ("", ".", "..") or "/" in value or "\\" in value or "\x00" in value:
        raise ValueError("a file name without directories is required")
    return value


def _check_base64_chunk(value: str) -> str:
    try:
        decoded = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("data must be base64") from None
    if len(decoded) > CHUNK_BYTES:
        raise ValueError(f"a chunk carries at most {CHUNK_BYTES} bytes")
    return value


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- device → server (console topic) ---------------------------------------------


class DeviceOutput(_Message):
    """`up`: a chunk of terminal output, ANSI sequences included."""

    data: str


class DeviceFileStart(_Message):
    filename: Annotated[str, Field(max_length=255)]


class DeviceFileChunk(_Message):
    filename: Annotated[str, Field(max_length=255)]
    chunk: int = Field(ge=0)
    data: str

    _data = field_validator("data")(_check_base64_chunk)


class DeviceFileStop(_Message):
    filename: Annotated[str, Field(max_length=255)]


DEVICE_EVENTS: dict[str, type[_Message]] = {
    "up": DeviceOutput,
    "file-data/start": DeviceFileStart,
    "file-data": DeviceFileChunk,
    "file-data/stop": DeviceFileStop,
}


def parse_device_event(event: str, payload: Any) -> _Message | None:
    """The typed form of a console push from the device; None for an event the
    console does not know (ignored, never replied to). Raises ValidationError
    for a known event with a bad payload."""
    model = DEVICE_EVENTS.get(event)
    if model is None:
        return None
    return model.model_validate(payload if isinstance(payload, dict) else {})


# --- browser → server ---------------------------------------------------------------


class Keystrokes(_Message):
    event: Literal["dn"]
    payload: _KeystrokesPayload


class _KeystrokesPayload(_Message):
    data: Annotated[str, Field(min_length=1, max_length=MAX_INPUT_CHARS)]


class WindowSize(_Message):
    event: Literal["window_size"]
    payload: _WindowSizePayload


class _WindowSizePayload(_Message):
    height: int = Field(ge=1, le=1000)
    width: int = Field(ge=1, le=1000)


class Restart(_Message):
    event: Literal["restart"]
    payload: dict[str, Any] = Field(default_factory=dict, max_length=0)


class UploadStart(_Message):
    event: Literal["file-data/start"]
    payload: _UploadStartPayload


class _UploadStartPayload(_Message):
    filename: Annotated[str, Field(max_length=255)]
    size: int = Field(ge=0)

    _filename = field_validator("filename")(_check_filename)


class UploadChunk(_Message):
    event: Literal["file-data"]
    payload: _UploadChunkPayload


class _UploadChunkPayload(_Message):
    filename: Annotated[str, Field(max_length=255)]
    chunk: int = Field(ge=0)
    data: str

    _data = field_validator("data")(_check_base64_chunk)


class UploadStop(_Message):
    event: Literal["file-data/stop"]
    payload: _UploadStopPayload


class _UploadStopPayload(_Message):
    filename: Annotated[str, Field(max_length=255)]


# Pydantic resolves the payload classes defined after their users.
for _model in (Keystrokes, WindowSize, UploadStart, UploadChunk, UploadStop):
    _model.model_rebuild()

BrowserMessage = Annotated[
    Keystrokes | WindowSize | Restart | UploadStart | UploadChunk | UploadStop,
    Field(discriminator="event"),
]
BROWSER_MESSAGE: TypeAdapter[Keystrokes | WindowSize | Restart | UploadStart | UploadChunk | UploadStop] = TypeAdapter(
    BrowserMessage
)


def parse_browser_message(text: str) -> Keystrokes | WindowSize | Restart | UploadStart | UploadChunk | UploadStop:
    """Raises pydantic.ValidationError for anything else."""
    return BROWSER_MESSAGE.validate_json(text)


# --- server → browser ---------------------------------------------------------------


def to_browser(event: str, payload: dict[str, Any]) -> dict[str, Any]:
    """The JSON object the page's socket receives."""
    return {"event": event, "payload": payload}


# daphne refuses to send a websocket message over 1 MiB (websocket_max_message_size)
# and closes the socket with 1011. Output reaches the browser as JSON with ASCII
# escapes: at most 12 bytes per character (a character outside the BMP is two
# \uXXXX escapes), so 16,384 characters are at most 192 KiB per message.
OUTPUT_CHUNK_CHARS = 16_384


def output_chunks(data: str) -> list[str]:
    """Terminal output cut into `up` messages the browser's socket can take."""
    return [data[start : start + OUTPUT_CHUNK_CHARS] for start in range(0, len(data), OUTPUT_CHUNK_CHARS)]


# --- channel layer ------------------------------------------------------------------
# Plain dicts (the layer serializes with msgpack); the builders keep the shapes
# in one place.


def push_to_device(event: str, payload: dict[str, Any]) -> dict[str, Any]:
    """To the device's socket channel: push `event` on the console topic."""
    return {"type": "console.push", "event": event, "payload": payload}


def hello_to_device(reply_channel: str) -> dict[str, Any]:
    """To the device's socket channel: an operator opened the console; answer
    with the scrollback (which also says the console is joined)."""
    return {"type": "console.hello", "reply_channel": reply_channel}


def from_device(event: str, payload: dict[str, Any]) -> dict[str, Any]:
    """To the operators' group: a console push from the device, unchanged."""
    return {"type": "console.from_device", "event": event, "payload": payload}


def device_status(joined: bool, channel: str = "", console_version: str = "") -> dict[str, Any]:
    """To the operators' group: the device (re)joined its console topic."""
    return {"type": "console.device_status", "joined": joined, "channel": channel, "version": console_version}


def scrollback(text: str, channel: str, console_version: str) -> dict[str, Any]:
    """To one operator: the answer to hello."""
    return {"type": "console.scrollback", "data": text, "channel": channel, "version": console_version}


def presence(username: str, action: str) -> dict[str, Any]:
    """To the operators' group: somebody opened or closed the console."""
    return {"type": "console.presence", "username": username, "action": action}
