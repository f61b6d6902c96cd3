"""Rollouts: which deployment a device belongs to, which devices get an update
now, and what each outcome means.

The orchestrator (`run_rollout`) claims update slots under the deployment's row
lock: it counts the in-flight rows and inserts at most the free number of
`requested` DeviceUpdate rows in the same transaction. Two workers serialize on
that lock, so `concurrent_updates` cannot be exceeded; a worker that dies
mid-claim rolls back and claims nothing. The partial unique index on in-flight
rows per device makes a second push to a busy device impossible. Pushes go out
after the claim commits.

This module is the deployments service in fact: every write to a deployment
(save_deployment, set_active, pause, resume, retry_failed, approve_stage) lives
here, because each must then recompute membership or wake the orchestrator.
`deployments.services` holds the device-report rules this module builds on and
imports nothing from it (see docs/architecture.md).
Its Celery tasks (`deployments/tasks.py`) call it, and it enqueues them on
commit: that one import back, made when `_enqueue` runs, is the shape of a
service and its tasks, and keeps `tasks.py` a thin wrapper.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import BooleanField, Count, Exists, ExpressionWrapper, F, OuterRef, Q, QuerySet
from django.utils import timezone

from deployments import archives, deltas, gate, preflight, services, soak, windows
from deployments.models import (
    INFLIGHT_STATUSES,
    Deployment,
    DeploymentStage,
    DeviceUpdate,
    StageMember,
    UpdateStatus,
)
from deployments.versions import InvalidRequirement, Requirement, parse_version
from devices import publish
from devices.models import Device, ValidationStatus, online_q
from devices.services import JoinReport
from firmware.models import Firmware, FirmwareKind, FirmwareStatus
from firmware.services import UpdatePayload, update_payload
from nerveshub.lib import aioredis
from nerveshub.lib.enqueue import enqueue
from nerveshub.lib.validation import refuse_unless_valid
from nerveshub.tenancy.models import Product
from nerveshub.tenancy.services import Actor, audit, save_audited

logger = logging.getLogger(__name__)

# Attempts that ended badly: they feed the penalty box and the circuit breaker.
FAILED_STATUSES = (UpdateStatus.FAILED, UpdateStatus.EXPIRED)
FINISHED_STATUSES = (UpdateStatus.SUCCEEDED, *FAILED_STATUSES)


# --- Membership --------------------------------------------------------------------


class FirmwareTarget(Protocol):
    @property
    def platform(self) -> str: ...
    @property
    def architecture(self) -> str: ...


class MembershipRules(Protocol):
    """What membership reads of a deployment: a Deployment, or the columns a
    device's connect read with it (devicelink.hotpath)."""

    @property
    def product_id(self) -> int: ...
    @property
    def conditions_version(self) -> str: ...
    @property
    def conditions_tags(self) -> list[str]: ...
    @property
    def firmware(self) -> FirmwareTarget: ...


class MembershipFacts(Protocol):
    """What membership reads of a device."""

    @property
    def product_id(self) -> int: ...
    @property
    def firmware_uuid(self) -> str: ...
    @property
    def firmware_platform(self) -> str: ...
    @property
    def firmware_architecture(self) -> str: ...
    @property
    def firmware_version(self) -> str: ...
    @property
    def tags(self) -> list[str]: ...


def membership_problems(deployment: MembershipRules, device: MembershipFacts) -> list[str]:
    """Why `device` cannot belong to `deployment` (empty: it can)."""
    problems: list[str] = []
    firmware = deployment.firmware
    if device.product_id != deployment.product_id:
        problems.append("other product")
    if not device.firmware_uuid:
        problems.append("firmware not reported yet")
    else:
        if device.firmware_platform != firmware.platform:
            problems.append(f"platform {device.firmware_platform or '?'} ≠ {firmware.platform}")
        if device.firmware_architecture != firmware.architecture:
            problems.append(f"architecture {device.firmware_architecture or '?'} ≠ {firmware.architecture}")
        if deployment.conditions_version.strip():
            try:
                requirement = Requirement.parse(deployment.conditions_version)
            except InvalidRequirement:
                problems.append("deployment version condition is invalid")
            else:
                if not requirement.matches(device.firmware_version):
                    problems.append(f"version {device.firmware_version or '?'} does not match {requirement}")
    missing = [t for t in deployment.conditions_tags if t not in device.tags]
    if missing:
        problems.append("missing tags: " + ", ".join(missing))
    return problems


def _rank(deployment: Deployment, device: Device) -> tuple[object, ...]:
    # Highest target version first, then more tags in common, then the oldest
    # deployment (docs/reference-behaviour.md §6.1).
    version = parse_version(deployment.firmware.version)
    shared = len(set(deployment.conditions_tags) & set(device.tags))
    return (version is not None, version, shared, -deployment.pk)


def best_deployment_for(device: Device) -> Deployment | None:
    candidates = [
        d
        for d in Deployment.objects.filter(product_id=device.product_id, is_active=True)
        .select_related("firmware")
        .filter(firmware__status=FirmwareStatus.VALID)
        if not membership_problems(d, device)
    ]
    if not candidates:
        return None
    return max(candidates, key=lambda d: _rank(d, device))


def assign_deployment(device_id: int, actor: Actor = "orchestrator", *, seen: Device | None = None) -> int | None:
    """Recompute the device's deployment: keep the current one while the device
    still matches it and it is active, else take the best match. Returns the
    deployment id the device now belongs to.

    `seen` is the device as just read with its deployment and firmware (a join):
    when that shows nothing to change, nothing is locked or written."""
    if seen is not None:
        current = seen.deployment
        if current is not None and current.is_active and not membership_problems(current, seen):
            return current.pk
        if current is None and best_deployment_for(seen) is None:
            return None
    with transaction.atomic():
        device = Device.objects.select_for_update(no_key=True).get(pk=device_id)
        current = (
            Deployment.objects.select_related("firmware").filter(pk=device.deployment_id).first()
            if device.deployment_id
            else None
        )
        if current is not None and current.is_active and not membership_problems(current, device):
            return current.pk
        chosen = best_deployment_for(device)
        chosen_id = chosen.pk if chosen else None
        if chosen_id != device.deployment_id:
            Device.objects.filter(pk=device_id).update(deployment_id=chosen_id, updated_at=timezone.now())
            audit(
                actor,
                "device.deployment_changed",
                device,
                details={"from": device.deployment_id, "to": chosen_id, "name": chosen.name if chosen else None},
            )
    return chosen_id


def reassign_product(product_id: int, actor: Actor = "orchestrator") -> int:
    """Recompute membership for every device of a product (after a deployment's
    conditions, firmware or activation changed). Returns how many moved."""
    moved = 0
    ids = list(Device.objects.filter(product_id=product_id, deleted_at__isnull=True).values_list("pk", flat=True))
    for device_id in ids:
        before = Device.objects.filter(pk=device_id).values_list("deployment_id", flat=True).first()
        if assign_deployment(device_id, actor) != before:
            moved += 1
    return moved


# --- Eligibility for an update now ----------------------------------------------------


def _held(now: datetime) -> Exists:
    # A rescheduled or ignored attempt holds the device until its retry time.
    return Exists(
        DeviceUpdate.objects.filter(
            device_id=OuterRef("pk"),
            deployment_id=OuterRef("deployment_id"),
            firmware_id=OuterRef("deployment__firmware_id"),
            retry_after__gt=now,
        )
    )


