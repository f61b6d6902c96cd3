"""Celery tasks of the firmware app: thin wrappers that take ids and call one service."""

from __future__ import annotations

from celery import shared_task

from firmware import services


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
