"""The Celery app. Workers: `celery -A nerveshub worker`; periodic backstops:
`celery -A nerveshub beat`. In embedded mode (no REDIS_URL) tasks run in-process."""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "nerveshub.settings")

app = Celery("nerveshub")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