def eligible_devices(
    deployment: Deployment, now: datetime | None = None, *, require_online: bool = True
) -> QuerySet[Device]:
    """Devices of the deployment that may get the update right now: those that
    have not failed it yet first, then by oldest connection. Without
    `require_online`, also devices with no live socket (a polling device
    asking now: poll_for_update)."""
    now = now or timezone.now()
    inflight = DeviceUpdate.objects.filter(device_id=OuterRef("pk"), status__in=INFLIGHT_STATUSES)
    failed_before = DeviceUpdate.objects.filter(
        device_id=OuterRef("pk"),
        deployment_id=deployment.pk,
        firmware_id=deployment.firmware_id,
        status__in=FAILED_STATUSES,
    )
    # Under a refusing preflight, devices that would refuse the firmware are
    # never offered it (deployments/preflight.py).
    return preflight.exclude_refused(
        deployment,
        Device.objects.filter(
            online_q(now) if require_online else Q(),
            deployment=deployment,
            deleted_at__isnull=True,
            updates_enabled=True,
        )
        .exclude(firmware_uuid=deployment.firmware.uuid)
        .exclude(penalty_box_until__gt=now)
        .exclude(firmware_validation=ValidationStatus.NOT_VALIDATED)
        .exclude(Exists(inflight))
        .exclude(_held(now))
        .annotate(failed_before=Exists(failed_before))
        .order_by("failed_before", "connected_at", "pk"),
    )


def update_problems(deployment: Deployment, device: Device, now: datetime | None = None) -> list[str]:
    """Why `device` would not get the update now (for the preview)."""
    now = now or timezone.now()
    problems = membership_problems(deployment, device)
    if device.deleted_at is not None:
        problems.append("deleted")
    if not device.online and not device.is_polling(now):
        problems.append("offline")
    if not device.updates_enabled:
        problems.append("updates disabled")
    if device.penalty_box_until and device.penalty_box_until > now:
        problems.append(f"in penalty box until {device.penalty_box_until:%Y-%m-%d %H:%M}")
    if device.firmware_uuid and device.firmware_uuid == deployment.firmware.uuid:
        problems.append("already on the target firmware")
    if device.firmware_validation == ValidationStatus.NOT_VALIDATED:
        problems.append("current firmware not validated")
    if DeviceUpdate.objects.filter(device=device, status__in=INFLIGHT_STATUSES).exists():
        problems.append("an update is in flight")
    held = DeviceUpdate.objects.filter(
        device=device, deployment=deployment, firmware=deployment.firmware, retry_after__gt=now
    ).first()
    if held is not None and held.retry_after is not None:
        problems.append(f"{held.status} until {held.retry_after:%Y-%m-%d %H:%M}")
    return problems


@dataclass
class PreviewRow:
    device: Device
    eligible: bool
    problems: list[str]
    delivery: str = ""  # for an eligible device: delta or full, and why full
    preflight: list[str] = field(default_factory=list)  # why it would refuse the firmware


def preview(deployment: Deployment, limit: int = 500) -> list[PreviewRow]:
    """Devices of the product, whether they would be targeted now and why not."""
    now = timezone.now()
    devices = (
        Device.objects.filter(product_id=deployment.product_id, deleted_at__isnull=True)
        .select_related("hub_lease")
        .order_by("identifier")[:limit]
    )
    rows = []
    for device in devices:
        problems = update_problems(deployment, device, now)
        if device.deployment_id not in (None, deployment.pk) and not problems:
            problems.append("belongs to another deployment")
        rows.append(PreviewRow(device=device, eligible=not problems, problems=problems))
    by_device = {r.device.pk: r for r in rows}
    for pk, reasons in preflight.explain(deployment, rows).items():
        by_device[pk].preflight = reasons
    closed = windows.closed_reason(current_windows(deployment), now)
    for row in rows if closed else ():
        row.problems.append(closed)
        row.eligible = False
    eligible = {r.device.pk: r for r in rows if r.eligible}
    for pk, delivery in deltas.plan(deployment, [r.device for r in eligible.values()]).items():
        eligible[pk].delivery = delivery.label
    return rows


def current_windows(deployment: Deployment) -> list[str]:
    """The maintenance windows that rule now: the running stage's own, else
    the deployment's."""
    stage = (
        DeploymentStage.objects.filter(deployment=deployment, started_at__isnull=False, completed_at__isnull=True)
        .order_by("position")
        .values_list("windows", flat=True)
        .first()
    )
    return list(windows.effective(deployment.windows, stage))


# --- The orchestrator ------------------------------------------------------------------


@dataclass
class RolloutRun:
    claimed: list[int] = field(default_factory=list)  # device ids pushed this run
    resent: list[int] = field(default_factory=list)  # device ids whose push was repeated
    expired: int = 0
    skipped: str = ""


def _claim(deployment: Deployment, devices: list[Device]) -> list[DeviceUpdate]:
    """Insert a `requested` row for each device (under the deployment lock):
    one statement for the batch; one savepoint per device only when another
    path put an update in flight for one of them meanwhile. Returns the rows
    inserted."""
    chosen = deltas.chosen_deltas(deployment, devices)
    # What each device runs now, for a revert (deployments/revert.py).
    previous = {
        f.uuid: f
        for f in Firmware.objects.filter(
            product_id=deployment.product_id, kind=FirmwareKind.FIRMWARE, uuid__in={d.firmware_uuid for d in devices}
        )
    }
    rows = [
        DeviceUpdate(
            device=d,
            deployment=deployment,
            firmware=deployment.firmware,
            delta=chosen.get(d.pk),
            from_firmware=previous.get(d.firmware_uuid),
        )
        for d in devices
    ]
    try:
        with transaction.atomic():
            DeviceUpdate.objects.bulk_create(rows)
    except IntegrityError:
        rows = []
        for device in devices:
            try:
                with transaction.atomic():
                    rows.append(
                        DeviceUpdate.objects.create(
                            device=device,
                            deployment=deployment,
                            firmware=deployment.firmware,
                            delta=chosen.get(device.pk),
                            from_firmware=previous.get(device.firmware_uuid),
                        )
                    )
            except IntegrityError:
                continue  # another path put an update in flight for this device
    for row in rows:
        publish.page_device_update(row.device_id, UpdateStatus.REQUESTED, 0, deployment.pk, org_id=deployment.org_id)
    return rows


def _resend_unacknowledged(deployment: Deployment, now: datetime) -> list[tuple[int, int, int]]:
    """Updates still `requested` a while after their claim whose push was lost:
    never sent (a worker died between commit and send, or the send failed), or
    sent to a socket the device no longer uses. Their slot is already held; they
    get the push again. A push that reached the device's current socket is not
    repeated while its acknowledgement may just be late (a busy hub records it
    late). A push handed to the channel layer is lost too when the layer loses it (a
    Redis restart, or the message's expiry in a backed-up queue): one sent to
    the device's current socket is repeated once the layer would have dropped it
    anyway, and the socket does not send its device the same update twice.
    Returns (update id, device id, pushes so far) for push_updates."""
    cutoff = now - timedelta(seconds=resend_after_seconds())
    lost = now - timedelta(seconds=lost_push_seconds())
    reached_socket = Q(push_sent=True, pushed_channel=F("device__socket_channel"))
    return list(
        DeviceUpdate.objects.filter(
            deployment=deployment,
            firmware_id=deployment.firmware_id,
            status=UpdateStatus.REQUESTED,
            updated_at__lt=cutoff,
        )
        .filter(online_q(now, prefix="device__"))
        .filter(~reached_socket | Q(updated_at__lt=lost))
        .values_list("pk", "device_id", "pushes")
    )


def resend_after_seconds() -> int:
    # One backstop period (at least 10 s): the backstop run is what finds a
    # lost push when nothing else wakes the orchestrator.
    return max(10, int(settings.ROLLOUT_BACKSTOP_SECONDS))


def lost_push_seconds() -> int:
    """How long after its push an unacknowledged update counts as lost even if
    it was handed to its device's socket: the channel layer's message expiry
    (what it holds longer, it drops) plus the resend period, so a push that was
    only acknowledged late is past the resend rule first."""
    return int(settings.CHANNEL_MESSAGE_EXPIRY) + resend_after_seconds()


def update_once_key(update_id: int) -> str:
    """The `once` key of an update's pushes (devices.publish.push_message)."""
    return f"update:{update_id}"


