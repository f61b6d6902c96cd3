"""What the frame codecs accept: JSON as the client writes it, never NaN or
Infinity (no database could store them); msgpack floats that are not finite
are stored as null."""

from __future__ import annotations

import msgpack
import pytest

from devicelink.protocol import FrameError, JsonCodec, MsgpackCodec
from nerveshub.lib.jsonsafe import finite


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_json_frames_with_non_finite_numbers_are_malformed(constant: str) -> None:
    text = '["1","2","extensions","health:report",{"value":{"metrics":{"cpu_temp":' + constant + "}}}]"
    with pytest.raises(FrameError, match="not JSON"):
        JsonCodec.decode(text, None)


def test_msgpack_non_finite_floats_are_stored_as_null() -> None:
    data = msgpack.packb(["1", "2", "extensions", "health:report", {"value": {"m": [float("nan"), 1.5, float("inf")]}}])
    frame = MsgpackCodec.decode(None, data)
    assert finite(frame.payload) == {"value": {"m": [None, 1.5, None]}}
    assert finite({1: float("-inf"), "k": (1, 2)}) == {"1": None, "k": [1, 2]}
