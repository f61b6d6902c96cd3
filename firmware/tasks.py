"""Celery tasks of the firmware app: thin wrappers that take ids and call one service."""

from __future__ import annotations

from datetime import timedelta

from celery import shared_task

from firmware import deltas, services
from nerveshub.lib.enqueue import enqueue

# Uploads pending longer than this are validated again by the sweep: more than
# the validation task's time limit, so a run still under way is not doubled.
FIRMWARE_SWEEP_AGE_SECONDS = 1200


# A bad file (no signature, wrong hash, ...) is a permanent outcome recorded as
# `rejected` by the service, never an exception, so it is never retried. Only a
# storage backend that cannot be reached is worth another try.
@shared_task(
    soft_time_limit=900,
    time_limit=960,
    autoretry_for=(services.StorageUnavailable,),
    retry_backoff=10,
    retry_backoff_max=600,
    max_retries=8,
    acks_late=True,
)
def validate_firmware_task(firmware_id: int) -> None:
    services.validate_firmware(firmware_id)


@shared_task(soft_time_limit=60, time_limit=90, ignore_result=True)
def sweep_pending_firmware() -> None:
    """The periodic backstop: validation of uploads whose task was never
    enqueued or was lost. Validating twice is harmless (a decided row is a no-op).
    Only uploads older than the validation's own time limit, so one still being
    validated is left to finish."""
    for firmware_id in services.stale_pending_firmware_ids(timedelta(seconds=FIRMWARE_SWEEP_AGE_SECONDS)):
        if not enqueue(validate_firmware_task, firmware_id):
            return


# A delta that cannot be built or is not smaller is a permanent outcome the
# service records (`failed` with its reason, `not_worth_it`); only the store
# being unreachable is retried. A task killed mid-build leaves its claim to
# lapse, and the sweep counts the attempts (firmware/deltas.py, MAX_ATTEMPTS).
@shared_task(
    soft_time_limit=960,
    time_limit=1020,
    autoretry_for=(services.StorageUnavailable,),
    retry_backoff=10,
    retry_backoff_max=600,
    max_retries=5,
    acks_late=True,
)
def generate_delta_task(delta_id: int) -> None:
    deltas.generate_delta(delta_id)


@shared_task(soft_time_limit=60, time_limit=90, ignore_result=True)
def sweep_pending_deltas() -> None:
    """The periodic backstop for delta builds never enqueued or lost with their
    worker. Building twice is harmless: a claimed or decided row is a no-op."""
    for delta_id in deltas.stale_pending_delta_ids():
        if not enqueue(generate_delta_task, delta_id):
            return