def _mark_pushed(update_id: int, seen_pushes: int, channel: str) -> bool:
    """Compare-and-set: record a push of a `requested` update to `channel`,
    unless another push or an acknowledgement came first since the caller read
    `seen_pushes`. Only the caller that wins sends."""
    return bool(
        DeviceUpdate.objects.filter(pk=update_id, status=UpdateStatus.REQUESTED, pushes=seen_pushes).update(
            pushes=seen_pushes + 1, pushed_channel=channel, push_sent=False, updated_at=timezone.now()
        )
    )


def _confirm_sent(pushed: list[tuple[int, int]]) -> None:
    """Record that these (update id, push count) pushes left: only a push that
    is still the update's latest."""
    for update_id, pushes in pushed:
        DeviceUpdate.objects.filter(pk=update_id, pushes=pushes).update(push_sent=True)


def push_updates(
    updates: list[tuple[int, int]], payload: dict[str, Any], payloads: dict[int, dict[str, Any]] | None = None
) -> None:
    """After commit, push `update` for each (update id, pushes when the push was
    decided) to its device's socket: one query for the socket channels, one
    compare-and-set per update, and one event loop for all the sends (a claim
    of 1,000 devices is one round of pipelined channel-layer sends). `payloads`
    replaces `payload` for the updates it names (those sent a delta)."""
    chosen = payloads or {}
    if not updates:
        return
    seen = dict(updates)

    def send() -> None:
        rows = DeviceUpdate.objects.filter(pk__in=list(seen), status=UpdateStatus.REQUESTED).values_list(
            "pk", "device__socket_channel"
        )
        with transaction.atomic():
            sends = [(pk, channel) for pk, channel in rows if channel and _mark_pushed(pk, seen[pk], channel)]
        layer = get_channel_layer()
        if layer is None or not sends:
            return
        failed: list[int] = []

        async def send_all() -> None:
            results = await asyncio.gather(
                *(
                    publish.send_to_socket(
                        layer, c, publish.push_message("update", chosen.get(pk, payload), once=update_once_key(pk))
                    )
                    for pk, c in sends
                ),
                return_exceptions=True,
            )
            for (pk, channel), result in zip(sends, results, strict=True):
                if isinstance(result, BaseException):
                    logger.warning("update push to %s failed: %r", channel, result)
                    failed.append(pk)

        try:
            async_to_sync(send_all)()
        except Exception:
            logger.exception("update pushes to %d device(s) failed", len(sends))
            failed = [pk for pk, _ in sends]
        if failed:
            # Not sent after all: the next run's resend, or the device's next
            # join, sends it (the row holds the slot meanwhile).
            DeviceUpdate.objects.filter(pk__in=failed, status=UpdateStatus.REQUESTED).update(pushed_channel="")
        _confirm_sent([(pk, seen[pk] + 1) for pk, _ in sends if pk not in failed])

    transaction.on_commit(send)


def _lock_deployment(deployment_id: int) -> Deployment | None:
    return Deployment.objects.select_for_update(no_key=True).select_related("firmware").filter(pk=deployment_id).first()


def expire_stale_updates(deployment: Deployment, now: datetime) -> int:
    cutoff = now - timedelta(minutes=deployment.inflight_timeout_minutes)
    stale = list(
        DeviceUpdate.objects.filter(deployment=deployment, status__in=INFLIGHT_STATUSES, updated_at__lt=cutoff)
        .order_by("pk")
        .values_list("pk", "status")
    )
    expired = 0
    for update_id, status in stale:
        if services.end_stale_update(update_id, status, now):
            expired += 1
            # The caller is the orchestrator itself: no wake-up needed.
            attempt_finished(update_id, wake_orchestrator=False)
    return expired


def run_rollout(deployment_id: int) -> RolloutRun:
    """Re-send lost pushes, then fill the deployment's free slots with eligible
    connected devices."""
    run = RolloutRun()
    now = timezone.now()
    deployment = Deployment.objects.select_related("firmware").filter(pk=deployment_id).first()
    if deployment is None:
        run.skipped = "deployment gone"
        return run
    run.expired = expire_stale_updates(deployment, now)
    settle_soaks(now, deployment_id)
    gate.evaluate(deployment, now)
    with transaction.atomic():
        deployment = _lock_deployment(deployment_id)
        if deployment is None or not deployment.is_active:
            run.skipped = "inactive"
            return run
        if deployment.paused_at is not None:
            run.skipped = "paused"
            return run
        if deployment.firmware.status != FirmwareStatus.VALID:
            run.skipped = "firmware not valid"
            return run
        # Lost pushes before the slot count: their slots are held already, and
        # when they hold every slot nothing else would free one before the
        # in-flight timeout.
        resend = _resend_unacknowledged(deployment, now)
        run.resent = [device_id for _, device_id, _ in resend]
        claimed = _claim_free_slots(deployment, now, run)
        push_updates(
            [*((pk, 0) for pk in claimed), *((pk, pushes) for pk, _, pushes in resend)],
            dict(update_payload(deployment.firmware, deployment.pk)),
            deltas.delta_payloads([*claimed, *(pk for pk, _, _ in resend)]),
        )
    return run


def _claim_free_slots(
    deployment: Deployment, now: datetime, run: RolloutRun, candidates: QuerySet[Device] | None = None
) -> list[int]:
    """Claim a slot for as many eligible devices (of `candidates`, by default
    every connected one) as there are free slots (under the deployment lock).
    Returns the updates inserted."""
    scope = _stage_scope(deployment, now)
    if isinstance(scope, str):
        run.skipped = scope
        return []
    # Only new claims wait for a maintenance window: an attempt under way
    # when one closes carries on, and its resends are not claims.
    if not windows.is_open(windows.effective(deployment.windows, scope.windows if scope else None), now):
        run.skipped = "outside the maintenance window"
        return []
    inflight = DeviceUpdate.objects.filter(deployment=deployment, status__in=INFLIGHT_STATUSES)
    slots = deployment.concurrent_updates - inflight.count()
    if candidates is None:
        candidates = eligible_devices(deployment, now)
    if scope is not None:
        members = StageMember.objects.filter(deployment=deployment, stage__position__lte=scope.position)
        candidates = candidates.filter(pk__in=members.values("device_id"))
        stage_limit = scope.concurrent_updates or deployment.concurrent_updates
        stage_members = StageMember.objects.filter(stage=scope).values("device_id")
        slots = min(slots, stage_limit - inflight.filter(device_id__in=stage_members).count())
    if slots <= 0:
        run.skipped = "no free slot"
        return []
    claimed = []
    for update in _claim(
        deployment, list(candidates.only("pk", "org_id", "identifier", "firmware_uuid", "fwup_version")[:slots])
    ):
        audit(
            "orchestrator",
            "update.requested",
            update.device,
            details={"deployment": deployment.name, "firmware": deployment.firmware.uuid, "update": update.pk},
        )
        claimed.append(update.pk)
        run.claimed.append(update.device_id)
    return claimed


# --- Stages ------------------------------------------------------------------------------


def _stage_scope(deployment: Deployment, now: datetime) -> DeploymentStage | str | None:
    """The stage whose members may be updated now (None: no stages, or every
    stage completed and the rest of the devices follow), or why nothing may.
    Runs under the deployment lock."""
    previous_done: datetime | None = None
    for stage in DeploymentStage.objects.filter(deployment=deployment).order_by("position"):
        if stage.completed_at is not None:
            previous_done = stage.completed_at
            continue
        if stage.started_at is None:
            if previous_done is not None and previous_done + timedelta(minutes=stage.soak_minutes) > now:
                until = previous_done + timedelta(minutes=stage.soak_minutes)
                return f"soaking before stage {stage.name} until {until:%H:%M}"
            if stage.requires_approval and stage.approved_at is None:
                return f"stage {stage.name} waits for approval"
            _start_stage(deployment, stage, now)
            return stage
        if _stage_done(deployment, stage, now):
            DeploymentStage.objects.filter(pk=stage.pk, completed_at__isnull=True).update(completed_at=now)
            audit("orchestrator", "deployment.stage_completed", deployment, details={"stage": stage.name})
            previous_done = now
            continue
        return stage
    return None


