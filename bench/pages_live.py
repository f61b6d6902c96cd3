"""Live organization pages: 10 000 device state changes in a minute, and what
the open pages receive.

    python bench/pages_live.py [--changes 10000] [--seconds 60] [--pages 3] [--smoke]

In one process, as a hub server process runs it: a fresh embedded-mode
database (SQLite; BENCH_DATABASE_URL for PostgreSQL) with one organization,
`--pages` browser sockets on `/org/<org>/live/socket` through the real ASGI
application (session cookie, origin check, nerveshub.web.live), the live
pages' flusher (devices.pagefeed.run_flusher, LIVE_FLUSH_MS=1000 as in
production), and a producer thread that calls the publisher's own functions
(devices.publish.page_*) as the device link's database threads do: each of
N devices connects, and every fourth also reports update progress and
health, spread evenly over the run.

Figures: browser messages and bytes per page (goal: at most one message per
second per page, whatever the number of changes), the process CPU per change
over the run (publisher, coalescing, flush, fan-out to the pages' sockets and
their JSON), and the publisher's own cost per call, the part a device's
connect or report pays (a tight loop of calls). --smoke: 1 000 changes in 5 s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--changes", type=int, default=10_000, help="devices that change (each connects)")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--pages", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="1 000 changes in 5 s, for CI")
    args = parser.parse_args()
    devices = 1_000 if args.smoke else args.changes
    seconds = 5.0 if args.smoke else args.seconds

    work = Path(tempfile.mkdtemp(prefix="nh-bench-live-"))
    os.environ.update(
        {
            "DATA_DIR": str(work / "data"),
            "DJANGO_SETTINGS_MODULE": "nerveshub.settings",
            "ALLOWED_HOSTS": "testserver",
            "LIVE_FLUSH_MS": "1000",
            "LIVE_MAX_ROWS": "100",
        }
    )
    for name in ("DATABASE_URL", "REDIS_URL", "NERVESHUB_PRODUCTION"):
        os.environ.pop(name, None)
    if os.environ.get("BENCH_DATABASE_URL"):
        os.environ["DATABASE_URL"] = os.environ["BENCH_DATABASE_URL"]

    import django

    django.setup()
    from channels.testing import WebsocketCommunicator
    from django.conf import settings
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client

    call_command("migrate", verbosity=0)
    if os.environ.get("DATABASE_URL"):
        call_command("flush", verbosity=0, interactive=False)

    from devices import pagefeed, publish
    from nerveshub.asgi import application
    from nerveshub.tenancy import services as tenancy
    from nerveshub.tenancy.models import Role
    from nerveshub.web.access import org_slug

    org, _ = tenancy.get_or_create_org("bench", "bench-org")
    user = User.objects.create_user("bench", password="bench-pass")
    tenancy.set_membership("bench", org, user, Role.VIEW)
    client = Client()
    client.force_login(user)
    cookie = client.cookies["sessionid"].value
    origin = settings.PUBLIC_URL.rstrip("/")
    path = f"/org/{org_slug(org)}/live/socket"
    org_id = org.pk
    first_device = 1_000_000

    # The publisher's own cost, per call, as a device's connect pays it.
    calls = 20_000
    start = time.process_time()
    for n in range(calls):
        publish.page_device_connected(org_id, first_device + n % devices)
    per_call_us = (time.process_time() - start) / calls * 1e6
    pagefeed.feed.take()
    pagefeed.sent.update(messages=0, rows=0)

    changes = 0

    def produce() -> None:
        nonlocal changes
        interval = seconds / devices
        began = time.monotonic()
        for n in range(devices):
            device_id = first_device + n
            publish.page_device_connected(org_id, device_id)
            changes += 1
            if n % 4 == 0:
                publish.page_device_update(device_id, "downloading", n % 100, 1)
                publish.page_device_health(device_id, "healthy")
                changes += 2
            delay = began + (n + 1) * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        connection.close()

    async def scenario() -> dict[str, Any]:
        pages = [
            WebsocketCommunicator(
                application, path, headers=[(b"cookie", f"sessionid={cookie}".encode()), (b"origin", origin.encode())]
            )
            for _ in range(args.pages)
        ]
        for page in pages:
            connected, _ = await page.connect(timeout=30)
            if not connected:
                raise SystemExit("the page socket was refused")
        received: list[list[int]] = [[] for _ in pages]

        async def read(index: int, page: WebsocketCommunicator) -> None:
            while True:
                message = await page.receive_output(timeout=3600)
                if message.get("type") == "websocket.send":
                    received[index].append(len(message.get("text", "")))

        readers = [asyncio.create_task(read(i, p)) for i, p in enumerate(pages)]
        flusher = asyncio.create_task(pagefeed.run_flusher())
        cpu0, wall0 = time.process_time(), time.monotonic()
        await asyncio.to_thread(produce)
        await asyncio.sleep(2.5)  # the last flush and the pages' last send
        cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
        for task in [*readers, flusher]:
            task.cancel()
        await asyncio.gather(*readers, flusher, return_exceptions=True)
        for page in pages:
            await page.disconnect()
        return {"received": received, "cpu": cpu, "wall": wall}

    result = asyncio.run(scenario())
    received = result["received"]
    per_page = [len(r) for r in received]
    per_page_bytes = [sum(r) for r in received]
    worst_rate = max(per_page) / seconds
    print(f"{devices} devices, {changes} changes in {seconds:.0f} s, {args.pages} open pages, {connection.vendor}")
    print(f"publisher call (hot path):       {per_call_us:7.1f} us CPU per change")
    print(f"flushes sent to the org group:   {pagefeed.sent['messages']} ({pagefeed.sent['rows']} rows)")
    print(f"browser messages per page:       {per_page} (max {worst_rate:.2f}/s)")
    print(f"browser bytes per page:          {per_page_bytes} (max {max(per_page_bytes) / 1024:.0f} KiB)")
    print(f"largest browser message:         {max(max(r) for r in received if r)} bytes")
    print(f"process CPU over the run:        {result['cpu']:.2f} s in {result['wall']:.0f} s wall")
    print(f"process CPU per change:          {result['cpu'] / changes * 1e6:7.1f} us (everything, {args.pages} pages)")
    # At most one message per LIVE_FLUSH_MS per page, with a second of slack for
    # the run's edges.
    ok = max(per_page) <= seconds + 3 and min(per_page) >= 1
    print("RESULT:", "PASS" if ok else "MISS")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
