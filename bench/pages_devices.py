"""Device list page of an organization with 100 000 devices.

    python bench/pages_devices.py [--devices 100000] [--smoke]

Fills a fresh embedded-mode database (SQLite; set BENCH_DATABASE_URL to a
PostgreSQL URL to run it there) with one org of N devices, then times
`/org/<org>/devices/` through Django's test client: the first page, a page
near the end (keyset: `?after=<identifier>`), a tag filter and a search.
Baseline, in the same run: what the page would cost with OFFSET pagination and
an exact COUNT(*) (django.core.paginator.Paginator over the same query), for
the same deep page; the figure compared is the database work of the two.

Goal: a deep page costs about what the first page costs (keyset), and well
under the OFFSET + COUNT(*) baseline. --smoke uses 10 000 devices (CI).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _median_ms(call: Callable[[], object], runs: int) -> float:
    call()  # warm caches
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--smoke", action="store_true", help="10 000 devices, for CI")
    args = parser.parse_args()
    count = 10_000 if args.smoke else args.devices
    runs = 5 if args.smoke else args.runs

    work = Path(tempfile.mkdtemp(prefix="nh-bench-pages-"))
    os.environ.update(
        {"DATA_DIR": str(work / "data"), "DJANGO_SETTINGS_MODULE": "nerveshub.settings", "ALLOWED_HOSTS": "testserver"}
    )
    for name in ("DATABASE_URL", "REDIS_URL", "NERVESHUB_PRODUCTION"):
        os.environ.pop(name, None)
    if os.environ.get("BENCH_DATABASE_URL"):
        os.environ["DATABASE_URL"] = os.environ["BENCH_DATABASE_URL"]

    import django

    django.setup()
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.core.paginator import Paginator
    from django.db import connection
    from django.test import Client

    call_command("migrate", verbosity=0)
    if os.environ.get("DATABASE_URL"):
        call_command("flush", verbosity=0, interactive=False)

    from devices.models import ConnectionStatus, Device
    from nerveshub.tenancy import services as tenancy
    from nerveshub.tenancy.models import Role
    from nerveshub.web.access import org_slug

    org, _ = tenancy.get_or_create_org("bench", "bench-org")
    product, _ = tenancy.get_or_create_product("bench", org, "bench")
    user = User.objects.create_user("bench", password="bench-pass")
    tenancy.set_membership("bench", org, user, Role.VIEW)
    start = time.perf_counter()
    batch = 5000
    for first in range(0, count, batch):
        Device.objects.bulk_create(
            Device(
                org=org,
                product=product,
                identifier=f"dev-{i:07d}",
                tags=["fleet", f"group-{i % 100}"],
                firmware_version=f"1.{i % 10}.0",
                connection_status=ConnectionStatus.CONNECTED if i % 3 else ConnectionStatus.DISCONNECTED,
            )
            for i in range(first, min(first + batch, count))
        )
    print(f"{count} devices on {connection.vendor} in {time.perf_counter() - start:.1f} s")
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE devices_device")

    client = Client()
    client.force_login(user)
    base = f"/org/{org_slug(org)}/devices/"
    deep = f"dev-{count - 100:07d}"

    def get(url: str) -> Callable[[], object]:
        def call() -> object:
            response = client.get(url)
            if response.status_code != 200:
                raise SystemExit(f"{url}: HTTP {response.status_code}")
            return response

        return call

    first_page = _median_ms(get(base), runs)
    deep_page = _median_ms(get(f"{base}?after={deep}"), runs)
    tag_page = _median_ms(get(f"{base}?tag=group-7"), runs)
    search_page = _median_ms(get(f"{base}?q=00042"), runs)

    queryset = Device.objects.filter(org=org, deleted_at__isnull=True).select_related("product", "deployment")

    def keyset_queries() -> object:
        rows = list(queryset.filter(identifier__gt=deep).order_by("identifier")[:51])
        capped = queryset.order_by()[:10_001].count()
        return rows, capped

    def offset_queries() -> object:
        paginator = Paginator(queryset.order_by("identifier"), 50)
        page = paginator.page(paginator.num_pages)
        return list(page.object_list), paginator.count

    hub_db = _median_ms(keyset_queries, runs)
    baseline_db = _median_ms(offset_queries, runs)

    print(f"page view, first page:        {first_page:7.1f} ms")
    print(f"page view, deep page (keyset): {deep_page:7.1f} ms")
    print(f"page view, tag filter:        {tag_page:7.1f} ms")
    print(f"page view, search:            {search_page:7.1f} ms")
    print(f"database work, deep page: keyset + capped count {hub_db:.1f} ms")
    print(f"baseline, deep page: OFFSET + COUNT(*)          {baseline_db:.1f} ms")
    print(f"ratio hub/baseline = {hub_db / baseline_db:.2f}; deep/first page = {deep_page / first_page:.2f}")
    ok = deep_page <= first_page * 1.5 and hub_db < baseline_db
    print("RESULT:", "PASS" if ok else "MISS")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
