"""What the hash chain costs an audit write, and how fast a chain verifies.

    python bench/audit_chain.py [--events 5000] [--threads 4] [--database-url URL] [--smoke]

Times, on one organization's chain:

* audit(): N calls, each in its own transaction, against the baseline of the
  same rows written by a plain AuditEvent.objects.create (what audit() did
  before the chain), in the same run;
* audit() of an action a webhook endpoint subscribes to (the outbox row
  included; sending is switched off, it happens after commit in a worker);
* with --threads T > 1: T threads appending to the same org at once (each
  append waits for the chain's lock) against T threads of plain creates;
* verify_chain() over the N events, against reading the same rows without
  hashing.

Embedded mode (SQLite in a temporary DATA_DIR) unless --database-url names a
PostgreSQL database, which is migrated and used as is. --smoke: 300 events (CI).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _rate(count: int, seconds: float) -> str:
    return f"{count / seconds:,.0f}/s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--database-url", help="a PostgreSQL database to use instead of SQLite")
    parser.add_argument("--smoke", action="store_true", help="300 events, for CI")
    args = parser.parse_args()
    events = 300 if args.smoke else args.events

    work = Path(tempfile.mkdtemp(prefix="nh-bench-audit-"))
    os.environ.update({"DATA_DIR": str(work / "data"), "DJANGO_SETTINGS_MODULE": "nerveshub.settings"})
    for name in ("DATABASE_URL", "REDIS_URL", "NERVESHUB_PRODUCTION"):
        os.environ.pop(name, None)
    if args.database_url:
        os.environ["DATABASE_URL"] = args.database_url

    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection, transaction

    call_command("migrate", verbosity=0)

    from nerveshub.tenancy import audit_chain
    from nerveshub.tenancy.models import AuditEvent, Organization
    from nerveshub.tenancy.services import audit
    from webhooks import services as webhooks
    from webhooks.models import EventType, WebhookEndpoint

    # Sending happens after commit in a worker; this measures the write path only
    # (the stub reports the hand-off done, as dispatch does when a worker takes it).
    webhooks.dispatch = lambda delivery_id: True
    stamp = str(time.time_ns())
    org = Organization.objects.create(name=f"bench-{stamp}")
    baseline_org = Organization.objects.create(name=f"bench-base-{stamp}")
    details = {"deployment": "stable", "firmware": "0b8f5c36-6f1e-4a43-9a57-1c5b2f1f8a10", "tags": ["eu", "beta"]}

    def plain(target: Organization, i: int) -> None:
        with transaction.atomic():
            AuditEvent.objects.create(
                org=target, actor="orchestrator", action="update.requested", subject="dev", details={**details, "i": i}
            )

    def chained(target: Organization, i: int) -> None:
        with transaction.atomic():
            audit("orchestrator", "update.requested", target, details={**details, "i": i})

    def timed(fn: Callable[[Organization, int], None], target: Organization, count: int) -> float:
        start = time.perf_counter()
        for i in range(count):
            fn(target, i)
        return time.perf_counter() - start

    engine = connection.vendor
    print(f"database: {engine}, events: {events}")
    base = timed(plain, baseline_org, events)
    chain = timed(chained, org, events)
    print(f"baseline create: {_rate(events, base)}  audit(): {_rate(events, chain)}  ratio {base / chain:.2f}")

    WebhookEndpoint.objects.create(org=org, url="https://hooks.example.com/x", event_types=[EventType.UPDATE_FAILED])

    def announced(target: Organization, i: int) -> None:
        with transaction.atomic():
            audit("orchestrator", "update.failed", target, details={**details, "i": i})

    hooked = timed(announced, org, events)
    print(f"audit() + outbox row: {_rate(events, hooked)}  ratio to baseline {base / hooked:.2f}")

    if args.threads > 1 and engine == "postgresql":

        def threaded(fn: Callable[[Organization, int], None], target: Organization) -> float:
            per = events // args.threads
            barrier = threading.Barrier(args.threads + 1)

            def work() -> None:
                barrier.wait()
                for i in range(per):
                    fn(target, i)
                connection.close()

            threads = [threading.Thread(target=work) for _ in range(args.threads)]
            for thread in threads:
                thread.start()
            barrier.wait()
            start = time.perf_counter()
            for thread in threads:
                thread.join()
            return time.perf_counter() - start

        count = events // args.threads * args.threads
        base_t = threaded(plain, baseline_org)
        chain_t = threaded(chained, org)
        print(
            f"{args.threads} threads, one org: baseline {_rate(count, base_t)}  audit() {_rate(count, chain_t)}  "
            f"ratio {base_t / chain_t:.2f}"
        )

    total = AuditEvent.objects.filter(org=org).count()
    start = time.perf_counter()
    read = sum(1 for _ in audit_chain._iter_rows(org.pk))
    read_s = time.perf_counter() - start
    start = time.perf_counter()
    result = audit_chain.verify_chain(org)
    verify_s = time.perf_counter() - start
    assert result.ok and result.checked == total == read, result
    print(
        f"verify {total} events: {_rate(total, verify_s)}  read only: {_rate(total, read_s)}  "
        f"ratio {read_s / verify_s:.2f}"
    )


if __name__ == "__main__":
    main()
