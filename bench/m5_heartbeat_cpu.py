"""M5: hub CPU spent on heartbeats at 20,000 devices.

    python bench/m5_heartbeat_cpu.py [--devices 20000] [--interval 30] [--window 60] [--smoke]

One hub process (`python -m nerveshub.serve`). Client processes connect and
join N devices, then each heartbeats every `interval` s (spread evenly) for a
`window` of at least one interval. The figure is the hub process's CPU time
(user + system, /proc/<pid>/stat) over the window, as a share of one core, and
the heartbeat round-trip p99. Baseline in the same run: a bare `websockets`
server answering the same heartbeats.

Goal: <= 25 % of a core, p99 <= 50 ms. --smoke: 60 devices, 2 s interval,
6 s window (CI).
"""

from __future__ import annotations

import argparse
import time

from common import Fleet, Stack, describe, machine, merged, percentile, proc_cpu, ratio, summed


def measure(
    port: int, pid: int, args: argparse.Namespace, devices: int, key: str, secret: str
) -> tuple[float, list[float], int]:
    fleet = Fleet.start([port], devices, args.workers, key=key, secret=secret, concurrency=args.concurrency)
    try:
        fleet.command("open")
        time.sleep(2)  # let the joins' after-work settle
        cpu, start = proc_cpu(pid), time.perf_counter()
        held = fleet.command(f"hold {args.window} {args.interval}")
        used = (proc_cpu(pid) - cpu) / (time.perf_counter() - start)
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
    parser.add_argument("--smoke", action="store_true", help="60 devices, for CI")
    args = parser.parse_args()
    devices = args.devices
    if args.smoke:
        devices, args.interval, args.window, args.workers, args.concurrency = 60, 2, 6, 2, 4
    with Stack("m5") as stack:
        hub = stack.start_hub()
        cpu, latencies, held = measure(hub.port, hub.pid, args, devices, stack.key, stack.secret)
        baseline = stack.start_baseline()
        base_cpu, base_latencies, _ = measure(baseline.port, baseline.pid, args, devices, "", "")
    rate = devices / args.interval
    print(f"M5 machine: {machine()}; database: {'postgresql+redis' if stack.services else 'sqlite (embedded)'}")
    print(
        f"M5 hub: {held} devices, {rate:.0f} heartbeats/s: {cpu * 100:.1f} % of a core (goal <= 25 %); "
        f"round trip {describe(latencies)} (goal p99 <= 50 ms)"
    )
    print(f"M5 baseline (bare websockets): {base_cpu * 100:.1f} % of a core; round trip {describe(base_latencies)}")
    print(
        f"M5 ratio hub/baseline: CPU {ratio(cpu, base_cpu)}, "
        f"p99 {ratio(percentile(latencies, 0.99), percentile(base_latencies, 0.99))}"
    )
    if held < devices:
        raise SystemExit(f"only {held} of {devices} devices stayed connected")


if __name__ == "__main__":
    main()
