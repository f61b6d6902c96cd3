"""Business rules for devices and their shared-secret credentials.

Bulk operations take a queryset and change rows with one UPDATE per rule where
the rule allows, writing one audit event per device changed.
"""

from __future__ import annotations

import base64
import os
import secrets
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F, QuerySet, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from devices import health, publish
from devices.fields import normalise_tags
from devices.models import (
    ConnectionStatus,
    Device,
    DeviceSharedSecret,
    HubLease,
    ProductSharedSecret,
    ValidationStatus,
    validate_identifier,
    validate_tags,
)
from nerveshub.lib.jsonsafe import finite
from nerveshub.lib.sealed import seal
from nerveshub.tenancy.models import Product
from nerveshub.tenancy.services import Actor, audit
from webhooks import services as webhooks

PRODUCT_KEY_PREFIX = "nhp_"
DEVICE_KEY_PREFIX = "nhd_"


def _random_43() -> str:
    # 32 random bytes as unpadded standard base64: the reference server's format.
    return base64.b64encode(secrets.token_bytes(32)).decode().rstrip("=")


@dataclass(frozen=True)
class IssuedSecret:
    key: str
    secret: str  # shown once, stored only sealed


def create_product_secret(actor: Actor, product: Product) -> tuple[ProductSharedSecret, IssuedSecret]:
    key, secret = PRODUCT_KEY_PREFIX + _random_43(), _random_43()
    with transaction.atomic():
        row = ProductSharedSecret.objects.create(product=product, key=key, secret_sealed=seal(secret))
        audit(actor, "product_secret.created", row, org=product.org_id, details={"product": product.name})
    return row, IssuedSecret(key=key, secret=secret)


def create_device_secret(actor: Actor, device: Device) -> tuple[DeviceSharedSecret, IssuedSecret]:
    key, secret = DEVICE_KEY_PREFIX + _random_43(), _random_43()
    with transaction.atomic():
        row = DeviceSharedSecret.objects.create(device=device, key=key, secret_sealed=seal(secret))
        audit(actor, "device_secret.created", row, org=device.org_id, details={"device": device.identifier})
    return row, IssuedSecret(key=key, secret=secret)


def deactivate_secrets(actor: Actor, rows: Iterable[ProductSharedSecret | DeviceSharedSecret]) -> int:
    """Deactivate each key that is still active. Devices connected with it keep
    their socket until they reconnect; a new connection is refused."""
    count = 0
    with transaction.atomic():
        for row in rows:
            changed = (
                type(row).objects.filter(pk=row.pk, deactivated_at__isnull=True).update(deactivated_at=timezone.now())
            )
            if changed:
                count += 1
                org_id = row.product.org_id if isinstance(row, ProductSharedSecret) else row.device.org_id
                audit(actor, "shared_secret.deactivated", row, org=org_id, details={"key": row.key})
    return count


def create_device(
    actor: Actor, product: Product, identifier: str, *, description: str = "", tags: list[str] | str = ""
) -> Device:
    validate_identifier(identifier)
    tag_list = normalise_tags(tags)
    validate_tags(tag_list)
    with transaction.atomic():
        device = Device.objects.create(
            org_id=product.org_id, product=product, identifier=identifier, description=description, tags=tag_list
        )
        audit(actor, "device.created", device, details={"product": product.name, "tags": tag_list})
    return device


def _each_locked(devices: QuerySet[Device]) -> Iterable[Device]:
    # Ordered by pk so two bulk actions over overlapping sets cannot deadlock.
    # Device rows are locked FOR NO KEY UPDATE everywhere (no_key=True): we never
    # change a key, and a plain FOR UPDATE also blocks the key-share lock that
    # inserting a row referencing the device takes, which deadlocked a join
    # (device row, then the org's audit chain) against the orchestrator's claim
    # (audit chain, then a DeviceUpdate insert referencing the device).
    return (
        devices.select_related(None)
        .select_for_update(no_key=True)
        .order_by("pk")
        .only("pk", "org_id", "identifier", "tags")
    )


def add_tags(actor: Actor, devices: QuerySet[Device], tags: list[str] | str) -> int:
    new = normalise_tags(tags)
    validate_tags(new)
    changed = 0
    with transaction.atomic():
        for device in _each_locked(devices):
            merged = normalise_tags([*device.tags, *new])
            if merged != device.tags:
                Device.objects.filter(pk=device.pk).update(tags=merged, updated_at=timezone.now())
                audit(actor, "device.tags_added", device, details={"tags": new, "now": merged})
                changed += 1
    return changed


