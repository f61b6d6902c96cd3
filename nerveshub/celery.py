"""The Celery app. Workers: `celery -A nerveshub worker`; periodic backstops:
`celery -A nerveshub beat`. In embedded mode (no REDIS_URL) tasks run in-process."""

from __future__ import annotations

import os

from celery import Celery
from celery.signals import worker_process_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "nerveshub.settings")

app = Celery("nerveshub")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_process_init.connect  # type: ignore[untyped-decorator]
def _fresh_database_pool(**kwargs: object) -> None:
    # A forked worker must not share the parent's pooled connections (or its
    # pool's threads, which do not survive the fork): it opens a pool of its own.
    # Imported in the forked worker only: every process imports this Celery
    # app (embedded mode on SQLite too), and only a worker on PostgreSQL has a pool.
    from django.db.backends.postgresql.base import DatabaseWrapper

    DatabaseWrapper._connection_pools.clear()  # type: ignore[attr-defined]
