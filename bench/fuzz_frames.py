"""Malformed-frame fuzzing of a live hub at volume.

    python bench/fuzz_frames.py [--frames 10000] [--sockets 4] [--smoke]

One hub process (`python -m nerveshub.serve`, DEVICE_MAX_FRAME_BYTES=4096) with
three well-behaved devices heartbeating every 100 ms from a thread of their own.
Fuzzing sockets send frames drawn by hypothesis (tests/support/fuzzing.py: not
JSON, binary, wrong arity and types, huge refs, odd topics, oversized, joins
and events with garbage payloads), each followed by a heartbeat probe, and the
oracle there judges every answer and close. Prints the counts: frames, closes
by code, answered, silent, violations, bystander heartbeats and failures.
Exits non-zero on any violation, bystander failure or hub exit.

--smoke: 400 frames (CI).
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
from itertools import count

from common import Stack
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

MAX_FRAME = 4096
BATCH = 25


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=10_000)
    parser.add_argument("--sockets", type=int, default=4, help="fuzzing sockets at a time")
    parser.add_argument("--smoke", action="store_true", help="400 frames, for CI")
    args = parser.parse_args()
    frames_wanted = 400 if args.smoke else args.frames
    examples = max(1, -(-frames_wanted // BATCH))

    with Stack("fuzz") as stack:
        from tests.support.fuzzing import Bystanders, FuzzSocket, Outcome, frames
        from tests.support.nhl_client import NHLDevice

        hub = stack.start_hub({"DEVICE_MAX_FRAME_BYTES": str(MAX_FRAME)})
        url = f"ws://127.0.0.1:{hub.port}"
        bystanders = Bystanders(
            [NHLDevice(url=url, identifier=f"calm-{i}", key=stack.key, secret=stack.secret) for i in range(3)]
        )
        loop = asyncio.new_event_loop()
        stop = asyncio.Event()
        thread = threading.Thread(target=lambda: loop.run_until_complete(bystanders.run(stop)), daemon=True)
        thread.start()
        total = Outcome()
        numbers = count()
        start = time.perf_counter()

        # Draw every batch first (hypothesis keeps each example small, so many
        # examples of BATCH frames), then play them on `sockets` sockets at once.
        batches: list[list[str | bytes]] = []

        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(batch=st.lists(frames(MAX_FRAME), min_size=BATCH, max_size=BATCH))
        def draw(batch: list[str | bytes]) -> None:
            batches.append(batch)

        draw()
        generated, drawn = time.perf_counter() - start, len(batches)

        async def worker(queue: list[list[str | bytes]]) -> None:
            socket = FuzzSocket(url, stack.key, stack.secret, f"fuzz-{next(numbers)}", MAX_FRAME)
            try:
                while queue:
                    await socket.run(queue.pop())
                    if hub.process.poll() is not None:
                        return
            finally:
                await socket.close()
            outcome = socket.outcome
            total.frames += outcome.frames
            total.closed.update(outcome.closed)
            total.replied += outcome.replied
            total.silent += outcome.silent
            total.pushes += outcome.pushes
            total.reconnects += outcome.reconnects
            total.violations += outcome.violations

        async def play() -> None:
            await asyncio.gather(*(worker(batches) for _ in range(args.sockets)))

        try:
            asyncio.run(play())
        finally:
            loop.call_soon_threadsafe(stop.set)
            thread.join(30)
        elapsed = time.perf_counter() - start
        alive = hub.process.poll() is None

    closes = ", ".join(f"{code}: {n}" for code, n in sorted(total.closed.items()))
    print(
        f"fuzz: {total.frames} frames ({drawn} batches drawn in {generated:.0f} s) played in "
        f"{elapsed - generated:.0f} s on {args.sockets} sockets, {total.reconnects} reconnects"
    )
    print(
        f"fuzz: closed {sum(total.closed.values())} ({closes}), answered {total.replied}, "
        f"silent {total.silent}, pushes seen {total.pushes}"
    )
    print(f"fuzz: violations {len(total.violations)}; hub alive: {alive}")
    print(f"fuzz: bystanders: {bystanders.heartbeats} heartbeats answered, {len(bystanders.failures)} failures")
    for line in (total.violations + bystanders.failures)[:10]:
        print("  " + line)
    if total.violations or bystanders.failures or not alive or bystanders.heartbeats == 0:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