def remove_tags(actor: Actor, devices: QuerySet[Device], tags: list[str] | str) -> int:
    gone = set(normalise_tags(tags))
    changed = 0
    with transaction.atomic():
        for device in _each_locked(devices):
            kept = [t for t in device.tags if t not in gone]
            if kept != device.tags:
                Device.objects.filter(pk=device.pk).update(tags=kept, updated_at=timezone.now())
                audit(actor, "device.tags_removed", device, details={"tags": sorted(gone), "now": kept})
                changed += 1
    return changed


def set_updates_enabled(actor: Actor, devices: QuerySet[Device], enabled: bool) -> int:
    """Enabling updates again also takes the device out of the penalty box and
    resets its failure count (as NervesHub does), and offers it the update at
    once (deployments.rollout.forgive_failures)."""
    with transaction.atomic():
        targets = list(devices.select_related(None).exclude(updates_enabled=enabled).only("pk", "org_id", "identifier"))
        fields: dict[str, object] = {"updates_enabled": enabled, "updated_at": timezone.now()}
        if enabled:
            fields["penalty_box_until"] = None
        Device.objects.filter(pk__in=[d.pk for d in targets], updates_enabled=not enabled).update(**fields)
        for device in targets:
            audit(actor, "device.updates_enabled" if enabled else "device.updates_disabled", device)
        if enabled:
            # Imported here: deployments builds on devices (rollout imports this
            # module); forgiving failures is the one call back up.
            from deployments import rollout

            rollout.forgive_failures([d.pk for d in targets])
    return len(targets)


def clear_penalty_box(actor: Actor, devices: QuerySet[Device]) -> int:
    """Take the devices out of the penalty box, reset their failure count (one
    more failure must not box them again at once), and offer them the update
    now if they are connected and eligible (deployments.rollout.forgive_failures)."""
    with transaction.atomic():
        targets = list(
            devices.select_related(None).filter(penalty_box_until__isnull=False).only("pk", "org_id", "identifier")
        )
        Device.objects.filter(pk__in=[d.pk for d in targets]).update(penalty_box_until=None, updated_at=timezone.now())
        for device in targets:
            audit(actor, "device.penalty_box_cleared", device)
        # Imported here: deployments builds on devices (rollout imports this
        # module); forgiving failures is the one call back up.
        from deployments import rollout

        rollout.forgive_failures([d.pk for d in targets])
    return len(targets)


def soft_delete(actor: Actor, devices: QuerySet[Device]) -> int:
    with transaction.atomic():
        targets = list(devices.select_related(None).filter(deleted_at__isnull=True).only("pk", "org_id", "identifier"))
        Device.objects.filter(pk__in=[d.pk for d in targets]).update(deleted_at=timezone.now())
        DeviceSharedSecret.objects.filter(device__in=[d.pk for d in targets], deactivated_at__isnull=True).update(
            deactivated_at=timezone.now()
        )
        for device in targets:
            audit(actor, "device.deleted", device)
    return len(targets)


def restore_device(actor: Actor, device: Device) -> bool:
    """Undo a soft delete, by compare-and-set on `deleted_at`: False when the
    device was not deleted (or another request restored it first). The shared
    secrets the delete deactivated stay deactivated: a key once turned off is
    not turned back on behind anyone's back, so a new one is issued if needed.
    The device takes its place in a deployment again when it next joins."""
    with transaction.atomic():
        changed = Device.objects.filter(pk=device.pk, deleted_at__isnull=False).update(
            deleted_at=None, updated_at=timezone.now()
        )
        if changed:
            audit(actor, "device.restored", device)
    return bool(changed)


# --- Device sockets -------------------------------------------------------------
# Called by the device link (devicelink/) on its database threads. Each is one
# short transaction; none runs for a heartbeat.


@dataclass(frozen=True)
class ConnectionInfo:
    previous_channel: str  # the socket this connection replaces ("" if none)
    product_extensions: frozenset[str]
    deployment_id: int | None


