"""Business rules for delta files (docs/firmware.md, "Delta updates"): which
(source, target) pairs get one, building it in the background, which one a
device may be sent, and the `update` payload that points at it.

A DeltaFirmware row is the work item. `request_deltas` creates it `pending`
and dispatches `firmware.tasks.generate_delta_task` on commit;
`generate_delta` (that task's one call) claims the row by compare-and-set,
builds and checks the file (firmware/delta.py), stores it through the firmware
storage and ends in `ready`, `failed` (with the reason) or `not_worth_it`.
Only the store being unreachable is retried; a claim whose task was lost is
taken again by the sweep after CLAIM_SECONDS; after MAX_ATTEMPTS claims the row
is `failed`, so a file that kills its worker cannot loop.

Imports: like firmware.services, this module enqueues its task on commit with
the one import back made when the dispatch runs.
"""

from __future__ import annotations

import logging
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterable
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.core.files import File
from django.core.files.storage import FileSystemStorage
from django.db import DatabaseError, transaction
from django.db.models import F, Q
from django.utils import timezone

from firmware import delta, fwfile, services
from firmware.downloads import signed_path
from firmware.models import DeltaFirmware, DeltaStatus, Firmware, FirmwareStatus
from firmware.storage import firmware_storage
from nerveshub.lib.enqueue import enqueue

logger = logging.getLogger(__name__)

# A claim older than this belongs to a task that died: more than the task's
# time limit (firmware/tasks.py), so a build still under way is not doubled.
CLAIM_SECONDS = 1200
# Claims of one row before it is given up as `failed`.
MAX_ATTEMPTS = 3
# Seconds one xdelta3 run (encode or decode) may take; the task's own limit
# bounds the whole build.
XDELTA3_TIMEOUT = 600
# Source firmware per target and request, the most common on devices first:
# a fleet spread over many old versions does not start hundreds of builds.
MAX_SOURCES = 20
_FWUP_VERSION = re.compile(r"^\s*v?(\d{1,6})\.(\d{1,6})\.(\d{1,6})(-)?")


def deltas_available() -> bool:
    """Whether this hub builds and sends deltas at all (xdelta3 installed)."""
    return delta.xdelta3_path() is not None


def fwup_at_least(reported: str, needed: str) -> bool:
    """Whether the fwup a device reported applies what needs `needed`. A
    missing or unreadable version is too old; a pre-release of the needed
    version is too."""
    match = _FWUP_VERSION.match(reported or "")
    wanted = _FWUP_VERSION.match(needed or "")
    if match is None or wanted is None:
        return False
    have = tuple(int(g) for g in match.groups()[:3])
    need = tuple(int(g) for g in wanted.groups()[:3])
    return have > need or (have == need and match.group(4) is None)


# --- Requesting and building ---------------------------------------------------------


def request_deltas(target: Firmware, source_uuids: Iterable[str]) -> list[int]:
    """Pending rows for (source, target) for each source uuid that is a valid
    firmware of the target's product, and their builds dispatched on commit.
    Existing pairs are left as they are, whatever their state. Returns the ids
    of the rows created."""
    if not deltas_available() or target.status != FirmwareStatus.VALID or not target.delta_resources:
        return []
    uuids = [u for u in dict.fromkeys(source_uuids) if u and u != target.uuid][:MAX_SOURCES]
    if not uuids:
        return []
    sources = (
        Firmware.objects.valid()
        .firmware()
        .filter(product_id=target.product_id, uuid__in=uuids)
        .exclude(storage_name="")
        .exclude(deltas_from__target=target)
    )
    created: list[int] = []
    for source in sources:
        row, made = DeltaFirmware.objects.get_or_create(source=source, target=target)
        if made:
            created.append(row.pk)
            transaction.on_commit(partial(_dispatch, row.pk))
    return created


def _dispatch(delta_id: int) -> None:
    # Imported when called: firmware.tasks imports this module.
    from firmware.tasks import generate_delta_task

    try:
        enqueue(generate_delta_task, delta_id)
    except Exception:
        # In embedded mode the build runs right here; the row stays pending for the sweep.
        logger.exception("delta %s: the build did not run; the sweep will retry it", delta_id)


def stale_pending_delta_ids(now: datetime | None = None) -> list[int]:
    """Pending rows whose build was never dispatched or whose task was lost."""
    now = now or timezone.now()
    lost = now - timedelta(seconds=CLAIM_SECONDS)
    unclaimed = Q(claimed_at__isnull=True, created_at__lt=now - timedelta(seconds=60))
    return list(
        DeltaFirmware.objects.filter(status=DeltaStatus.PENDING)
        .filter(unclaimed | Q(claimed_at__lt=lost))
        .order_by("pk")
        .values_list("pk", flat=True)[:500]
    )


def _finish(row: DeltaFirmware, status: str, reason: str, **fields: object) -> bool:
    """pending -> `status`, only for the claim this build holds."""
    changed = DeltaFirmware.objects.filter(pk=row.pk, status=DeltaStatus.PENDING, claimed_at=row.claimed_at).update(
        status=status, reason=reason[:2000], finished_at=timezone.now(), **fields
    )
    if changed:
        logger.info("delta %s: %s %s", row.pk, status, reason)
    return bool(changed)


def _fetch(name: str, path: Path) -> None:
    with services._open_stored(name) as stored, path.open("wb") as out:
        shutil.copyfileobj(stored, out, fwfile.CHUNK)


