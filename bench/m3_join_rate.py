"""M3: device join rate with authentication and the database.

    python bench/m3_join_rate.py [--devices 5000] [--concurrency 8] [--smoke]

One hub process (`python -m nerveshub.serve`). Client processes open N new
devices, `concurrency` at a time, then close them all and open them again (a
fleet coming back after a restart): the upgrade with NH1 shared-secret headers
(PBKDF2 + HMAC, then the device row is created on first sight), then `phx_join`
on `device` (firmware metadata stored, deployment assigned). A join's latency
runs from the TCP connect to the join reply. Baseline in the same run: the same
clients against a bare `websockets` server that answers the join (no auth, no
database).

Goal: >= 500 joins/s, p99 <= 250 ms. --smoke: 60 devices (CI).
"""

from __future__ import annotations

import argparse
import time

from common import Fleet, Stack, describe, machine, merged, percentile, ratio

Phase = tuple[float, list[float], int]  # joins/s, latencies, devices joined


def measure(
    ports: list[int], devices: int, workers: int, concurrency: int, key: str, secret: str
) -> tuple[Phase, Phase]:
    """Every device joins for the first time, then all close and join again."""
    fleet = Fleet.start(ports, devices, workers, key=key, secret=secret, concurrency=concurrency)
    try:
        first = _phase(fleet)
        fleet.command("close")
        again = _phase(fleet)
    finally:
        fleet.stop()
    return first, again


def _phase(fleet: Fleet) -> Phase:
    start = time.perf_counter()
    answers = fleet.command("open")
    elapsed = time.perf_counter() - start
    opened = sum(a["open"] for a in answers)
    for error in {e for a in answers for e in a["errors"]}:
        print(f"M3 a join failed: {error}")
    return opened / elapsed, merged(answers, "join_latencies"), opened


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--hubs", type=int, default=1, help="hub processes sharing the devices (default 1)")
    parser.add_argument("--smoke", action="store_true", help="60 devices, for CI")
    args = parser.parse_args()
    devices = 60 if args.smoke else args.devices
    with Stack("m3") as stack:
        hubs = [stack.start_hub() for _ in range(args.hubs)]
        ports = [hub.port for hub in hubs]
        # Warm-up: imports, the first database connections, of every hub process.
        measure(ports, 10 * args.hubs, 1, 2, stack.key, stack.secret)
        hub_phases = measure(ports, devices, args.workers, args.concurrency, stack.key, stack.secret)
        baseline = stack.start_baseline()
        _, (base_rate, base_latencies, _) = measure([baseline.port], devices, args.workers, args.concurrency, "", "")
    print(f"M3 machine: {machine()}; database: {'postgresql+redis' if stack.services else 'sqlite (embedded)'}")
    print(f"M3 baseline (bare websockets): {base_rate:.0f} joins/s, latency {describe(base_latencies)}")
    for label, (rate, latencies, opened) in zip(("new devices", "returning devices"), hub_phases, strict=True):
        print(
            f"M3 hub ({args.hubs} process{'es' if args.hubs > 1 else ''}), {label}: {opened}/{devices} joins "
            f"at concurrency {args.concurrency}: {rate:.0f} joins/s"
        )
        print(f"M3 hub, {label}, join latency: {describe(latencies)} (goal p99 <= 250 ms)")
        print(
            f"M3 ratio hub/baseline, {label}: rate {ratio(rate, base_rate)} (goal >= 500 joins/s), p99 latency "
            f"{ratio(percentile(latencies, 0.99), percentile(base_latencies, 0.99))}"
        )
        if opened < devices:
            raise SystemExit(f"{label}: only {opened} of {devices} devices joined")


if __name__ == "__main__":
    main()