def open_device_connection(device: Device, channel_name: str, lease_id: int | None = None) -> ConnectionInfo:
    """Record that `channel_name` now serves the device (as authentication just
    read it, with its product), in the hub process holding lease `lease_id`.
    Last connection wins: the caller closes `previous_channel`."""
    now = timezone.now()
    fields = {
        "socket_channel": channel_name,
        "hub_lease_id": lease_id,
        "connection_status": ConnectionStatus.CONNECTED,
        "connected_at": now,
        "last_seen_at": now,
        "first_seen_at": Coalesce(F("first_seen_at"), Value(now)),
        "console_available": False,
    }
    with transaction.atomic():
        # Compare-and-set on the channel authentication saw; only a racing
        # connect of the same device makes it miss, and then the row is locked.
        previous = device.socket_channel
        if not Device.objects.filter(pk=device.pk, socket_channel=previous).update(**fields):
            previous = (
                Device.objects.select_for_update(no_key=True).values_list("socket_channel", flat=True).get(pk=device.pk)
            )
            Device.objects.filter(pk=device.pk).update(**fields)
        webhooks.device_online(device)
        publish.page_device_connected(device.org_id, device.pk)
    return ConnectionInfo(
        previous_channel=previous if previous != channel_name else "",
        product_extensions=frozenset(str(name) for name in (device.product.extensions or [])),
        deployment_id=device.deployment_id,
    )


def close_device_connections(closed: Iterable[tuple[int, str]]) -> list[int]:
    """Mark offline each device whose socket `channel` closed, unless a newer
    socket already took over: one transaction for a whole burst of disconnects
    (a network blip, a hub restart). Returns the devices marked offline."""
    channel_of = dict(closed)
    with transaction.atomic():
        # Locked in id order, as every bulk device change is: no deadlocks.
        current = (
            Device.objects.select_for_update(no_key=True)
            .filter(pk__in=list(channel_of))
            .order_by("pk")
            .values_list("pk", "socket_channel", "org_id", "identifier")
        )
        gone = [(pk, org, name) for pk, channel, org, name in current if channel and channel == channel_of[pk]]
        if gone:
            _mark_offline(gone, timezone.now())
    return [pk for pk, _, _ in gone]


def _mark_offline(devices: list[tuple[int, int, str]], at: datetime | None) -> None:
    """What every recorded disconnect does (in the caller's transaction, with
    the rows locked; the devices as (id, org id, identifier)): the device is offline, reachable nowhere, and the
    organization's device.offline webhooks fire. `at` is when the hub saw the
    socket close; None when it did not (the socket's process died), which
    leaves `disconnected_at` as it was: the rollout reads a close the hub did
    not see as an attempt the hub cut short, not a device failure
    (deployments.services.reconcile_update_on_join)."""
    fields: dict[str, Any] = {
        "socket_channel": "",
        "hub_lease": None,
        "connection_status": ConnectionStatus.DISCONNECTED,
        "console_available": False,
    }
    if at is not None:
        fields["disconnected_at"] = at
    Device.objects.filter(pk__in=[pk for pk, _, _ in devices]).update(**fields)
    webhooks.devices_offline(devices)
    publish.page_devices_disconnected(devices)


# --- Hub process leases ---------------------------------------------------------
# docs/device-link.md, "Presence": a device counts as online only while the
# lease of the process holding its socket is live; a process that died stops
# renewing, and the first live process to see the lease expired records the
# disconnects of its devices, once.

# Devices recorded offline per statement when a lease is closed out.
CLOSE_OUT_CHUNK = 1000
# Closed-out leases are kept this long for the operators, then deleted.
LEASE_KEEP = timedelta(days=1)


def take_lease(channel: str) -> int:
    """A new lease for this hub process (its dispatcher channel `channel`)."""
    now = timezone.now()
    lease = HubLease.objects.create(
        channel=channel[:200],
        host=socket.gethostname()[:200],
        pid=os.getpid(),
        started_at=now,
        renewed_at=now,
        expires_at=now + timedelta(seconds=settings.HUB_LEASE_SECONDS),
    )
    return lease.pk


def renew_lease(lease_id: int) -> bool:
    """Extend the lease by HUB_LEASE_SECONDS: one UPDATE, the only write a
    hub process makes for its presence while nothing connects or closes.
    False when another process closed it out meanwhile (this one stalled past
    its lease): its devices were recorded offline, and the caller must take a
    new lease and close its sockets so that they reconnect and are recorded
    again."""
    now = timezone.now()
    expires = now + timedelta(seconds=settings.HUB_LEASE_SECONDS)
    return bool(HubLease.objects.filter(pk=lease_id, closed_at__isnull=True).update(renewed_at=now, expires_at=expires))


