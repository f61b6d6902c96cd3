"""M3: device join rate with authentication and the database.

    python bench/m3_join_rate.py [--devices 5000] [--concurrency 8] [--smoke]

One hub process (`python -m nerveshub.serve`). Client processes open N new
devices, `concurrency` at a time: the upgrade with NH1 shared-secret headers
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


def measure(
    port: int, devices: int, workers: int, concurrency: int, key: str, secret: str
) -> tuple[float, list[float], int]:
    fleet = Fleet.start([port], devices, workers, key=key, secret=secret, concurrency=concurrency)
    try:
        start = time.perf_counter()
        answers = fleet.command("open")
        elapsed = time.perf_counter() - start
    finally:
        fleet.stop()
    opened = sum(a["open"] for a in answers)
    return opened / elapsed, merged(answers, "join_latencies"), opened


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="60 devices, for CI")
    args = parser.parse_args()
    devices = 60 if args.smoke else args.devices
    with Stack("m3") as stack:
        hub = stack.start_hub()
        # Warm-up: imports, the first database connection, the PBKDF2 cache.
        measure(hub.port, 10, 1, 2, stack.key, stack.secret)
        rate, latencies, opened = measure(hub.port, devices, args.workers, args.concurrency, stack.key, stack.secret)
        baseline = stack.start_baseline()
        base_rate, base_latencies, _ = measure(baseline.port, devices, args.workers, args.concurrency, "", "")
    print(f"M3 machine: {machine()}; database: {'postgresql+redis' if stack.services else 'sqlite (embedded)'}")
    print(f"M3 hub: {opened}/{devices} joins at concurrency {args.concurrency}: {rate:.0f} joins/s (goal >= 500)")
    print(f"M3 hub join latency: {describe(latencies)} (goal p99 <= 250 ms)")
    print(f"M3 baseline (bare websockets): {base_rate:.0f} joins/s, latency {describe(base_latencies)}")
    print(
        f"M3 ratio hub/baseline: rate {ratio(rate, base_rate)}, p99 latency "
        f"{ratio(percentile(latencies, 0.99), percentile(base_latencies, 0.99))}"
    )
    if opened < devices:
        raise SystemExit(f"only {opened} of {devices} devices joined")


if __name__ == "__main__":
    main()
