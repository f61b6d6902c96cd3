"""Celery tasks for webhooks: thin, idempotent, keyed by primary key."""

from __future__ import annotations

import logging

from celery import shared_task

from webhooks import services

logger = logging.getLogger(__name__)


@shared_task(soft_time_limit=120, time_limit=150, ignore_result=True)
def deliver_webhook_task(delivery_id: int) -> None:
    # A failed attempt is not retried from here: the row records when it is due
    # again and the sweep sends it then (no long countdowns held by the broker).
    services.deliver(delivery_id)


@shared_task(soft_time_limit=60, time_limit=90, ignore_result=True)
def sweep_webhooks() -> None:
    """The periodic backstop: retries that are due and rows whose wake-up was lost."""
    due = services.due_delivery_ids()
    for delivery_id in due:
        # services.dispatch: a Celery worker, or embedded mode's bounded pool
        # (never this thread, which is the embedded beat's).
        if not services.dispatch(delivery_id):
            return  # the broker is away: the next sweep tries again
    if due:
        logger.info("webhook sweep woke %d delivery(ies)", len(due))