def close_out_expired_leases(own_lease_id: int | None, *, all_others: bool = False) -> list[int]:
    """Record the disconnects of the devices of every hub process whose lease
    expired (with `all_others`, of every process but this one: an embedded
    hub that starts is the only process there is, so whatever held a lease
    before it is dead). Each lease is closed out by compare-and-set, so of two
    processes that see it expired one does the work, and a lease its owner
    renewed meanwhile is left alone. Returns the devices marked offline."""
    now = timezone.now()
    leases = HubLease.objects.filter(closed_at__isnull=True)
    if own_lease_id is not None:
        leases = leases.exclude(pk=own_lease_id)
    if not all_others:
        leases = leases.filter(expires_at__lte=now)
    gone: list[int] = []
    closed = 0
    for lease_id in list(leases.values_list("pk", flat=True)):
        with transaction.atomic():
            claim = HubLease.objects.filter(pk=lease_id, closed_at__isnull=True)
            if not all_others:
                claim = claim.filter(expires_at__lte=now)
            if not claim.update(closed_at=now):
                continue
            closed += 1
            while True:
                # Locked in id order, as every bulk device change is. A device
                # that reconnected elsewhere names another lease: left alone.
                chunk = list(
                    Device.objects.select_for_update(no_key=True)
                    .filter(hub_lease_id=lease_id)
                    .order_by("pk")
                    .values_list("pk", flat=True)[:CLOSE_OUT_CHUNK]
                )
                if not chunk:
                    break
                offline = list(
                    Device.objects.filter(pk__in=chunk, connection_status=ConnectionStatus.CONNECTED)
                    .order_by("pk")
                    .values_list("pk", "org_id", "identifier")
                )
                offline_ids = [pk for pk, _, _ in offline]
                Device.objects.filter(pk__in=chunk).exclude(pk__in=offline_ids).update(hub_lease=None)
                if offline:
                    _mark_offline(offline, None)
                    gone += offline_ids
    if closed:
        HubLease.objects.filter(closed_at__lt=now - LEASE_KEEP, devices__isnull=True).delete()
    return gone


def refresh_last_seen(device_ids: Iterable[int], chunk: int = 1000) -> int:
    """One UPDATE per `chunk` devices: how a server process says "these sockets
    are alive" without a write per device per heartbeat."""
    ids = list(device_ids)
    now = timezone.now()
    count = 0
    for start in range(0, len(ids), chunk):
        count += Device.objects.filter(
            pk__in=ids[start : start + chunk], connection_status=ConnectionStatus.CONNECTED
        ).update(last_seen_at=now)
    publish.page_devices_seen(ids)
    return count


@dataclass(frozen=True)
class JoinReport:
    """What a device's `device` join says about itself (docs/device-protocol.md
    §4.2), as the device link read it off the wire."""

    fwup_version: str = ""
    device_api_version: str = "1.0.0"
    console_version: str = ""
    nerves_fw_uuid: str = ""
    nerves_fw_product: str = ""
    nerves_fw_version: str = ""
    nerves_fw_platform: str = ""
    nerves_fw_architecture: str = ""
    nerves_fw_author: str = ""
    nerves_fw_description: str = ""
    nerves_fw_vcs_identifier: str = ""
    nerves_fw_misc: str = ""
    currently_downloading_uuid: str | None = None
    firmware_validated: bool | None = None
    firmware_auto_revert_detected: bool = False


def join_fields(report: JoinReport) -> dict[str, object]:
    """The device columns a `device` join reports, as they are stored."""
    validation = {
        True: ValidationStatus.VALIDATED,
        False: ValidationStatus.NOT_VALIDATED,
        None: ValidationStatus.UNKNOWN,
    }[report.firmware_validated]
    fields: dict[str, object] = {
        "fwup_version": report.fwup_version[:50],
        "device_api_version": report.device_api_version[:50],
        "firmware_validation": validation,
        "firmware_auto_revert_detected": report.firmware_auto_revert_detected,
    }
    if report.console_version:
        fields["console_version"] = report.console_version[:50]
    if report.nerves_fw_uuid:
        fields.update(
            firmware_uuid=report.nerves_fw_uuid[:36],
            firmware_product=report.nerves_fw_product[:200],
            firmware_version=report.nerves_fw_version[:100],
            firmware_platform=report.nerves_fw_platform[:100],
            firmware_architecture=report.nerves_fw_architecture[:100],
            firmware_author=report.nerves_fw_author[:200],
            firmware_description=report.nerves_fw_description,
            firmware_vcs_identifier=report.nerves_fw_vcs_identifier[:200],
            firmware_misc=report.nerves_fw_misc,
        )
    return fields


