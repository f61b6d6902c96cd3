"""M3: device join rate with authentication and the database.

    python bench/m3_join_rate.py [--devices 5000] [--concurrency 8] [--smoke]

One hub process (`python -m nerveshub.serve`). Client processes open N new
devices, `concurrency` at a time, then close them all and open them again (a
fleet coming back after a restart): the upgrade with NH1 shared-secret headers
(PBKDF2 + HMAC, then the device row is created on first sight), then `phx_join`
on `device` (firmware metadata stored, deployment assigned). A join's latency
runs from the TCP connect to the join reply. Two baselines in the same run, the
same clients against:

* the server-stack floor: daphne and Channels started as `nerveshub.serve` starts
  them, verifying the NH1 headers and answering the join, with no database
  (`common.floor_application`): what the server stack alone costs;
* a bare `websockets` server that answers the join (no auth, no database).

--profile FILE runs the hub under cProfile (every thread) and prints where its
CPU went; the rates of a profiled run are not the hub's.

Goal: >= 500 joins/s, p99 <= 250 ms. --smoke: 60 devices (CI).
"""

from __future__ import annotations

import argparse
import pstats
import time
from pathlib import Path

from common import Fleet, Stack, describe, machine, merged, percentile, proc_cpu, ratio

Phase = tuple[float, list[float], int, float]  # joins/s, latencies, devices joined, server CPU s per join


def measure(
    ports: list[int], devices: int, workers: int, concurrency: int, key: str, secret: str, pids: list[int]
) -> tuple[Phase, Phase]:
    """Every device joins for the first time, then all close and join again."""
    fleet = Fleet.start(ports, devices, workers, key=key, secret=secret, concurrency=concurrency)
    try:
        first = _phase(fleet, pids)
        fleet.command("close")
        again = _phase(fleet, pids)
    finally:
        fleet.stop()
    return first, again


def _phase(fleet: Fleet, pids: list[int]) -> Phase:
    cpu = sum(proc_cpu(pid) for pid in pids)
    start = time.perf_counter()
    answers = fleet.command("open")
    elapsed = time.perf_counter() - start
    cpu = sum(proc_cpu(pid) for pid in pids) - cpu
    opened = sum(a["open"] for a in answers)
    for error in {e for a in answers for e in a["errors"]}:
        print(f"M3 a join failed: {error}")
    return opened / elapsed, merged(answers, "join_latencies"), opened, cpu / max(1, opened)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--hubs", type=int, default=1, help="hub processes sharing the devices (default 1)")
    parser.add_argument("--smoke", action="store_true", help="60 devices, for CI")
    parser.add_argument("--profile", type=Path, help="profile the (first) hub process into this file")
    args = parser.parse_args()
    devices = 60 if args.smoke else args.devices
    with Stack("m3") as stack:
        hubs = [stack.start_hub(profile=args.profile if i == 0 else None) for i in range(args.hubs)]
        ports = [hub.port for hub in hubs]
        # Warm-up: imports, the first database connections, of every hub process.
        pids = [hub.pid for hub in hubs]
        measure(ports, 10 * args.hubs, 1, 2, stack.key, stack.secret, pids)
        hub_phases = measure(ports, devices, args.workers, args.concurrency, stack.key, stack.secret, pids)
        for hub in hubs:
            hub.stop()  # (a profiled hub writes its statistics as it stops)
        floors = [stack.start_floor() for _ in range(args.hubs)]
        pids = [floor.pid for floor in floors]
        measure([f.port for f in floors], 10 * args.hubs, 1, 2, stack.key, stack.secret, pids)
        _, (floor_rate, floor_latencies, _, floor_cpu) = measure(
            [f.port for f in floors], devices, args.workers, args.concurrency, stack.key, stack.secret, pids
        )
        for floor in floors:
            floor.stop()
        baseline = stack.start_baseline()
        _, (base_rate, base_latencies, _, base_cpu) = measure(
            [baseline.port], devices, args.workers, args.concurrency, "", "", [baseline.pid]
        )
    print(f"M3 machine: {machine()}; database: {'postgresql+redis' if stack.services else 'sqlite (embedded)'}")
    print(
        f"M3 baseline (bare websockets): {base_rate:.0f} joins/s, latency {describe(base_latencies)}; "
        f"server CPU {base_cpu * 1000:.2f} ms per join"
    )
    print(
        f"M3 floor (daphne + Channels + NH1, no database, {args.hubs} process{'es' if args.hubs > 1 else ''}): "
        f"{floor_rate:.0f} joins/s, latency {describe(floor_latencies)}; server CPU {floor_cpu * 1000:.2f} ms "
        f"per join; ratio floor/baseline {ratio(floor_rate, base_rate)}"
    )
    for label, (rate, latencies, opened, cpu) in zip(("new devices", "returning devices"), hub_phases, strict=True):
        print(
            f"M3 hub ({args.hubs} process{'es' if args.hubs > 1 else ''}), {label}: {opened}/{devices} joins "
            f"at concurrency {args.concurrency}: {rate:.0f} joins/s; hub CPU {cpu * 1000:.2f} ms per join"
        )
        print(f"M3 hub, {label}, join latency: {describe(latencies)} (goal p99 <= 250 ms)")
        print(
            f"M3 ratio hub/baseline, {label}: rate {ratio(rate, base_rate)} (goal >= 500 joins/s), p99 latency "
            f"{ratio(percentile(latencies, 0.99), percentile(base_latencies, 0.99))}; rate hub/floor "
            f"{ratio(rate, floor_rate)}"
        )
        if opened < devices:
            raise SystemExit(f"{label}: only {opened} of {devices} devices joined")
    if args.profile:
        print_profile(args.profile)


def print_profile(path: Path, top: int = 40) -> None:
    """Where the profiled hub's CPU went: the functions with most time of their own,
    and the cumulative time of the hub's main steps."""
    stats = pstats.Stats(str(path))
    print(f"M3 profile ({path}), total {stats.total_tt:.1f} s, by own time:")  # type: ignore[attr-defined]
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)


if __name__ == "__main__":
    main()
