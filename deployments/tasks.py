"""Celery tasks for rollouts: thin, idempotent, keyed by primary key."""

from __future__ import annotations

import logging

from celery import shared_task
from django.utils import timezone

from deployments import deltas, manual, rollout
from deployments.models import Deployment
from nerveshub.lib.enqueue import enqueue

logger = logging.getLogger(__name__)


@shared_task(soft_time_limit=120, time_limit=150, ignore_result=True)
def run_rollout_task(deployment_id: int) -> None:
    rollout.run_started(deployment_id)
    run = rollout.run_rollout(deployment_id)
    if run.claimed or run.expired or run.resent:
        logger.info(
            "deployment %s: pushed %d update(s), resent %d, expired %d",
            deployment_id,
            len(run.claimed),
            len(run.resent),
            run.expired,
        )


@shared_task(soft_time_limit=300, time_limit=330, ignore_result=True)
def run_all_rollouts() -> None:
    """The periodic backstop: a lost wake-up, an expired in-flight update or a
    rescheduled device whose delay passed, or a push lost on its way, is picked
    up within one period. It enqueues runs whatever the wake-up marks say.
    Manual updates, which no deployment's run looks at, are expired here, and
    soaks whose time is up end here too, also in paused deployments."""
    manual.expire_stale_manual_updates()
    rollout.settle_soaks(timezone.now())
    for deployment_id in Deployment.objects.filter(is_active=True, paused_at__isnull=True).values_list("pk", flat=True):
        if not enqueue(run_rollout_task, deployment_id):
            return  # the broker is away: the next period tries them all again


@shared_task(soft_time_limit=60, time_limit=90, ignore_result=True)
def request_deltas_task(deployment_id: int) -> None:
    deltas.request_for_deployment(deployment_id)


@shared_task(soft_time_limit=120, time_limit=150, ignore_result=True)
def request_all_deltas() -> None:
    """The periodic request for every active deployment with delta updates on:
    devices that joined it since its last request get their deltas. Asking
    again is harmless (existing pairs are left alone)."""
    active = Deployment.objects.filter(is_active=True, delta_updates=True).values_list("pk", flat=True)
    for deployment_id in active:
        if not enqueue(request_deltas_task, deployment_id):
            return