def _start_stage(deployment: Deployment, stage: DeploymentStage, now: datetime) -> None:
    claimed = StageMember.objects.filter(deployment=deployment).count()
    if stage.size_count is not None:
        wanted = stage.size_count
    else:
        total = Device.objects.filter(deployment=deployment, deleted_at__isnull=True).count()
        wanted = math.ceil(total * (stage.size_percent or 0) / 100) - claimed
    taken = StageMember.objects.filter(deployment=deployment).values("device_id")
    # Connected devices first: a canary that is offline proves nothing.
    pool = (
        Device.objects.filter(deployment=deployment, deleted_at__isnull=True)
        .exclude(pk__in=taken)
        .exclude(firmware_uuid=deployment.firmware.uuid)
        .annotate(is_online=ExpressionWrapper(online_q(now), BooleanField()))
        .order_by("-is_online", "connected_at", "pk")
        .values_list("pk", flat=True)[: max(wanted, 0)]
    )
    StageMember.objects.bulk_create(
        [StageMember(deployment=deployment, stage=stage, device_id=pk, claimed_at=now) for pk in pool],
        ignore_conflicts=True,
    )
    DeploymentStage.objects.filter(pk=stage.pk, started_at__isnull=True).update(started_at=now)
    audit(
        "orchestrator",
        "deployment.stage_started",
        deployment,
        details={"stage": stage.name, "members": len(pool)},
    )


def _stage_done(deployment: Deployment, stage: DeploymentStage, now: datetime) -> bool:
    """Done when no member is in flight or still eligible, and (if it has
    members) at least one of them succeeded. Offline members do not hold the
    rollout back; they update when they return."""
    members = StageMember.objects.filter(stage=stage).values("device_id")
    if not StageMember.objects.filter(stage=stage).exists():
        return True
    # A member still soaking holds its stage: the next wave waits for its verdict.
    if DeviceUpdate.objects.filter(
        device_id__in=members, status__in=(*INFLIGHT_STATUSES, UpdateStatus.SOAKING)
    ).exists():
        return False
    if eligible_devices(deployment, now).filter(pk__in=members).exists():
        return False
    return DeviceUpdate.objects.filter(
        device_id__in=members, deployment=deployment, firmware_id=deployment.firmware_id, status=UpdateStatus.SUCCEEDED
    ).exists()


def approve_stage(actor: Actor, stage: DeploymentStage) -> bool:
    with transaction.atomic():
        changed = DeploymentStage.objects.filter(pk=stage.pk, approved_at__isnull=True).update(
            approved_at=timezone.now(), approved_by=str(actor)[:200]
        )
        if changed:
            audit(actor, "deployment.stage_approved", stage.deployment, details={"stage": stage.name})
            wake(stage.deployment_id)
    return bool(changed)


def push_pending_update(device_id: int, channel: str | None = None) -> bool:
    """On a join: send the `requested` update the device never acknowledged (it
    went away before the push reached it) to its socket `channel` (read when not
    given), unless that socket was sent it already: the orchestrator may have
    claimed the device between its connect and this join, and then its push is
    on the way to this socket. Returns whether one was sent."""
    update = (
        DeviceUpdate.objects.select_related("firmware", "deployment")
        .filter(device_id=device_id, status=UpdateStatus.REQUESTED)
        .first()
    )
    if update is None:
        return False
    deployment = update.deployment
    # An update without a deployment is an operator's manual push
    # (deployments.manual): re-sent like any other while its firmware is valid.
    stopped = deployment is not None and (not deployment.is_active or deployment.paused_at is not None)
    if stopped or update.firmware.status != FirmwareStatus.VALID:
        # Not re-sent: a stopped deployment pushes nothing new (the in-flight
        # timeout frees the slot), and only valid firmware has a download URL.
        return False
    if channel is None:
        channel = Device.objects.filter(pk=device_id).values_list("socket_channel", flat=True).first() or ""
    if not channel or update.pushed_channel == channel:
        return False
    if update.attempted_at is not None and _same_process(update.pushed_channel, channel):
        # The device had acknowledged it on a socket of this very process,
        # which is alive (it serves this join) and may still be draining that
        # socket: what the device sent there before it came back (its `failed`,
        # just before the reboot) may not be recorded yet, and pushing now
        # would start a second attempt for one claim. The orchestrator sends it
        # again one backstop period later if it is still `requested` by then
        # (_resend_unacknowledged); a late report that moves the row first
        # makes that push's compare-and-set miss. A socket of another process
        # is pushed to at once: that process may have died with the download.
        return False
    payload = deltas.delta_payloads([update.pk]).get(update.pk) or dict(
        update_payload(update.firmware, update.deployment_id)
    )
    with transaction.atomic():
        if not _mark_pushed(update.pk, update.pushes, channel):
            return False  # another push or the acknowledgement came first
        publish.send_to_channel(
            channel,
            "update",
            payload,
            then=lambda: _confirm_sent([(update.pk, update.pushes + 1)]),
            once=update_once_key(update.pk),
        )
    return True


def _same_process(address: str, other: str) -> bool:
    """Whether two device socket addresses belong to one hub process (an
    address starts with its process's channel)."""
    process = address.partition(publish.SOCKET_MARK)[0]
    return bool(address) and process == other.partition(publish.SOCKET_MARK)[0]


# --- Outcomes ------------------------------------------------------------------------


def attempt_finished(update_id: int, *, wake_orchestrator: bool = True) -> None:
    """After an update reached a final state: penalty box, circuit breaker, and
    a wake-up for the orchestrator (a slot is free)."""
    update = DeviceUpdate.objects.select_related("deployment", "device").filter(pk=update_id).first()
    if update is None or update.deployment is None:
        return
    gate.note_attempt(update)
    if update.status in FAILED_STATUSES:
        _penalise(update)
    if update.status in FINISHED_STATUSES:
        check_breaker(update.deployment.pk)
    if wake_orchestrator:
        with transaction.atomic():
            wake(update.deployment.pk)


def _penalise(update: DeviceUpdate) -> None:
    deployment = update.deployment
    assert deployment is not None
    now = timezone.now()
    last_success = (
        DeviceUpdate.objects.filter(device_id=update.device_id, status=UpdateStatus.SUCCEEDED)
        .order_by("-finished_at")
        .values_list("finished_at", flat=True)
        .first()
    )
    failures = DeviceUpdate.objects.filter(
        device_id=update.device_id, deployment=deployment, status__in=FAILED_STATUSES
    )
    if last_success is not None:
        failures = failures.filter(finished_at__gt=last_success)
    # What an operator forgave (forgive_failures) no longer counts.
    failures = failures.filter(forgiven_at__isnull=True)
    total = failures.count()
    recent = failures.filter(finished_at__gte=now - timedelta(seconds=deployment.penalty_rate_seconds)).count()
    if total >= deployment.penalty_attempts or recent >= deployment.penalty_rate_attempts:
        until = now + timedelta(minutes=deployment.penalty_minutes)
        with transaction.atomic():
            Device.objects.filter(pk=update.device_id).update(penalty_box_until=until)
            audit(
                "orchestrator",
                "device.penalty_boxed",
                update.device,
                details={"failed_attempts": total, "recent": recent, "until": until.isoformat()},
            )


