"""M2: hub memory per idle joined device.

    python bench/m2_memory.py [--devices 10000] [--smoke]

One hub process (`python -m nerveshub.serve`); client processes connect N
devices (NH1 shared-secret auth, join `device`) after a warm-up of 20. The
figure is the growth of the hub's RSS divided by N, read once the joins are
done and the sockets idle. Baseline in the same run: the same clients against
a bare `websockets` server (bench/common.py) that answers the joins.

Goal: <= 32 KiB per idle joined device. --smoke: 60 devices (CI).
"""

from __future__ import annotations

import argparse
import gc
import time

from common import Fleet, Stack, machine, proc_rss, ratio

WARMUP = 20


def measure(stack: Stack, port: int, pid: int, devices: int, workers: int, key: str, secret: str) -> tuple[float, int]:
    warm = Fleet.start([port], WARMUP, 1, key=key, secret=secret, concurrency=4)
    warm.command("open")
    time.sleep(2)
    before = proc_rss(pid)
    fleet = Fleet.start([port], devices, workers, key=key, secret=secret, concurrency=8)
    try:
        answers = fleet.command("open")
        opened = sum(a["open"] for a in answers)
        time.sleep(3)
        after = proc_rss(pid)
    finally:
        fleet.stop()
        warm.stop()
    return (after - before) / max(1, opened), opened


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--smoke", action="store_true", help="60 devices, for CI")
    args = parser.parse_args()
    devices = 60 if args.smoke else args.devices
    gc.collect()
    with Stack("m2") as stack:
        hub = stack.start_hub()
        per_device, opened = measure(stack, hub.port, hub.pid, devices, args.workers, stack.key, stack.secret)
        baseline = stack.start_baseline()
        base_per_device, base_opened = measure(stack, baseline.port, baseline.pid, devices, args.workers, "", "")
    print(f"M2 machine: {machine()}; database: {'postgresql+redis' if stack.services else 'sqlite (embedded)'}")
    print(f"M2 hub: {opened} idle joined devices, {per_device / 1024:.1f} KiB RSS per device (goal <= 32 KiB)")
    print(f"M2 baseline (bare websockets): {base_opened} sockets, {base_per_device / 1024:.1f} KiB per socket")
    print(f"M2 ratio hub/baseline: {ratio(per_device, base_per_device)}")
    if opened < devices:
        raise SystemExit(f"only {opened} of {devices} devices joined")


if __name__ == "__main__":
    main()
