"""M5: hub CPU spent on heartbeats at 20,000 devices.

    python bench/m5_heartbeat_cpu.py [--devices 20000] [--hubs 2] [--server daphne|uvicorn]
                                     [--interval 30] [--window 60] [--smoke]

Two hub processes (`python -m nerveshub.serve`, daphne unless --server says
otherwise) sharing PostgreSQL and Redis. Client processes connect and join N
devices spread over them, then each heartbeats every `interval` s (spread
evenly) for a `window` of at least one interval. The figure is the hub
processes' CPU time together (user + system, /proc/<pid>/stat) over the window,
as a share of one core, and the heartbeat round-trip p99. Baseline in the same
run: as many bare `websockets` processes answering the same heartbeats.

Goal: <= 25 % of a core, p99 <= 50 ms. --smoke: 60 devices, 2 s interval,
6 s window (CI).
"""

from __future__ import annotations

import argparse
import time

from common import Fleet, Stack, describe, machine, merged, percentile, proc_cpu, ratio, summed


def measure(
    ports: list[int], pids: list[int], args: argparse.Namespace, devices: int, key: str, secret: str
) -> tuple[float, list[float], int]:
    fleet = Fleet.start(ports, devices, args.workers, key=key, secret=secret, concurrency=args.concurrency)
    try:
        fleet.command("open")
        time.sleep(2)  # let the joins' after-work settle
        cpu, start = sum(proc_cpu(pid) for pid in pids), time.perf_counter()
        held = fleet.command(f"hold {args.window} {args.interval}")
        used = (sum(proc_cpu(pid) for pid in pids) - cpu) / (time.perf_counter() - start)
    finally:
        fleet.stop()
    return used, merged(held, "heartbeat_latencies"), summed(held, "open")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=20_000)
    parser.add_argument("--interval", type=float, default=30)
    parser.add_argument("--window", type=float, default=60)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--hubs", type=int, default=2, help="hub processes (and baseline processes)")
    parser.add_argument("--server", choices=("daphne", "uvicorn"), default="daphne", help="the hub's server")
    parser.add_argument("--smoke", action="store_true", help="60 devices, for CI")
    args = parser.parse_args()
    devices = args.devices
    if args.smoke:
        devices, args.interval, args.window, args.workers, args.concurrency = 60, 2, 6, 2, 4
    with Stack("m5") as stack:
        hubs = [stack.start_hub({"HUB_SERVER": args.server}) for _ in range(args.hubs)]
        cpu, latencies, held = measure(
            [h.port for h in hubs], [h.pid for h in hubs], args, devices, stack.key, stack.secret
        )
        for hub in hubs:
            hub.stop()
        baselines = [stack.start_baseline() for _ in range(args.hubs)]
        base_cpu, base_latencies, _ = measure(
            [b.port for b in baselines], [b.pid for b in baselines], args, devices, "", ""
        )
    rate = devices / args.interval
    processes = f"{args.hubs} process{'es' if args.hubs > 1 else ''}"
    print(f"M5 machine: {machine()}; database: {'postgresql+redis' if stack.services else 'sqlite (embedded)'}")
    print(
        f"M5 hub ({args.server}, {processes}): {held} devices, {rate:.0f} heartbeats/s: {cpu * 100:.1f} % of a "
        f"core (goal <= 25 %); round trip {describe(latencies)} (goal p99 <= 50 ms)"
    )
    print(
        f"M5 baseline (bare websockets, {processes}): {base_cpu * 100:.1f} % of a core; "
        f"round trip {describe(base_latencies)}"
    )
    print(
        f"M5 ratio hub/baseline: CPU {ratio(cpu, base_cpu)}, "
        f"p99 {ratio(percentile(latencies, 0.99), percentile(base_latencies, 0.99))}"
    )
    if held < devices:
        raise SystemExit(f"only {held} of {devices} devices stayed connected")


if __name__ == "__main__":
    main()