def check_breaker(deployment_id: int) -> bool:
    """Pause the deployment when its failure share reaches the threshold.
    Returns whether this call paused it."""
    deployment = Deployment.objects.filter(pk=deployment_id).first()
    if deployment is None or deployment.paused_at is not None or not _breaker_reason(deployment):
        return False
    # Judged again under the deployment's row lock, where runs claim: a claim
    # committed since the first read counts (in flight, not failed), and none
    # can land between this verdict and the pause. Read without the lock, the
    # verdict was a run's claims too old, and the pause came after them.
    with transaction.atomic():
        deployment = _lock_deployment(deployment_id)
        if deployment is None or deployment.paused_at is not None:
            return False
        reason = _breaker_reason(deployment)
        if not reason:
            return False
        paused = Deployment.objects.filter(pk=deployment_id, paused_at__isnull=True).update(
            paused_at=timezone.now(), paused_reason=reason
        )
        if paused:
            audit("orchestrator", "deployment.paused_by_breaker", deployment, details={"reason": reason})
    return bool(paused)


def _breaker_reason(deployment: Deployment) -> str:
    """Why the breaker pauses the deployment now ("" when it does not)."""
    attempts = DeviceUpdate.objects.filter(deployment=deployment, firmware_id=deployment.firmware_id)
    finished_attempts = attempts
    if deployment.resumed_at is not None:
        # An operator resumed: judge only what happened since.
        finished_attempts = attempts.filter(finished_at__gte=deployment.resumed_at)
    finished, failed, inflight = _tally(finished_attempts, attempts)
    reason = ""
    if finished >= deployment.breaker_min_attempts and _breached(
        failed, finished, inflight, deployment.breaker_failure_percent
    ):
        reason = (
            f"{failed} of {finished} devices that finished their update failed, {inflight} in flight "
            f"(threshold {deployment.breaker_failure_percent}% of at least {deployment.breaker_min_attempts} devices)"
        )
    else:
        reason = _stage_breach(deployment, finished_attempts, attempts)
    return reason


def _tally(finished_attempts: QuerySet[DeviceUpdate], attempts: QuerySet[DeviceUpdate]) -> tuple[int, int, int]:
    """(finished, failed, in flight) devices the breaker judges. A device counts
    once however often it tried: it finished when one of its attempts did, it
    failed when none of them succeeded, and it is in flight when it has an
    attempt under way and none finished yet. Attempts the hub cut short
    (interrupted) are not finished (docs/rollout.md, "Rollout outcomes
    and the breaker")."""
    counts = finished_attempts.aggregate(
        finished=Count("device_id", distinct=True, filter=Q(status__in=FINISHED_STATUSES)),
        succeeded=Count("device_id", distinct=True, filter=Q(status=UpdateStatus.SUCCEEDED)),
    )
    done = finished_attempts.filter(status__in=FINISHED_STATUSES).values("device_id")
    # A soaking attempt is not finished yet: like one in flight, it may still fail.
    inflight = (
        attempts.filter(status__in=(*INFLIGHT_STATUSES, UpdateStatus.SOAKING)).exclude(device_id__in=done).count()
    )
    return counts["finished"], counts["finished"] - counts["succeeded"], inflight


def _breached(failed: int, finished: int, inflight: int, percent: int) -> bool:
    """Whether at least `percent` of the attempts made have failed, counting
    the ones still in flight as not failed. A failure finishes sooner than a
    success (which needs the reboot and the device's return on the new
    firmware), so judged over finished attempts alone the first sample of a
    wide rollout is mostly failures: 20 of the first 100 finished attempts of a
    10,000-device rollout with 1,000 slots had failed at a true failure rate of
    2.8 %. Counted this way the share is a lower bound of the rollout's final
    one, so a trip is never an artefact of that race; a firmware that fails
    often still trips it within the first slots' worth of attempts."""
    return failed > 0 and failed * 100 >= percent * (finished + inflight)


def _stage_breach(
    deployment: Deployment, finished_attempts: QuerySet[DeviceUpdate], attempts: QuerySet[DeviceUpdate]
) -> str:
    """The current stage's own failure tolerance, judged over its members with
    a minimum sample of min(breaker_min_attempts, stage size)."""
    stage = (
        DeploymentStage.objects.filter(deployment=deployment, started_at__isnull=False, completed_at__isnull=True)
        .order_by("position")
        .first()
    )
    if stage is None or stage.failure_percent is None:
        return ""
    members = StageMember.objects.filter(stage=stage)
    in_stage = members.values("device_id")
    finished, failed, inflight = _tally(
        finished_attempts.filter(device_id__in=in_stage), attempts.filter(device_id__in=in_stage)
    )
    sample = min(deployment.breaker_min_attempts, members.count())
    if finished and finished >= sample and _breached(failed, finished, inflight, stage.failure_percent):
        return (
            f"stage {stage.name}: {failed} of {finished} devices that finished their update failed, "
            f"{inflight} in flight (tolerance {stage.failure_percent}%)"
        )
    return ""


def wake(deployment_id: int) -> None:
    """Ask a worker to run the orchestrator for this deployment after commit.

    Wake-ups coalesce: while a run of this deployment is queued and not yet
    started, further wake-ups add nothing (a run fills every free slot, so one
    queued run serves them all). The run clears the mark before it reads any
    state, so a change committed after that wakes a new run."""
    transaction.on_commit(lambda: _enqueue(deployment_id))


# How long a queued mark lives without its run starting (a lost task message,
# a worker killed before it started the run): then wake-ups enqueue again.
WAKE_MARK_SECONDS = 10


def _wake_key(deployment_id: int) -> str:
    # The database name keeps two installations (or test runs) on one Redis apart.
    return f"nerveshub:rollout:queued:{django_settings_db_name()}:{deployment_id}"


def django_settings_db_name() -> str:
    return str(connection.settings_dict.get("NAME") or "")


_redis_client: Any = None


def _redis() -> Any:
    global _redis_client
    if _redis_client is None:
        # Imported on first use: only production mode (REDIS_URL set) wakes
        # through Redis, and embedded mode never loads the client.
        import redis

        _redis_client = redis.Redis.from_url(str(settings.REDIS_URL), socket_timeout=5)
    return _redis_client


def _enqueue(deployment_id: int) -> None:
    if settings.REDIS_URL:
        try:
            if not _redis().set(_wake_key(deployment_id), "1", nx=True, ex=WAKE_MARK_SECONDS):
                return  # a queued run will see this change
        except Exception:
            logger.exception("wake mark for deployment %s failed; enqueuing anyway", deployment_id)
    enqueue_run(deployment_id)


def wake_now(deployment_id: int) -> None:
    """`wake` outside a transaction: a join that wrote nothing (devicelink.hotpath)."""
    _enqueue(deployment_id)


async def wake_marked(deployment_id: int) -> bool:
    """`wake_now` from the event loop, for a join that wrote nothing: sets the
    wake mark on the loop's own Redis client (nerveshub.lib.aioredis). Returns
    whether a run must still be enqueued (`enqueue_run`, which publishes to
    Celery and so runs on a thread): False when a queued run will see the change."""
    if not settings.REDIS_URL:
        return True
    try:
        return bool(await aioredis.client().set(_wake_key(deployment_id), "1", nx=True, ex=WAKE_MARK_SECONDS))
    except Exception:
        logger.exception("wake mark for deployment %s failed; enqueuing anyway", deployment_id)
        return True


def enqueue_run(deployment_id: int) -> None:
    """A run of the deployment's orchestrator, after `wake_marked`."""
    # Imported when called: deployments.tasks imports this module (its tasks
    # call the orchestrator), the one cycle of the service-and-task shape (see
    # the module docstring).
    from deployments.tasks import run_rollout_task

    enqueue(run_rollout_task, deployment_id)


def run_started(deployment_id: int) -> None:
    """A run is about to read the deployment's state: later wake-ups must
    enqueue a new run."""
    if settings.REDIS_URL:
        try:
            _redis().delete(_wake_key(deployment_id))
        except Exception:
            logger.exception("could not clear the wake mark of deployment %s", deployment_id)


# --- Operator actions -------------------------------------------------------------------


