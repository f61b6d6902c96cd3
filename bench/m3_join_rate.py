"""M3: device join rate with authentication and the database.

    python bench/m3_join_rate.py [--devices 5000] [--concurrency 8] [--server daphne|uvicorn|both] [--smoke]

One hub process (`python -m nerveshub.serve`, daphne unless --server says
otherwise; `both` measures daphne, then uvicorn, in the same run). Client
processes open N new devices, `concurrency` at a time, then close them all and
open them again (a fleet coming back after a restart): the upgrade with NH1
shared-secret headers (PBKDF2 + HMAC, then the device row is created on first
sight), then `phx_join` on `device` (firmware metadata stored, deployment
assigned). A join's latency runs from the TCP connect to the join reply. Two
baselines in the same run, the same clients against:

* the server-stack floor, for each server measured: daphne (or uvicorn) and
  Channels started as `nerveshub.serve` starts them, verifying the NH1 headers
  and answering the join, with no database (`common.floor_application`): what
  the server stack alone costs;
* a bare `websockets` server that answers the join (no auth, no database).

--profile FILE runs the hub under cProfile (every thread) and prints where its
CPU went; the rates of a profiled run are not the hub's.

Goal: >= 500 joins/s, p99 <= 250 ms. --smoke: 60 devices (CI).
"""

from __future__ import annotations

import argparse
import pstats
import time
from dataclasses import dataclass
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


@dataclass
class ServerRun:
    """One server's figures: the floor (returning devices) and the hub's two phases."""

    server: str
    floor: Phase
    hub: tuple[Phase, Phase]


def run_server(stack: Stack, server: str, args: argparse.Namespace, devices: int) -> ServerRun:
    """The hub, then the floor, under `server`, with the same clients."""
    extra = {"HUB_SERVER": server}
    hubs = [stack.start_hub(extra, profile=args.profile if i == 0 else None) for i in range(args.hubs)]
    ports = [hub.port for hub in hubs]
    # Warm-up: imports, the first database connections, of every hub process.
    pids = [hub.pid for hub in hubs]
    measure(ports, 10 * args.hubs, 1, 2, stack.key, stack.secret, pids)
    hub_phases = measure(ports, devices, args.workers, args.concurrency, stack.key, stack.secret, pids)
    for hub in hubs:
        hub.stop()  # (a profiled hub writes its statistics as it stops)
    floors = [stack.start_floor(server) for _ in range(args.hubs)]
    pids = [floor.pid for floor in floors]
    measure([f.port for f in floors], 10 * args.hubs, 1, 2, stack.key, stack.secret, pids)
    _, floor = measure([f.port for f in floors], devices, args.workers, args.concurrency, stack.key, stack.secret, pids)
    for one in floors:
        one.stop()
    return ServerRun(server, floor, hub_phases)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--hubs", type=int, default=1, help="hub processes sharing the devices (default 1)")
    parser.add_argument(
        "--server", choices=("daphne", "uvicorn", "both"), default="daphne", help="the hub's server (default daphne)"
    )
    parser.add_argument("--smoke", action="store_true", help="60 devices, for CI")
    parser.add_argument("--profile", type=Path, help="profile the (first) hub process into this file")
    args = parser.parse_args()
    devices = 60 if args.smoke else args.devices
    servers = ["daphne", "uvicorn"] if args.server == "both" else [args.server]
    if args.profile and len(servers) > 1:
        parser.error("--profile takes one --server")
    with Stack("m3") as stack:
        runs = [run_server(stack, server, args, devices) for server in servers]
        baseline = stack.start_baseline()
        _, (base_rate, base_latencies, _, base_cpu) = measure(
            [baseline.port], devices, args.workers, args.concurrency, "", "", [baseline.pid]
        )
    processes = f"{args.hubs} process{'es' if args.hubs > 1 else ''}"
    print(f"M3 machine: {machine()}; database: {'postgresql+redis' if stack.services else 'sqlite (embedded)'}")
    print(
        f"M3 baseline (bare websockets): {base_rate:.0f} joins/s, latency {describe(base_latencies)}; "
        f"server CPU {base_cpu * 1000:.2f} ms per join"
    )
    short = []
    for run in runs:
        floor_rate, floor_latencies, _, floor_cpu = run.floor
        print(
            f"M3 floor ({run.server} + Channels + NH1, no database, {processes}): "
            f"{floor_rate:.0f} joins/s, latency {describe(floor_latencies)}; server CPU {floor_cpu * 1000:.2f} ms "
            f"per join; ratio floor/baseline {ratio(floor_rate, base_rate)}"
        )
        for label, (rate, latencies, opened, cpu) in zip(("new devices", "returning devices"), run.hub, strict=True):
            print(
                f"M3 hub ({run.server}, {processes}), {label}: {opened}/{devices} joins "
                f"at concurrency {args.concurrency}: {rate:.0f} joins/s; hub CPU {cpu * 1000:.2f} ms per join"
            )
            print(f"M3 hub ({run.server}), {label}, join latency: {describe(latencies)} (goal p99 <= 250 ms)")
            print(
                f"M3 ratio hub/baseline ({run.server}), {label}: rate {ratio(rate, base_rate)} (goal >= 500 joins/s), "
                f"p99 latency {ratio(percentile(latencies, 0.99), percentile(base_latencies, 0.99))}; rate hub/floor "
                f"{ratio(rate, floor_rate)}"
            )
            if opened < devices:
                short.append(f"{run.server}, {label}: only {opened} of {devices} devices joined")
    if len(runs) == 2:
        daphne, uvicorn = runs
        print(
            f"M3 uvicorn/daphne: floor {ratio(uvicorn.floor[0], daphne.floor[0])}, hub new devices "
            f"{ratio(uvicorn.hub[0][0], daphne.hub[0][0])}, hub returning devices "
            f"{ratio(uvicorn.hub[1][0], daphne.hub[1][0])} (joins/s; above 1: uvicorn is faster)"
        )
    if short:
        raise SystemExit("; ".join(short))
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
