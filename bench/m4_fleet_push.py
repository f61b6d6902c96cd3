"""M4: time for every connected device to receive a fleet broadcast.

    python bench/m4_fleet_push.py [--devices 10000] [--smoke]

Needs REDIS_URL and a PostgreSQL DATABASE_URL (the broadcast crosses processes).
Two hub processes; N devices joined (half on each), all members of one active
deployment whose firmware they already run. This process then calls
devices.publish.broadcast_to_deployment, the path every fleet push takes (one
channel-layer group message per server process; each process writes to its
local sockets). The figure is the time from the call to the last device's
receipt (same machine clock). Baseline in the same run: two bare `websockets`
server processes, each told by a control socket to send the same frame to all
of its sockets with websockets.broadcast.

Goal: <= 2 s for 10,000 devices. --smoke: 60 devices (CI).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Callable

from common import JOIN_PARAMS, Fleet, Stack, machine, merged, ratio, summed


def run(fleet: Fleet, trigger: Callable[[], None]) -> tuple[float, int, int]:
    opened = summed(fleet.command("open"), "open")
    time.sleep(2)
    start = time.time()
    trigger()
    answers = fleet.command("pushes bench_notice 60")
    times = merged(answers, "push_times")
    return (max(times) - start if times else float("nan")), len(times), opened


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--smoke", action="store_true", help="60 devices, for CI")
    args = parser.parse_args()
    devices = 60 if args.smoke else args.devices
    with Stack("m4") as stack:
        if not stack.services:
            print("M4 skipped: needs REDIS_URL and a PostgreSQL DATABASE_URL")
            return
        from deployments.models import Deployment
        from devices import publish
        from firmware.models import Firmware, FirmwareStatus
        from nerveshub.tenancy.models import Product

        product = Product.objects.get(pk=stack.product_id)
        firmware = Firmware.objects.create(
            org=product.org,
            product=product,
            uuid=JOIN_PARAMS["nerves_fw_uuid"],
            version=JOIN_PARAMS["nerves_fw_version"],
            platform=JOIN_PARAMS["nerves_fw_platform"],
            architecture=JOIN_PARAMS["nerves_fw_architecture"],
            status=FirmwareStatus.VALID,
        )
        deployment = Deployment.objects.create(
            org=product.org, product=product, name="bench", firmware=firmware, is_active=True
        )
        hubs = [stack.start_hub(), stack.start_hub()]
        fleet = Fleet.start(
            [h.port for h in hubs],
            devices,
            args.workers,
            key=stack.key,
            secret=stack.secret,
            concurrency=args.concurrency,
        )
        try:
            hub_time, hub_got, hub_open = run(
                fleet, lambda: publish.broadcast_to_deployment(deployment.pk, "bench_notice", {"n": 1})
            )
        finally:
            fleet.stop()

        baselines = [stack.start_baseline(), stack.start_baseline()]

        def trigger() -> None:
            async def send() -> None:
                from websockets.asyncio.client import connect

                for server in baselines:
                    async with connect(f"ws://127.0.0.1:{server.port}/control") as ws:
                        await ws.send(json.dumps([None, "1", "bench", "bench:broadcast", {"event": "bench_notice"}]))
                        await ws.recv()

            asyncio.run(send())

        fleet = Fleet.start([b.port for b in baselines], devices, args.workers, concurrency=args.concurrency)
        try:
            base_time, base_got, _ = run(fleet, trigger)
        finally:
            fleet.stop()
    print(f"M4 machine: {machine()}; database: postgresql+redis, 2 hub processes")
    print(f"M4 hub: {hub_got}/{hub_open} devices received the broadcast; last after {hub_time:.3f} s (goal <= 2 s)")
    print(f"M4 baseline (2 bare websockets processes): {base_got} received; last after {base_time:.3f} s")
    print(f"M4 ratio hub/baseline: {ratio(hub_time, base_time)}")
    if hub_got < devices:
        raise SystemExit(f"only {hub_got} of {devices} devices received the broadcast")


if __name__ == "__main__":
    main()