def set_active(actor: Actor, deployment: Deployment, active: bool) -> bool:
    """Raises ValidationError when the deployment's trust preflight refuses."""
    if active and not deployment.is_active:
        preflight.refuse_activation(deployment)
    with transaction.atomic():
        changed = Deployment.objects.filter(pk=deployment.pk, is_active=not active).update(
            is_active=active, updated_at=timezone.now()
        )
        if changed:
            audit(actor, "deployment.activated" if active else "deployment.deactivated", deployment)
    if changed:
        reassign_product(deployment.product_id, actor)
        if active:
            with transaction.atomic():
                wake(deployment.pk)
                deployment.is_active = True
                deltas.request_on_commit(deployment)
    return bool(changed)


def pause(actor: Actor, deployment: Deployment, reason: str = "paused by an operator") -> bool:
    with transaction.atomic():
        changed = Deployment.objects.filter(pk=deployment.pk, paused_at__isnull=True).update(
            paused_at=timezone.now(), paused_reason=reason
        )
        if changed:
            audit(actor, "deployment.paused", deployment, details={"reason": reason})
    return bool(changed)


def resume(actor: Actor, deployment: Deployment) -> bool:
    """Resuming is explicit, also after the breaker tripped. From then on the
    breaker judges only attempts that finish after the resume."""
    with transaction.atomic():
        now = timezone.now()
        changed = Deployment.objects.filter(pk=deployment.pk, paused_at__isnull=False).update(
            paused_at=None, paused_reason="", resumed_at=now, updated_at=now
        )
        if changed:
            audit(actor, "deployment.resumed", deployment)
            gate.reset(deployment.pk)
            wake(deployment.pk)
    return bool(changed)


def retry_failed(actor: Actor, deployment: Deployment) -> int:
    """Let devices whose last attempt in this deployment failed try again: clear
    their penalty box, their failure count and any hold."""
    with transaction.atomic():
        device_ids = list(
            DeviceUpdate.objects.filter(deployment=deployment, status__in=(*FAILED_STATUSES, UpdateStatus.IGNORED))
            .order_by()  # the default ordering would make DISTINCT count rows, not devices
            .values_list("device_id", flat=True)
            .distinct()
        )
        Device.objects.filter(pk__in=device_ids).update(penalty_box_until=None)
        DeviceUpdate.objects.filter(deployment=deployment, device_id__in=device_ids, retry_after__isnull=False).update(
            retry_after=None
        )
        forgive_failures(device_ids)
        audit(actor, "deployment.retry_failed", deployment, details={"devices": len(device_ids)})
        wake(deployment.pk)
    return len(device_ids)


def forgive_failures(device_ids: list[int]) -> None:
    """An operator cleared these devices' penalty box or enabled their updates
    again (devices.services): their failed attempts no longer count toward the
    penalty box, any hold (ignored, rescheduled) is lifted, and their
    deployments' orchestrators are woken on commit, so a connected, eligible
    device is offered the update at once rather than at the next backstop run.
    Without the reset one more failure would box it again straight away.
    Called inside the caller's transaction."""
    if not device_ids:
        return
    now = timezone.now()
    DeviceUpdate.objects.filter(device_id__in=device_ids, status__in=FAILED_STATUSES, forgiven_at__isnull=True).update(
        forgiven_at=now
    )
    DeviceUpdate.objects.filter(device_id__in=device_ids, retry_after__gt=now).update(retry_after=None)
    deployment_ids = (
        Device.objects.filter(pk__in=device_ids, deployment__isnull=False)
        .order_by()
        .values_list("deployment_id", flat=True)
        .distinct()
    )
    for deployment_id in sorted({d for d in deployment_ids if d is not None}):
        wake(deployment_id)


def progress(deployment: Deployment) -> dict[str, int]:
    """Counts of this deployment's updates of its current firmware, by status,
    and the headline: `members`, every device the deployment matches now or
    attempted to update to its firmware, and `on_target`, those of them that
    run it. A device that an update took out of the deployment (its version
    no longer meets a condition such as "< 1.1.0") still counts: a finished
    rollout reads 100 %, not 0 of the devices still waiting."""
    attempts = DeviceUpdate.objects.filter(deployment=deployment, firmware_id=deployment.firmware_id)
    rows = attempts.values("status").annotate(n=Count("pk")).order_by()
    counts = {status.value: 0 for status in UpdateStatus}
    for row in rows:
        counts[row["status"]] = row["n"]
    reached = Device.objects.filter(deleted_at__isnull=True).filter(
        Q(deployment=deployment) | Q(pk__in=attempts.values("device_id"))
    )
    headline = reached.aggregate(
        members=Count("pk"), on_target=Count("pk", filter=Q(firmware_uuid=deployment.firmware.uuid))
    )
    counts["members"] = headline["members"]
    counts["on_target"] = headline["on_target"]
    return counts


def deployment_changed(actor: Actor, deployment: Deployment, *, archive_changed: bool = False) -> int:
    """After a deployment's firmware, conditions or activation changed (saved
    through a form or the API): recompute which devices belong to it and wake
    the orchestrator. Returns how many devices changed deployment."""
    moved = reassign_product(deployment.product_id, actor)
    if archive_changed:
        archives.push_archive_to_members(actor, deployment)
    with transaction.atomic():
        wake(deployment.pk)
        deltas.request_on_commit(deployment)
    return moved


# --- Deployment writes -----------------------------------------------------------------
# The one way a deployment is created or changed: the admin, the organization
# pages and the API are adapters over save_deployment and map its
# ValidationError (field -> messages) onto their own form errors or 422. It
# lives here rather than in deployments.services because a write must then
# recompute membership (deployment_changed), and services sits below rollout.

# The rollout settings an operator tunes, in the order the forms show them.
SETTINGS_FIELDS = (
    "concurrent_updates",
    "inflight_timeout_minutes",
    "penalty_attempts",
    "penalty_rate_attempts",
    "penalty_rate_seconds",
    "penalty_minutes",
    "breaker_failure_percent",
    "breaker_min_attempts",
    "delta_updates",
    "soak_minutes",
    "gate_enabled",
    "gate_margin_percent",
    "gate_min_devices",
    "gate_metric",
    "gate_metric_higher_is_worse",
)


# The operator's switches, by the name the API path, the page's button and the
# admin action use: each is a compare-and-set that audits and wakes on its own.
SWITCHES: dict[str, Callable[[Actor, Deployment], bool]] = {
    "activate": lambda actor, deployment: set_active(actor, deployment, True),
    "deactivate": lambda actor, deployment: set_active(actor, deployment, False),
    "pause": lambda actor, deployment: pause(actor, deployment),
    "resume": resume,
}


def deployment_errors(
    org_id: int | None, product: Product | None, firmware: Firmware | None, archive: Firmware | None
) -> dict[str, list[str]]:
    """What is wrong with a deployment's product, firmware and archive, by field
    (empty: nothing). The forms run it on their cleaned data; the other rules
    (conditions, settings, a unique name) are the model's and run in full_clean."""
    errors: dict[str, list[str]] = {}
    if product is None:
        return errors
    if org_id is not None and product.org_id != org_id:
        errors["product"] = ["The product belongs to another organization."]
    if firmware is not None:
        if firmware.product_id != product.pk:
            errors["firmware"] = ["The firmware belongs to another product."]
        elif firmware.kind != FirmwareKind.FIRMWARE:
            errors["firmware"] = ["This is an archive; choose it as the archive."]
        elif firmware.status != FirmwareStatus.VALID:
            errors["firmware"] = ["Only validated firmware can be deployed."]
    if archive is not None:
        if archive.product_id != product.pk:
            errors["archive"] = ["The archive belongs to another product."]
        elif archive.status != FirmwareStatus.VALID or archive.kind != FirmwareKind.ARCHIVE:
            errors["archive"] = ["Choose a validated archive."]
    return errors


