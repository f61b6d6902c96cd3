"""The `device` join across the apps: what one join does, in one call from
the socket's database thread (docs/rollout.md, "What a device's join and
reports do to its update").

1. store what the device reports (`devices.services.join_device`);
2. settle the in-flight update and the device's deployment, which may push
   an update (`deployments.rollout.on_device_joined`);
3. push the product's connecting code (`devices.scripts.push_connecting_code`);
4. read the org's signing keys when the device asked for them at connect,
   and record which were sent (trust preflight, docs/rollout.md).

Pushes go out on commit through the channel layer, so the device gets its join
reply first. This module is the only place that knows the join spans
devices, deployments and firmware: each domain app sees plain arguments
(`devices.services.JoinReport`), never the wire schema.
"""

from __future__ import annotations

from dataclasses import dataclass

from deployments import gate, preflight, rollout
from deployments.models import Deployment
from devicelink import hotpath
from devicelink.dbthreads import device_db_call
from devicelink.protocol import DeviceJoin
from devices import scripts, services
from devices.models import Device
from firmware.services import public_keys_for_org


@dataclass(frozen=True)
class JoinOutcome:
    fwup_public_keys: list[str] | None  # None: not asked, or the org has none
    archive_public_keys: list[str] | None
    # As stored by the join, with its deployment, firmware and archive loaded:
    # what follows the join (deployments.rollout.on_device_joined) reads it.
    device: Device


def join_report(params: DeviceJoin) -> services.JoinReport:
    """The join's payload as the domain reads it."""
    return services.JoinReport(
        fwup_version=params.fwup_version,
        device_api_version=params.device_api_version,
        console_version=params.console_version,
        nerves_fw_uuid=params.nerves_fw_uuid,
        nerves_fw_product=params.nerves_fw_product,
        nerves_fw_version=params.nerves_fw_version,
        nerves_fw_platform=params.nerves_fw_platform,
        nerves_fw_architecture=params.nerves_fw_architecture,
        nerves_fw_author=params.nerves_fw_author,
        nerves_fw_description=params.nerves_fw_description,
        nerves_fw_vcs_identifier=params.nerves_fw_vcs_identifier,
        nerves_fw_misc=params.nerves_fw_misc,
        currently_downloading_uuid=params.currently_downloading_uuid,
        firmware_validated=params.meta.firmware_validated,
        firmware_auto_revert_detected=params.meta.firmware_auto_revert_detected,
    )


def needs_nothing(known: hotpath.StoredDevice, params: DeviceJoin) -> bool:
    """Whether `store_join` of this join would write, push and change nothing,
    judged on what the connect read (devicelink.hotpath): then it is skipped."""
    if "on_connect" in (params.fwup_public_keys, params.archive_public_keys):
        return False  # the org's signing keys are read and sent
    return hotpath.join_needs_nothing(known, join_report(params))


def store_join(device_id: int, params: DeviceJoin) -> tuple[JoinOutcome, int | None]:
    """The `device` join's database work: store what it reports, settle the
    in-flight update and the deployment (which may push one), run the
    connecting code. Returns the join's outcome and the device's deployment."""
    report = join_report(params)
    device = services.join_device(device_id, report)
    if device.deployment_id is not None:
        # A plain read rather than a four-table select_related with the device:
        # compiling that select cost more hub CPU than any other step of a join.
        device.deployment = (
            Deployment.objects.select_related("firmware", "archive").filter(pk=device.deployment_id).first()
        )
    keys: list[str] | None = None
    if "on_connect" in (params.fwup_public_keys, params.archive_public_keys):
        # Like the reference: every key of the org, and nothing pushed when it has none.
        keys = public_keys_for_org(device.org_id) or None
    outcome = JoinOutcome(
        fwup_public_keys=keys if params.fwup_public_keys == "on_connect" else None,
        archive_public_keys=keys if params.archive_public_keys == "on_connect" else None,
        device=device,
    )
    if outcome.fwup_public_keys:
        # What the device will trust from now on: trust preflight reads it.
        preflight.record_keys_sent(device_id, outcome.fwup_public_keys)
    deployment_id = rollout.on_device_joined(device_id, report, seen=device)
    unchanged = device.deployment_id == deployment_id
    scripts.push_connecting_code(device_id, seen=device if unchanged else None)
    return outcome, deployment_id


def quiet_join(device_id: int, deployment_id: int) -> None:
    """A join that needs nothing (needs_nothing): the health gate counts the
    reconnect, and the deployment's orchestrator is woken, as every join wakes it."""
    gate.note_reconnect(device_id)
    rollout.wake_now(deployment_id)


async def quiet_join_from_loop(known: hotpath.StoredDevice, device_id: int, deployment_id: int) -> None:
    """`quiet_join` from the device socket's event loop: the gate's reconnect
    count only for a device the connect found counted (most are not), the
    wake mark on the loop's Redis client; a database thread only for what is
    left (the count, or a run to enqueue)."""
    if known.gate_counted:
        await device_db_call(gate.note_reconnect)(device_id)
    if await rollout.wake_marked(deployment_id):
        await device_db_call(rollout.enqueue_run)(deployment_id)
