"""Malformed frames against a live hub while well-behaved devices stay connected:
the hub stays up, each fuzzing socket is closed or answered as the wire rules
say (tests/support/fuzzing.py has the oracle), and the bystanders' heartbeats
and joins keep working. bench/fuzz_frames.py runs the same at 10,000+ frames."""

from __future__ import annotations

import asyncio
import threading
from itertools import count

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from devices.models import Device
from tests.devices.conftest import Credentials
from tests.support.fuzzing import Bystanders, FuzzSocket, Outcome, frames
from tests.support.hub import HubLauncher

MAX_FRAME = 4096


def test_it_survives_malformed_frames_and_keeps_serving_other_devices(
    live_hub: HubLauncher, creds: Credentials
) -> None:
    # given: a hub with a small frame limit, and three bystanders heartbeating
    # from their own thread for the whole run
    hub = live_hub({"DEVICE_MAX_FRAME_BYTES": str(MAX_FRAME)})
    bystanders = Bystanders([creds.device(hub.ws_url, f"dev-calm-{i}") for i in range(3)])
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    ready = threading.Event()

    def bystander_thread() -> None:
        async def main() -> None:
            ready.set()
            await bystanders.run(stop)

        loop.run_until_complete(main())

    thread = threading.Thread(target=bystander_thread, daemon=True)
    thread.start()
    ready.wait(5)
    total = Outcome()
    numbers = count()

    # when: about 300 frames over 12 fuzzing sockets
    @settings(
        max_examples=12,
        # Shrinking replays batches against the live hub for minutes; the
        # violations list names the offending frames already.
        phases=[Phase.explicit, Phase.generate],
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(batch=st.lists(frames(MAX_FRAME), min_size=20, max_size=30))
    def fuzz(batch: list[str | bytes]) -> None:
        socket = FuzzSocket(hub.ws_url, creds.product_key, creds.product_secret, f"dev-fuzz-{next(numbers)}", MAX_FRAME)

        async def go() -> Outcome:
            try:
                return await socket.run(batch)
            finally:
                await socket.close()

        outcome = asyncio.run(go())
        total.frames += outcome.frames
        total.closed.update(outcome.closed)
        total.replied += outcome.replied
        assert outcome.violations == [], outcome.violations
        assert hub.process.poll() is None, "the hub process died"

    try:
        fuzz()
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)
    # then: the hub is up, the bystanders never missed, and the fuzzing got
    # both closes and answers (the run exercised both sides of the oracle)
    assert hub.process.poll() is None
    assert bystanders.failures == []
    assert bystanders.heartbeats > 0
    assert total.frames >= 200
    assert total.closed[1008] > 0 and total.replied > 0
    assert Device.objects.filter(identifier__startswith="dev-calm-").count() == 3