def check_deployment(deployment: Deployment) -> None:
    """Raise ValidationError (field -> messages) unless the deployment may be saved."""
    errors = deployment_errors(
        deployment.org_id,
        deployment.product if deployment.product_id else None,
        deployment.firmware if deployment.firmware_id else None,
        deployment.archive if deployment.archive_id else None,
    )
    refuse_unless_valid(deployment, errors)


def save_deployment(actor: Actor, deployment: Deployment, fields: Iterable[str], *, via: str) -> int:
    """Create (unsaved instance) or change a deployment whose `fields` were set
    by the caller: check it, save it and audit it in one transaction, then
    recompute membership and wake the orchestrator. Returns how many devices
    changed deployment. Raises ValidationError and writes nothing when the
    deployment may not be saved."""
    check_deployment(deployment)
    previous_archive = (
        None
        if deployment._state.adding
        else Deployment.objects.filter(pk=deployment.pk).values_list("archive_id", flat=True).first()
    )
    created = save_audited(actor, deployment, fields, via=via)
    if created and not deployment.is_active:
        return 0  # no device can belong to it yet
    return deployment_changed(actor, deployment, archive_changed=deployment.archive_id != previous_archive)


class DeploymentInUse(Exception):
    """The deployment is active or still has updates in flight."""


def delete_deployment(actor: Actor, deployment: Deployment, *, via: str) -> None:
    """Delete an inactive deployment with no update in flight, audited; its
    devices then join whichever deployment matches them. An active one is
    deactivated first (set_active), so that deleting never cuts a rollout
    short. Raises DeploymentInUse."""
    with transaction.atomic():
        locked = Deployment.objects.select_for_update().filter(pk=deployment.pk).first()
        if locked is None:
            return
        if locked.is_active:
            raise DeploymentInUse("the deployment is active: deactivate it before deleting it")
        if DeviceUpdate.objects.filter(deployment_id=locked.pk).inflight().exists():
            raise DeploymentInUse("the deployment still has updates in flight: wait for them to finish")
        audit(actor, "deployment.deleted", locked, details={"name": locked.name, "via": via})
        locked.delete()
    reassign_product(deployment.product_id, actor)


# --- Device events -------------------------------------------------------------------
# Called by the device socket's services after the device's own rows are written.


def on_device_joined(device_id: int, join: JoinReport | None = None, *, seen: Device | None = None) -> int | None:
    """After a join was stored: settle what it says about the in-flight update,
    settle the device's deployment, re-send an update it never acknowledged, and
    wake the orchestrator. Returns the device's deployment id.

    `seen` is the device as the join stored it (devices.services.join_device),
    with its deployment, firmware and archive loaded by the socket's join: a reconnecting device that is
    where it was costs two reads here."""
    # The in-flight attempt and a soaking one, in the one read a join had
    # before soaks existed.
    open_attempts = list(
        DeviceUpdate.objects.filter(device_id=device_id, status__in=(*INFLIGHT_STATUSES, UpdateStatus.SOAKING))
        .order_by()
        .values_list("pk", "deployment_id", "status", "firmware__uuid", "soak_until")[:2]
    )
    target_uuid = next((uuid for _, _, status, uuid, _ in open_attempts if status != UpdateStatus.SOAKING), None)
    inflight = target_uuid is not None
    if seen is None or (seen.deployment is not None and seen.deployment.gate_enabled):
        gate.note_reconnect(device_id)
    soaking = [row for row in open_attempts if row[2] == UpdateStatus.SOAKING]
    if join is not None and soaking:
        update_id, soaking_deployment, _, soaking_target, soak_until = soaking[0]
        verdict = soak.judge_join(
            update_id,
            soaking_deployment,
            soaking_target or "",
            soak_until,
            join.nerves_fw_uuid,
            auto_reverted=join.firmware_auto_revert_detected,
            now=timezone.now(),
        )
        if verdict is not None:
            _end_soak(verdict, timezone.now())
    if join is not None and inflight:
        row = seen
        if row is None:
            row = Device.objects.only("firmware_uuid", "socket_channel", "disconnected_at").get(pk=device_id)
        running = row.firmware_uuid
        # The join may end the attempt as a failure: like a failing status
        # report, the outcome, penalty box and breaker are decided under the
        # deployment lock (see on_status_report). A device back on the target
        # has nothing to decide there, and every rejoin of a rollout would
        # queue on that one lock.
        locked = running != target_uuid or join.firmware_auto_revert_detected
        with transaction.atomic():
            if locked:
                _lock_inflight_deployment(device_id)
            finished = services.reconcile_update_on_join(
                device_id,
                running,
                validated=join.firmware_validated,
                auto_reverted=join.firmware_auto_revert_detected,
                downloading_uuid=join.currently_downloading_uuid,
                channel=row.socket_channel,
                closed_at=row.disconnected_at,
            )
            if finished is not None and locked:
                attempt_finished(finished.pk)
        if finished is not None and not locked:
            # After this transaction, not in it: it audited the success (the
            # org's audit chain) without the deployment lock, and the breaker
            # may pause the deployment (its row). Every other path takes the
            # deployment row first; the other order deadlocked with an
            # orchestrator run claiming (deployment row, then the audit chain).
            attempt_finished(finished.pk)
    deployment_id = assign_deployment(device_id, seen=seen)
    if join is not None:
        unchanged = seen is not None and seen.deployment_id == deployment_id
        archives.push_archive_on_join(device_id, seen=seen if unchanged else None)
    # Only an in-flight attempt can be an unacknowledged `requested` one.
    if inflight and push_pending_update(device_id, seen.socket_channel if seen is not None else None):
        return deployment_id
    if deployment_id is not None:
        with transaction.atomic():
            wake(deployment_id)
    return deployment_id


def _end_soak(verdict: soak.Verdict, now: datetime, *, wake_orchestrator: bool = True) -> None:
    # A failed soak is decided under the deployment lock, like every failure
    # (on_status_report): a run sees it together with its penalty and breaker.
    with transaction.atomic():
        if not verdict.succeeded and verdict.deployment_id is not None:
            list(
                Deployment.objects.select_for_update(no_key=True)
                .filter(pk=verdict.deployment_id)
                .values_list("pk", flat=True)
            )
        if soak.end(verdict, now):
            attempt_finished(verdict.update_id, wake_orchestrator=wake_orchestrator)


def settle_soaks(now: datetime, deployment_id: int | None = None) -> int:
    """End the soaks whose time is up (of one deployment, or all: the backstop).
    Returns how many ended."""
    verdicts = soak.due(now, deployment_id)
    for verdict in verdicts:
        _end_soak(verdict, now, wake_orchestrator=deployment_id is None)
    return len(verdicts)


def on_status_report(device_id: int, payload: dict[str, Any]) -> None:
    """A device's `status_update` or `fwup_progress`: record it, and when it
    ended the attempt (failed, ignored, rescheduled) run what follows.

    A report that may end the attempt is written under its deployment's row
    lock, together with the penalty box and breaker decisions: an orchestrator
    run (which claims under that lock) sees either the attempt in flight or its
    whole outcome, never a failed device that is not penalty-boxed yet, nor a
    failure the breaker has not judged."""
    if str(payload.get("status", "")).lower() in _ENDING or "fwup error" in str(payload.get("status", "")).lower():
        with transaction.atomic():
            _lock_inflight_deployment(device_id)
            _record_status(device_id, payload)
        return
    _record_status(device_id, payload)


_ENDING = {UpdateStatus.FAILED.value, UpdateStatus.IGNORED.value, UpdateStatus.RESCHEDULED.value}


def _record_status(device_id: int, payload: dict[str, Any]) -> None:
    update = services.record_update_status(device_id, payload)
    if update is not None and update.status in (
        UpdateStatus.FAILED,
        UpdateStatus.IGNORED,
        UpdateStatus.RESCHEDULED,
    ):
        on_update_finished(update)