def join_device(device_id: int, report: JoinReport) -> Device:
    """Store what the `device` join reports (docs/device-protocol.md §4.2) and
    return the device as stored.

    A reconnecting device mostly reports what is stored already: then this is
    one read and nothing is written."""
    fields = join_fields(report)
    device = Device.objects.get(pk=device_id)
    changed = {name: value for name, value in fields.items() if getattr(device, name) != value}
    if changed:
        with transaction.atomic():
            # The uuid under the row lock decides the audit event, so two racing
            # joins of one device record one firmware change, not two.
            previous_uuid = (
                Device.objects.select_for_update(no_key=True).values_list("firmware_uuid", flat=True).get(pk=device_id)
            )
            Device.objects.filter(pk=device_id).update(**changed, updated_at=timezone.now())
            for name, value in changed.items():
                setattr(device, name, value)
            if report.nerves_fw_uuid and report.nerves_fw_uuid != previous_uuid:
                audit(
                    device,
                    "device.firmware_changed",
                    device,
                    details={"from": previous_uuid, "to": report.nerves_fw_uuid, "version": report.nerves_fw_version},
                )
            if "firmware_version" in changed:
                publish.page_device_firmware(device_id, device.firmware_version, org_id=device.org_id)
    return device


def join_console(device_id: int, console_version: str) -> None:
    fields: dict[str, object] = {"console_available": True}
    if console_version:
        fields["console_version"] = console_version[:50]
    Device.objects.filter(pk=device_id).update(**fields)


def record_network_interface(device_id: int, interface: str) -> None:
    Device.objects.filter(pk=device_id).exclude(network_interface=interface).update(network_interface=interface)


def record_connection_types(device_id: int, values: list[str]) -> None:
    Device.objects.filter(pk=device_id).update(connection_types=values)


def mark_firmware_validated(device_id: int) -> None:
    with transaction.atomic():
        changed = (
            Device.objects.filter(pk=device_id)
            .exclude(firmware_validation=ValidationStatus.VALIDATED)
            .update(firmware_validation=ValidationStatus.VALIDATED)
        )
        if changed:
            device = Device.objects.get(pk=device_id)
            audit(device, "device.firmware_validated", device, details={"uuid": device.firmware_uuid})


def record_health(device_id: int, report: dict[str, object]) -> None:
    """The latest report on the device, its numbers in the history (devices.health)."""
    health.record_health(device_id, report)
    publish.page_device_health(device_id, health.status_of(report).level)


def record_location(device_id: int, location: dict[str, object]) -> None:
    Device.objects.filter(pk=device_id).update(location=finite(location), location_updated_at=timezone.now())


# --- Operator commands ------------------------------------------------------------
# Each writes an audit event and reaches the device's socket after commit, on
# whichever server process holds it. A device that is offline misses it (like
# the reference: these are not queued).


def reboot_device(actor: Actor, device: Device) -> None:
    with transaction.atomic():
        audit(actor, "device.reboot_requested", device)
        publish.send_to_device(device.pk, "reboot", {})


def identify_device(actor: Actor, device: Device) -> None:
    with transaction.atomic():
        audit(actor, "device.identify_requested", device)
        publish.send_to_device(device.pk, "identify", {})


def request_health_check(actor: Actor, device: Device) -> None:
    """Ask for a health report; it arrives as `health:report` if the device has
    the health extension attached (ignored by the socket otherwise)."""
    with transaction.atomic():
        audit(actor, "device.health_check_requested", device)
        publish.send_to_device(device.pk, "health:check", {}, topic="extensions")


def reconnect_device(actor: Actor, device: Device) -> None:
    with transaction.atomic():
        audit(actor, "device.reconnect_requested", device)
        publish.disconnect_device(device.pk)


def set_tags(actor: Actor, device: Device, tags: list[str] | str) -> bool:
    """Replace the device's tags. Returns whether they changed."""
    new = normalise_tags(tags)
    validate_tags(new)
    with transaction.atomic():
        current = (
            Device.objects.select_for_update(no_key=True).only("pk", "org_id", "identifier", "tags").get(pk=device.pk)
        )
        if current.tags == new:
            return False
        Device.objects.filter(pk=device.pk).update(tags=new, updated_at=timezone.now())
        audit(actor, "device.tags_set", current, details={"from": current.tags, "to": new})
    return True


