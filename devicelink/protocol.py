"""The device socket's wire format: Phoenix V2 frames and the typed payloads the
hub reads from them (docs/device-protocol.md §1.3 to §1.4, §4, §5, §8).

Frame parsing is hand-written, not pydantic: every heartbeat of every device goes
through it, and the checks are five type tests. Payloads of the events the hub
acts on are pydantic models. Those of the `device` join allow extra keys (the
device sends whatever nerves_fw_* keys its U-Boot env has); the others forbid
them, except where a client version is known to add fields.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

import msgpack
from pydantic import BaseModel, ConfigDict, Field, field_validator

from nerveshub.lib.semver import parse_semver

JSON_VSN = "2.0.0"
MSGPACK_VSN = "3.0.0"


class FrameError(ValueError):
    """The frame is not a Phoenix V2 message; the socket is closed."""


@dataclass(frozen=True, slots=True)
class Frame:
    join_ref: str | None
    ref: str | None
    topic: str
    event: str
    payload: Any


def _ref(value: object, what: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        # msgpack clients may send integer refs; Phoenix turns them into strings.
        return str(value)
    raise FrameError(f"{what} must be a string or null")


def _frame(message: object) -> Frame:
    # Slipstream decodes arrays of five *or more* elements; Phoenix's server
    # serializer insists on exactly five, and so do we.
    if not isinstance(message, list) or len(message) != 5:
        raise FrameError("frame must be a five-element array")
    join_ref, ref, topic, event, payload = message
    if not isinstance(topic, str) or not isinstance(event, str):
        raise FrameError("topic and event must be strings")
    return Frame(_ref(join_ref, "join_ref"), _ref(ref, "ref"), topic, event, payload)


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


class JsonCodec:
    vsn = JSON_VSN

    @staticmethod
    def decode(text: str | None, data: bytes | None) -> Frame:
        if text is None:
            raise FrameError("binary frame on a JSON socket")
        try:
            # NaN and Infinity are not JSON (a real client never sends them),
            # and no database could store them.
            message = json.loads(text, parse_constant=_not_json)
        except (ValueError, RecursionError):
            raise FrameError("frame is not JSON") from None
        return _frame(message)

    @staticmethod
    def encode(message: list[Any]) -> dict[str, Any]:
        return {"type": "websocket.send", "text": json.dumps(message, separators=(",", ":"), ensure_ascii=False)}


class MsgpackCodec:
    vsn = MSGPACK_VSN

    @staticmethod
    def decode(text: str | None, data: bytes | None) -> Frame:
        if data is None:
            raise FrameError("text frame on a msgpack socket")
        try:
            message = msgpack.unpackb(data, raw=False, strict_map_key=False)
        except (ValueError, msgpack.UnpackException, TypeError, RecursionError):
            raise FrameError("frame is not msgpack") from None
        return _frame(message)

    @staticmethod
    def encode(message: list[Any]) -> dict[str, Any]:
        return {"type": "websocket.send", "bytes": msgpack.packb(message, use_bin_type=True)}


Codec = type[JsonCodec] | type[MsgpackCodec]
CODECS: dict[str, Codec] = {JSON_VSN: JsonCodec, MSGPACK_VSN: MsgpackCodec}


def reply(join_ref: str | None, ref: str | None, topic: str, status: str, response: Any) -> list[Any]:
    return [join_ref, ref, topic, "phx_reply", {"status": status, "response": response}]


def push(join_ref: str | None, topic: str, event: str, payload: Any) -> list[Any]:
    # A server push has ref null: the device drops pushes with a ref (§1.7).
    return [join_ref, None, topic, event, payload]


def heartbeat_reply(ref: str | None) -> list[Any]:
    return [None, ref, "phoenix", "phx_reply", {"status": "ok", "response": {}}]


UNMATCHED_TOPIC = {"reason": "unmatched topic"}
DETACH = "detach"


# --- Inbound payloads --------------------------------------------------------------


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


class JoinMeta(BaseModel):
    model_config = ConfigDict(extra="ignore")

    firmware_validated: bool | None = None
    firmware_auto_revert_detected: bool = False

    # Lenient like the rest of the join: a value of another type is read as
    # "not reported" rather than failing the join, which the device would
    # repeat unchanged every 5 s for ever (docs/device-protocol.md §1.7).
    @field_validator("firmware_validated", mode="before")
    @classmethod
    def _bool_or_unknown(cls, value: object) -> bool | None:
        return value if isinstance(value, bool) else None

    @field_validator("firmware_auto_revert_detected", mode="before")
    @classmethod
    def _bool_or_false(cls, value: object) -> bool:
        return value if isinstance(value, bool) else False


class DeviceJoin(BaseModel):
    """`phx_join` on `device` (§4). Unknown keys are ignored on purpose: the
    active slot's KV has keys we do not use (partition paths and the like)."""

    model_config = ConfigDict(extra="ignore")

    nerves_fw_uuid: str = ""
    nerves_fw_product: str = ""
    nerves_fw_version: str = ""
    nerves_fw_platform: str = ""
    nerves_fw_architecture: str = ""
    nerves_fw_author: str = ""
    nerves_fw_description: str = ""
    nerves_fw_vcs_identifier: str = ""
    nerves_fw_misc: str = ""
    fwup_version: str = ""
    device_api_version: str = "1.0.0"
    console_version: str = ""
    currently_downloading_uuid: str | None = None
    meta: JoinMeta = Field(default_factory=JoinMeta)
    fwup_public_keys: str | None = None
    archive_public_keys: str | None = None

    @field_validator(
        "nerves_fw_uuid",
        "nerves_fw_product",
        "nerves_fw_version",
        "nerves_fw_platform",
        "nerves_fw_architecture",
        "nerves_fw_author",
        "nerves_fw_description",
        "nerves_fw_vcs_identifier",
        "nerves_fw_misc",
        "fwup_version",
        "console_version",
        mode="before",
    )
    @classmethod
    def _lenient_text(cls, value: object) -> str:
        # A device with an odd KV value must still connect; we store "".
        return _text(value)

    @field_validator("device_api_version", mode="before")
    @classmethod
    def _semver_or_default(cls, value: object) -> str:
        return value if isinstance(value, str) and parse_semver(value) is not None else "1.0.0"

    @field_validator("currently_downloading_uuid", "fwup_public_keys", "archive_public_keys", mode="before")
    @classmethod
    def _optional_text(cls, value: object) -> str | None:
        return value if isinstance(value, str) and value else None

    @field_validator("meta", mode="before")
    @classmethod
    def _meta_object(cls, value: object) -> object:
        return value if isinstance(value, dict) else {}

    @property
    def api_version(self) -> tuple[int, int, int]:
        return parse_semver(self.device_api_version) or (1, 0, 0)