def _lock_inflight_deployment(device_id: int) -> None:
    """Take the row lock of the deployment whose update is in flight on the
    device, if any (the lock the orchestrator claims under)."""
    deployment_id = DeviceUpdate.objects.inflight().filter(device_id=device_id).values_list("deployment_id", flat=True)
    list(Deployment.objects.select_for_update(no_key=True).filter(pk__in=deployment_id).values_list("pk", flat=True))


def on_firmware_validated(device_id: int) -> None:
    """The device validated its running firmware: an update that was waiting
    for that succeeds, and its slot is free."""
    device = Device.objects.filter(pk=device_id).only("firmware_uuid").first()
    if device is None or not device.firmware_uuid:
        return
    finished = services.finish_validated_update(device_id, device.firmware_uuid)
    if finished is not None:
        attempt_finished(finished.pk)


def on_update_finished(update: DeviceUpdate) -> None:
    """After a device status ended an attempt (failed, ignored, rescheduled)."""
    if update.status == UpdateStatus.IGNORED and update.deployment_id is not None:
        # The device declined; asking again at once would loop. Hold it like a
        # penalty, without counting a failure.
        deployment = Deployment.objects.filter(pk=update.deployment_id).first()
        if deployment is not None:
            hold = timezone.now() + timedelta(minutes=deployment.penalty_minutes)
            DeviceUpdate.objects.filter(pk=update.pk, retry_after__isnull=True).update(retry_after=hold)
    attempt_finished(update.pk)


# --- Polling devices ----------------------------------------------------------------------
# docs/polling.md. A polling device is reached only when it asks: its poll
# settles its in-flight update from the firmware it reports and, when a slot
# is free, claims one for it under the deployment lock, with the orchestrator's
# own rules (_claim_free_slots: stages, concurrency, eligibility).

POLL_LEASE_EXPIRED = "the device polled on its old firmware after the update's in-flight timeout"
# _settle_polled_update's answer when the poll freed the device's slot (or
# found none to free) and the device may be offered an update afresh.
_FREED = object()


def poll_for_update(device: Device) -> UpdatePayload | None:
    """What a polling device should install now, or None. `device` is the
    device as devices.services.record_poll stored what it reported.

    * On its in-flight update's firmware: the update succeeded.
    * Still on its old firmware within the update's lease (the deployment's
      in-flight timeout, counted from the poll that handed it the update):
      it is handed the same update again, which neither extends the lease
      nor takes another slot.
    * Still on its old firmware after the lease: the attempt expired, a
      failure like a socket device's that returned without the update
      (docs/rollout.md, "Rollout outcomes and the breaker").
    * Nothing in flight: its deployment is settled, and when it may have the
      update now and a slot is free, the slot is claimed and the answer is
      the update (the claim's `update.requested` and `update.started` audit
      events are written)."""
    now = timezone.now()
    # Most polls have nothing in flight: a lean existence check first (the
    # ORM's cost here is compiling the select, not running it).
    inflight_id = DeviceUpdate.objects.inflight().filter(device_id=device.pk).values_list("pk", flat=True).first()
    if inflight_id is not None:
        inflight = DeviceUpdate.objects.select_related("firmware__product", "deployment").filter(pk=inflight_id).first()
        if inflight is not None:
            answer = _settle_polled_update(device, inflight, now)
            if answer is not _FREED:
                return answer  # type: ignore[return-value]
    if device.deployment_id is not None:
        # One read for the deployment and the firmware fields that
        # assign_deployment (membership_problems) and the claim look at.
        device.deployment = (
            Deployment.objects.select_related("firmware")
            .only(*_POLL_DEPLOYMENT_FIELDS)
            .filter(pk=device.deployment_id)
            .first()
        )
    deployment_id = assign_deployment(device.pk, seen=device)
    if deployment_id is None:
        return None
    return _claim_for_poll(device, deployment_id, now)


_POLL_DEPLOYMENT_FIELDS = (
    "product_id",
    "is_active",
    "paused_at",
    "conditions_version",
    "conditions_tags",
    "inflight_timeout_minutes",
    "firmware__uuid",
    "firmware__platform",
    "firmware__architecture",
    "firmware__version",
    "firmware__status",
)


def _settle_polled_update(device: Device, update: DeviceUpdate, now: datetime) -> object:
    deployment = update.deployment
    if device.firmware_uuid and device.firmware_uuid == update.firmware.uuid:
        finished = services.reconcile_update_on_join(device.pk, device.firmware_uuid)
        if finished is not None:
            attempt_finished(finished.pk)
        return _FREED
    # A manual update (no deployment) has the default in-flight timeout, as
    # the sweep of deployments.manual judges it.
    lease = timedelta(minutes=deployment.inflight_timeout_minutes if deployment is not None else 30)
    if update.updated_at + lease > now:
        if (
            deployment is None
            or not deployment.is_active
            or deployment.paused_at is not None
            or update.firmware.status != FirmwareStatus.VALID
        ):
            return None  # a stopped deployment hands out nothing new; the timeout frees the slot
        _mark_answered(update.pk, now)
        return update_payload(update.firmware, update.deployment_id)
    fields: dict[str, Any] = {"status": UpdateStatus.EXPIRED, "reason": POLL_LEASE_EXPIRED, "finished_at": now}
    if update.status == UpdateStatus.REQUESTED:
        # Never handed to the device (claimed for a socket it no longer
        # holds): the hub's failure to deliver, as expire_stale_updates has it.
        fields.update(status=UpdateStatus.INTERRUPTED, reason="the device never acknowledged the update")
    with transaction.atomic():
        # Like a join that ends an attempt badly: outcome, penalty box and
        # breaker are decided under the deployment lock (on_status_report).
        _lock_inflight_deployment(device.pk)
        changed = DeviceUpdate.objects.filter(pk=update.pk, status=update.status).update(updated_at=now, **fields)
        if changed:
            services.audit_transition(update.pk, fields)
            attempt_finished(update.pk)
    return _FREED


def _mark_answered(update_id: int, now: datetime) -> None:
    """A poll's answer carried the update: like a socket device's
    acknowledgement, a `requested` row becomes `received`, and its lease
    starts now. A row past `requested` is left as it is."""
    fields: dict[str, Any] = {
        "status": UpdateStatus.RECEIVED,
        "attempted_at": now,
        "updated_at": now,
        "pushes": F("pushes") + 1,
        "push_sent": True,
        "pushed_channel": "",
    }
    with transaction.atomic():
        if DeviceUpdate.objects.filter(pk=update_id, status=UpdateStatus.REQUESTED).update(**fields):
            services.audit_transition(update_id, {"attempted_at": now})


def _claim_for_poll(device: Device, deployment_id: int, now: datetime) -> UpdatePayload | None:
    deployment = device.deployment if device.deployment_id == deployment_id else None
    if deployment is None:
        deployment = Deployment.objects.select_related("firmware").filter(pk=deployment_id).first()
    # What rules the device out is checked before the lock: a device with
    # nothing to do (the usual poll) never queues on the deployment's row.
    if (
        deployment is None
        or not deployment.is_active
        or deployment.paused_at is not None
        or deployment.firmware.status != FirmwareStatus.VALID
        or device.firmware_uuid == deployment.firmware.uuid
        or not device.updates_enabled
        or device.in_penalty_box(now)
        or device.firmware_validation == ValidationStatus.NOT_VALIDATED
    ):
        return None
    with transaction.atomic():
        locked = _lock_deployment(deployment_id)
        if (
            locked is None
            or not locked.is_active
            or locked.paused_at is not None
            or locked.firmware.status != FirmwareStatus.VALID
        ):
            return None
        candidates = eligible_devices(locked, now, require_online=False).filter(pk=device.pk)
        claimed = _claim_free_slots(locked, now, RolloutRun(), candidates)
        if not claimed:
            return None
        _mark_answered(claimed[0], now)
        return update_payload(locked.firmware, locked.pk)