def set_description(actor: Actor, device: Device, description: str) -> bool:
    with transaction.atomic():
        changed = (
            Device.objects.filter(pk=device.pk)
            .exclude(description=description)
            .update(description=description, updated_at=timezone.now())
        )
        if changed:
            audit(actor, "device.description_changed", device)
    return bool(changed)


# --- Polling devices ----------------------------------------------------------------
# Called by the device link's HTTPS routes (devicelink/polling.py) on its
# database threads; docs/polling.md has the contract.


def poll_write_interval(interval: int) -> timedelta:
    """At most one presence write per device per this: half the product's poll
    interval (so a device polling on time writes once per poll and stays
    present), never more than DEVICE_LAST_SEEN_INTERVAL apart."""
    return timedelta(seconds=min(settings.DEVICE_LAST_SEEN_INTERVAL, max(1, interval // 2)))


# product id -> (poll interval, monotonic time read). A poll needs the
# interval only to throttle its presence write; a change reaches each process
# within PRODUCT_INTERVAL_TTL, and a poll saves a query.
_poll_intervals: dict[int, tuple[int, float]] = {}
PRODUCT_INTERVAL_TTL = 60.0


def product_poll_interval(product_id: int) -> int:
    cached = _poll_intervals.get(product_id)
    now = time.monotonic()
    if cached is not None and now - cached[1] < PRODUCT_INTERVAL_TTL:
        return cached[0]
    interval = Product.objects.filter(pk=product_id).values_list("poll_interval_seconds", flat=True).first() or 3600
    _poll_intervals[product_id] = (interval, now)
    return interval


def _reports_news(device: Device, report: JoinReport) -> bool:
    """Whether a poll's report differs from what `device` stores, by
    join_device's own comparison (its truncation to the columns included):
    a poll that reports what is stored costs no query."""
    stored = (
        device.fwup_version,
        device.firmware_uuid,
        device.firmware_product,
        device.firmware_version,
        device.firmware_platform,
        device.firmware_architecture,
        device.firmware_author,
        device.firmware_description,
        device.firmware_vcs_identifier,
        device.firmware_misc,
        device.firmware_validation,
        device.firmware_auto_revert_detected,
        device.device_api_version,
    )
    reported = (
        report.fwup_version[:50],
        report.nerves_fw_uuid[:36],
        report.nerves_fw_product[:200],
        report.nerves_fw_version[:100],
        report.nerves_fw_platform[:100],
        report.nerves_fw_architecture[:100],
        report.nerves_fw_author[:200],
        report.nerves_fw_description,
        report.nerves_fw_vcs_identifier[:200],
        report.nerves_fw_misc,
        {True: ValidationStatus.VALIDATED, False: ValidationStatus.NOT_VALIDATED, None: ValidationStatus.UNKNOWN}[
            report.firmware_validated
        ],
        report.firmware_auto_revert_detected,
        report.device_api_version[:50],
    )
    return stored != reported


def record_poll(device: Device, report: JoinReport | None) -> Device:
    """A polling device asked the hub something: store the firmware it reports
    (None: it reported none) as a join does (`join_device`: nothing is written
    when nothing changed) and its presence, throttled (`poll_write_interval`).
    Returns the device as stored, with its product.

    `device` is the device as authentication read it."""
    stored = device
    if report is not None and _reports_news(device, report):
        stored = join_device(device.pk, report)
    interval = product_poll_interval(stored.product_id)
    now = timezone.now()
    if stored.last_polled_at is None or now - stored.last_polled_at >= poll_write_interval(interval):
        until = now + timedelta(seconds=2 * interval)
        fields: dict[str, Any] = {
            "last_polled_at": now,
            "polling_until": until,
            "last_seen_at": now,
            "first_seen_at": Coalesce(F("first_seen_at"), Value(now)),
        }
        # Compare-and-set on the time read: of two racing polls one writes.
        if Device.objects.filter(pk=stored.pk, last_polled_at=stored.last_polled_at).update(**fields):
            stored.last_polled_at, stored.polling_until, stored.last_seen_at = now, until, now
            publish.page_device_polled(stored.org_id, stored.pk)
    return stored
