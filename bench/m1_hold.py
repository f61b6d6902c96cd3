"""M1: device sockets held over two hub processes, with 30 s heartbeats.

    python bench/m1_hold.py [--devices 30000] [--hold 600] [--interval 30] [--smoke]

Two hub processes (`python -m nerveshub.serve`, sharing the database and, when
REDIS_URL is set, Redis). Client processes, each from its own 127.0.0.x source
address, connect N devices (half on each process), join `device`, then every
socket heartbeats every `interval` seconds (spread evenly) for `hold` seconds.
A drop is a socket the hub closed or a heartbeat not answered within 30 s.
Baseline in the same run: the same clients against two bare `websockets`
server processes.

Goal: >= 30,000 sockets held 10 min over 2 processes, 0 drops.
--smoke: 40 devices held 8 s with 2 s heartbeats (CI).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from common import Fleet, Stack, describe, machine, merged, summed


def hold(ports: list[int], args: argparse.Namespace, devices: int, key: str, secret: str) -> dict[str, Any]:
    fleet = Fleet.start(ports, devices, args.workers, key=key, secret=secret, concurrency=args.concurrency)
    try:
        start = time.perf_counter()
        opened = fleet.command("open")
        connect_time = time.perf_counter() - start
        held = fleet.command(f"hold {args.hold} {args.interval}")
    finally:
        fleet.stop()
    return {
        "opened": summed(opened, "open"),
        "connect_time": connect_time,
        "still_open": summed(held, "open"),
        "drops": summed(held, "dropped") + summed(held, "failed"),
        "latencies": merged(held, "heartbeat_latencies"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=30_000)
    parser.add_argument("--hold", type=float, default=600)
    parser.add_argument("--interval", type=float, default=30)
    parser.add_argument("--workers", type=int, default=6)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--smoke", action="store_true", help="40 devices, 8 s, for CI")
    args = parser.parse_args()
    devices = args.devices
    if args.smoke:
        devices, args.hold, args.interval, args.workers, args.concurrency = 40, 8, 2, 2, 4
    with Stack("m1") as stack:
        print(f"M1 machine: {machine()}; database: {'postgresql+redis' if stack.services else 'sqlite (embedded)'}")
        hubs = [stack.start_hub(), stack.start_hub()]
        hub = hold([h.port for h in hubs], args, devices, stack.key, stack.secret)
        rss = [h.pid for h in hubs]
        # The hub's figures first: the baseline takes as long again at full size.
        print(
            f"M1 hub (2 processes {rss}): {hub['opened']}/{devices} joined in {hub['connect_time']:.0f} s; "
            f"held {args.hold:.0f} s with {args.interval:.0f} s heartbeats: {hub['still_open']} still open, "
            f"{hub['drops']} drops (goal: 30,000 held 600 s, 0 drops)"
        )
        print(f"M1 hub heartbeat latency: {describe(hub['latencies'])}", flush=True)
        baselines = [stack.start_baseline(), stack.start_baseline()]
        base = hold([b.port for b in baselines], args, devices, "", "")
    print(
        f"M1 baseline (2 bare websockets processes): {base['opened']} joined in {base['connect_time']:.0f} s, "
        f"{base['still_open']} still open, {base['drops']} drops; heartbeat {describe(base['latencies'])}"
    )
    print(f"M1 ratio hub/baseline (sockets held): {int(hub['still_open']) / max(1, int(base['still_open'])):.2f}")
    if hub["still_open"] != devices or hub["drops"]:
        raise SystemExit("sockets were lost")


if __name__ == "__main__":
    main()