def _store(path: Path, org_id: int) -> str:
    wanted = f"{org_id}/delta-{secrets.token_hex(16)}.fw"
    try:
        with path.open("rb") as handle:
            return str(firmware_storage().save(wanted, File(handle, name=wanted)))
    except Exception as exc:
        services._delete_stored(wanted)
        raise services.StorageUnavailable(f"cannot store {wanted}: {exc}") from exc


def _claim(delta_id: int) -> DeltaFirmware | None:
    now = timezone.now()
    free = Q(claimed_at__isnull=True) | Q(claimed_at__lt=now - timedelta(seconds=CLAIM_SECONDS))
    claimed = (
        DeltaFirmware.objects.filter(pk=delta_id, status=DeltaStatus.PENDING)
        .filter(free)
        .update(claimed_at=now, attempts=F("attempts") + 1)
    )
    if not claimed:
        return None
    return DeltaFirmware.objects.select_related("source", "target").get(pk=delta_id)


def generate_delta(delta_id: int) -> DeltaFirmware | None:
    """Build, check and store one delta. A missing, decided or claimed row is a
    no-op, so re-running the task is safe. Raises only what is not the files'
    fault: StorageUnavailable (retried), a database error, the time limit."""
    row = _claim(delta_id)
    if row is None:
        return DeltaFirmware.objects.filter(pk=delta_id).first()
    _build_claimed(row)
    row.refresh_from_db()
    return row


def _build_claimed(row: DeltaFirmware) -> None:
    if row.attempts > MAX_ATTEMPTS:
        _finish(row, DeltaStatus.FAILED, f"Gave up after {MAX_ATTEMPTS} attempts that did not finish.")
        return
    source, target = row.source, row.target
    if not all(f.status == FirmwareStatus.VALID and f.storage_name for f in (source, target)):
        _finish(row, DeltaStatus.FAILED, "The source or the target firmware is no longer valid.")
        return
    stored = ""
    try:
        with tempfile.TemporaryDirectory(prefix="nerveshub-delta-") as tmp:
            work = Path(tmp)
            _fetch(source.storage_name, work / "source.fw")
            _fetch(target.storage_name, work / "target.fw")
            limits = services._limits()
            built = delta.build_delta(
                work / "source.fw", work / "target.fw", work / "delta.fw", work, limits=limits, timeout=XDELTA3_TIMEOUT
            )
            delta.verify_delta(
                work / "source.fw", work / "target.fw", work / "delta.fw", work, limits=limits, timeout=XDELTA3_TIMEOUT
            )
            with (work / "delta.fw").open("rb") as handle:
                checksums = fwfile.file_checksums(handle)
            stored = _store(work / "delta.fw", target.org_id)
    except delta.NotWorthIt as exc:
        _finish(row, DeltaStatus.NOT_WORTH_IT, exc.reason)
        return
    except (delta.DeltaFailed, fwfile.InvalidFirmware) as exc:
        _finish(row, DeltaStatus.FAILED, exc.reason)
        return
    except services.StorageUnavailable:
        # Worth another try: give the claim back so the retry can take it.
        DeltaFirmware.objects.filter(pk=row.pk, claimed_at=row.claimed_at).update(claimed_at=None)
        raise
    except (DatabaseError, SoftTimeLimitExceeded):
        raise  # the claim lapses and the sweep takes the row again
    except Exception as exc:
        logger.exception("delta %s: unexpected error while building it", row.pk)
        _finish(row, DeltaStatus.FAILED, f"The delta could not be built ({type(exc).__name__}).")
        return
    ready = _finish(
        row,
        DeltaStatus.READY,
        "",
        size=checksums.size,
        sha256=checksums.sha256,
        partial_sha256=checksums.partials,
        storage_name=stored,
        patched_resources=built.patched,
        fwup_version=built.fwup_version,
    )
    if not ready:
        # The claim lapsed and another build finished first: these bytes are nobody's.
        services._delete_stored(stored)


# --- Sending -------------------------------------------------------------------------


def ready_deltas(target: Firmware, source_uuids: Iterable[str]) -> dict[str, DeltaFirmware]:
    """The ready deltas to `target`, by source uuid (empty when deltas are unavailable)."""
    uuids = {u for u in source_uuids if u}
    if not uuids or not deltas_available():
        return {}
    rows = (
        DeltaFirmware.objects.filter(
            target=target, status=DeltaStatus.READY, source__uuid__in=uuids, source__product_id=target.product_id
        )
        .exclude(storage_name="")
        .select_related("source")
    )
    return {row.source.uuid or "": row for row in rows}


def delta_url(row: DeltaFirmware) -> str:
    """An expiring, signed URL for the delta file (as firmware.services.download_url)."""
    storage = firmware_storage()
    if isinstance(storage, FileSystemStorage):
        return settings.PUBLIC_URL + signed_path(row.storage_name, f"{row.target.uuid}-delta-{row.pk}")
    return str(storage.url(row.storage_name, expire=settings.FIRMWARE_URL_TTL))  # type: ignore[call-arg]


def delta_payload(row: DeltaFirmware, deployment_id: int | None = None) -> services.UpdatePayload:
    """The `update` payload (docs/device-protocol.md §6.1) for a delta: the
    target's `firmware_meta`, the delta's URL, size and checksums."""
    payload = services.update_payload(row.target, deployment_id)
    payload["firmware_url"] = delta_url(row)
    payload["size"] = row.size
    payload["checksum"] = row.sha256.upper()
    payload["partials_checksums"] = [p.upper() for p in row.partial_sha256]
    return payload
