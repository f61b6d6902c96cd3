"""Handing a task to the broker without letting a broker outage fail the caller.

Every task the hub enqueues is a wake-up for work that a durable row already
records and a periodic sweep finds again (rollouts, webhook deliveries, pending
firmware). So while Redis is away the caller (a device's join, an operator's
request) goes on, the enqueue is logged, and the sweep picks the work up once
the broker is back. Publishing is retried briefly, as Celery does by default,
but for well under a second: the caller is often a device socket's database
thread."""

from __future__ import annotations

import logging
from typing import Any

from kombu.exceptions import OperationalError

logger = logging.getLogger(__name__)

RETRY_POLICY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.1, "interval_max": 0.2}


def enqueue(task: Any, *args: Any) -> bool:
    """`task.apply_async(args)`; False, logged, when the broker cannot be reached."""
    try:
        task.apply_async(args, retry=True, retry_policy=RETRY_POLICY)
    except OperationalError as exc:
        logger.warning("could not enqueue %s%r, its sweep will: %s", task.name, args, exc)
        return False
    return True
