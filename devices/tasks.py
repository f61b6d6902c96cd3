"""Celery tasks of the devices app: thin wrappers that call one service."""

from __future__ import annotations

from celery import shared_task

from devices import health


@shared_task(soft_time_limit=300, time_limit=330, ignore_result=True)
def prune_health_history() -> None:
    """Periodic: health reports past their age or per-device bound go."""
    health.prune_health_history()