class ConsoleJoin(BaseModel):
    # HEAD sends two keys; v2.12.0 and older send the full device params.
    model_config = ConfigDict(extra="ignore")

    console_version: str = ""


class NetworkInterfaceReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    interface: str | None = Field(default=None, max_length=50)


class ConnectionTypes(BaseModel):
    model_config = ConfigDict(extra="forbid")

    values: list[str] = Field(max_length=20)


class StatusUpdate(BaseModel):
    # Reasons and fields vary between client versions (docs/device-protocol.md §6.2); keep what we know.
    model_config = ConfigDict(extra="ignore")

    status: str = Field(max_length=200)
    reason: str | None = None
    # Minutes; a year at most (a larger value is a malformed report, dropped).
    delay_for: int | None = Field(default=None, ge=0, le=525_600)
    downloader_network_interface: str | None = None


class FwupProgress(BaseModel):
    model_config = ConfigDict(extra="forbid")

    value: int = Field(ge=0, le=100)
    stage: Literal["downloading", "updating"] | None = None


class HealthReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    value: dict[str, Any]


class LocationUpdate(BaseModel):
    model_config = ConfigDict(extra="allow")

    latitude: float | None = None
    longitude: float | None = None
    accuracy: float | None = None
    source: str | None = None
    error_code: str | None = None
    error_description: str | None = None
