"""REST endpoints for deployments: /orgs/{org}/products/{product}/deployments/…"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from django.http import HttpRequest
from django.utils import timezone
from ninja import Router, Schema, Status
from ninja.errors import HttpError
from pydantic import ConfigDict, Field, StrictBool

from deployments import deltas, preflight, revert, rollout, windows
from deployments.manual import UpdateRefused, send_update
from deployments.models import Deployment
from devices.api import load_device
from devices.fields import normalise_tags
from firmware import deltas as firmware_deltas
from firmware.models import Firmware, FirmwareKind
from nerveshub.apihelpers import actor, require_product
from nerveshub.tenancy.models import Product, Role

router = Router(tags=["deployments"])
BASE = "/orgs/{org}/products/{product}/deployments"


class Conditions(Schema):
    model_config = ConfigDict(extra="forbid")
    version: str = ""
    tags: list[str] = []


class Settings(Schema):
    model_config = ConfigDict(extra="forbid")
    concurrent_updates: int | None = Field(None, ge=1)
    inflight_timeout_minutes: int | None = Field(None, ge=1)
    penalty_attempts: int | None = Field(None, ge=1)
    penalty_rate_attempts: int | None = Field(None, ge=1)
    penalty_rate_seconds: int | None = Field(None, ge=1)
    penalty_minutes: int | None = Field(None, ge=1)
    breaker_failure_percent: int | None = Field(None, ge=1, le=100)
    breaker_min_attempts: int | None = Field(None, ge=1)
    delta_updates: StrictBool | None = Field(None, description="send deltas when every condition holds")
    windows: list[str] | None = Field(
        None, max_length=windows.MAX_WINDOWS, description=f"maintenance windows, each {windows.SYNTAX}; [] for none"
    )
    preflight: Literal["warn", "refuse"] | None = Field(
        None, description="activation when devices would refuse the firmware: warn, or refuse"
    )
    soak_minutes: int | None = Field(None, ge=0, description="minutes on the new firmware before success")
    gate_enabled: StrictBool | None = Field(None, description="pause when updated devices do worse")
    gate_margin_percent: int | None = Field(None, ge=0, le=1000)
    gate_min_devices: int | None = Field(None, ge=2)
    gate_metric: str | None = Field(None, max_length=100, description="a health metric to compare, e.g. cpu_temp")
    gate_metric_higher_is_worse: StrictBool | None = None


class DeploymentIn(Settings):
    name: str = Field(min_length=1, max_length=100)
    firmware: str = Field(description="uuid of a validated firmware of the product")
    archive: str | None = Field(None, description="uuid of a validated archive of the product")
    connecting_code: str | None = Field(None, max_length=100_000, description="Elixir run on each join")
    conditions: Conditions = Conditions()


class DeploymentPatch(Settings):
    firmware: str | None = None
    archive: str | None = Field(None, description='uuid of a validated archive, or "" to remove it')
    connecting_code: str | None = Field(None, max_length=100_000)
    conditions: Conditions | None = None


class DeploymentOut(Schema):
    name: str
    firmware_uuid: str
    firmware_version: str
    archive_uuid: str | None
    connecting_code: str
    conditions: Conditions
    is_active: bool
    paused: bool
    paused_reason: str
    concurrent_updates: int
    delta_updates: bool
    windows: list[str]
    window_note: str = Field(description='"" inside a window (or none set), else why not and when the next opens')
    preflight: str
    preflight_warning: str = Field("", description="on activation: the devices that would refuse the firmware")
    deltas_available: bool
    deltas: list[DeltaOut]
    soak_minutes: int
    gate_enabled: bool
    gate: dict[str, Any] = Field(description="the health gate's last verdict with both cohorts' figures")
    reverts: str | None = Field(description="the deployment this one reverts")
    updated_at: datetime


class PreflightDeviceOut(Schema):
    identifier: str
    reasons: list[str]


class PreflightOut(Schema):
    mode: str
    checked: int
    refusing: int
    devices: list[PreflightDeviceOut]


class DeltaOut(Schema):
    source_uuid: str
    source_version: str
    status: str
    reason: str
    size: int
    saving: int


class RevertOut(Schema):
    reverts: str
    deployments: list[DeploymentOut]
    devices: int
    left: int = Field(description="devices with no known previous firmware, left as they are")


class StatusOut(Schema):
    name: str
    is_active: bool
    paused: bool
    paused_reason: str
    counts: dict[str, int]


def _out(deployment: Deployment, preflight_warning: str = "") -> DeploymentOut:
    return DeploymentOut(
        name=deployment.name,
        firmware_uuid=deployment.firmware.uuid or "",
        firmware_version=deployment.firmware.version,
        archive_uuid=deployment.archive.uuid if deployment.archive else None,
        connecting_code=deployment.connecting_code,
        conditions=Conditions(version=deployment.conditions_version, tags=list(deployment.conditions_tags)),
        is_active=deployment.is_active,
        paused=deployment.paused_at is not None,
        paused_reason=deployment.paused_reason,
        concurrent_updates=deployment.concurrent_updates,
        delta_updates=deployment.delta_updates,
        windows=list(deployment.windows),
        window_note=windows.closed_reason(rollout.current_windows(deployment), timezone.now()),
        preflight=deployment.preflight,
        preflight_warning=preflight_warning,
        deltas_available=firmware_deltas.deltas_available(),
        deltas=[
            DeltaOut(
                source_uuid=row.source.uuid or "",
                source_version=row.source.version,
                status=row.status,
                reason=row.reason,
                size=row.size,
                saving=row.saving,
            )
            for row in deltas.pairs(deployment)
        ],
        soak_minutes=deployment.soak_minutes,
        gate_enabled=deployment.gate_enabled,
        gate=deployment.gate_report or {},
        reverts=deployment.reverts.name if deployment.reverts_id and deployment.reverts else None,
        updated_at=deployment.updated_at,
    )


def _deployment(request: HttpRequest, org: str, product: str, name: str, role: str = Role.VIEW) -> Deployment:
    found = require_product(request, org, product, role)
    deployment = Deployment.objects.select_related("firmware", "archive").filter(product=found, name=name).first()
    if deployment is None:
        raise HttpError(404, f"deployment {name!r} not found")
    return deployment


def _firmware(product: Product, uuid: str, kind: str = FirmwareKind.FIRMWARE) -> Firmware:
    """The product's file with that uuid (404 when it has none); whether it may
    be deployed is the service's rule (rollout.check_deployment)."""
    firmware = Firmware.objects.select_related("product").filter(product=product, uuid=uuid, kind=kind).first()
    if firmware is None:
        raise HttpError(404, f"{kind} {uuid!r} not found in {product.name}")
    return firmware


def _conditions(conditions: Conditions) -> dict[str, object]:
    return {"conditions_version": conditions.version.strip(), "conditions_tags": normalise_tags(conditions.tags)}


@router.get(BASE, response=list[DeploymentOut])
def list_deployments(request: HttpRequest, org: str, product: str) -> list[DeploymentOut]:
    found = require_product(request, org, product)
    return [_out(d) for d in Deployment.objects.filter(product=found).select_related("firmware").order_by("name")]


@router.post(BASE, response={201: DeploymentOut})
def create_deployment(request: HttpRequest, org: str, product: str, payload: DeploymentIn) -> Status[DeploymentOut]:
    """Deployments are created inactive; activate them when the preview looks right."""
    found = require_product(request, org, product, Role.MANAGE)
    if Deployment.objects.filter(product=found, name=payload.name).exists():
        raise HttpError(409, f"deployment {payload.name!r} already exists")
    settings = payload.model_dump(exclude={"name", "firmware", "archive", "conditions"}, exclude_none=True)
    deployment = Deployment(
        org=found.org,
        product=found,
        name=payload.name,
        firmware=_firmware(found, payload.firmware),
        archive=_firmware(found, payload.archive, FirmwareKind.ARCHIVE) if payload.archive else None,
        **_conditions(payload.conditions),
        **settings,
    )
    rollout.save_deployment(actor(request), deployment, ["name", "firmware", "archive", *settings], via="api")
    return Status(201, _out(deployment))


@router.get(BASE + "/{name}", response=DeploymentOut)
def get_deployment(request: HttpRequest, org: str, product: str, name: str) -> DeploymentOut:
    return _out(_deployment(request, org, product, name))


@router.patch(BASE + "/{name}", response=DeploymentOut)
def update_deployment(
    request: HttpRequest, org: str, product: str, name: str, payload: DeploymentPatch
) -> DeploymentOut:
    deployment = _deployment(request, org, product, name, Role.MANAGE)
    changes: dict[str, object] = payload.model_dump(exclude={"firmware", "archive", "conditions"}, exclude_none=True)
    if payload.firmware is not None:
        changes["firmware"] = _firmware(deployment.product, payload.firmware)
    if payload.archive is not None:
        changes["archive"] = (
            _firmware(deployment.product, payload.archive, FirmwareKind.ARCHIVE) if payload.archive else None
        )
    if payload.conditions is not None:
        changes.update(_conditions(payload.conditions))
    for field, value in changes.items():
        setattr(deployment, field, value)
    rollout.save_deployment(actor(request), deployment, changes, via="api")
    return _out(deployment)


def _toggle(request: HttpRequest, org: str, product: str, name: str, verb: str) -> DeploymentOut:
    deployment = _deployment(request, org, product, name, Role.MANAGE)
    rollout.SWITCHES[verb](actor(request), deployment)
    deployment.refresh_from_db()
    return _out(deployment)


@router.post(BASE + "/{name}/activate", response=DeploymentOut)
def activate(request: HttpRequest, org: str, product: str, name: str) -> DeploymentOut:
    """422 when the trust preflight refuses; under warn the answer's
    preflight_warning names the devices that would refuse the firmware."""
    deployment = _deployment(request, org, product, name, Role.MANAGE)
    rollout.SWITCHES["activate"](actor(request), deployment)
    deployment.refresh_from_db()
    return _out(deployment, preflight.check(deployment).summary())


@router.get(BASE + "/{name}/preflight", response=PreflightOut)
def preflight_report(request: HttpRequest, org: str, product: str, name: str) -> PreflightOut:
    """The matching devices that would refuse the deployment's firmware, and why."""
    deployment = _deployment(request, org, product, name)
    report = preflight.check(deployment)
    return PreflightOut(
        mode=report.mode,
        checked=report.checked,
        refusing=report.refusing,
        devices=[
            PreflightDeviceOut(identifier=report.identifiers[pk], reasons=reasons)
            for pk, reasons in list(report.reasons.items())[:500]
        ],
    )


@router.post(BASE + "/{name}/deactivate", response=DeploymentOut)
def deactivate(request: HttpRequest, org: str, product: str, name: str) -> DeploymentOut:
    return _toggle(request, org, product, name, "deactivate")


@router.post(BASE + "/{name}/pause", response=DeploymentOut)
def pause(request: HttpRequest, org: str, product: str, name: str) -> DeploymentOut:
    return _toggle(request, org, product, name, "pause")


@router.post(BASE + "/{name}/resume", response=DeploymentOut)
def resume(request: HttpRequest, org: str, product: str, name: str) -> DeploymentOut:
    return _toggle(request, org, product, name, "resume")


@router.post(BASE + "/{name}/revert", response={201: RevertOut})
def revert_deployment(request: HttpRequest, org: str, product: str, name: str) -> Status[RevertOut]:
    """Send the devices a paused or stopped rollout updated back to the
    firmware each ran before, through new deployments (one per previous
    firmware); 409 when the rollout runs, was reverted, or has none to revert."""
    deployment = _deployment(request, org, product, name, Role.MANAGE)
    try:
        result = revert.revert(actor(request), deployment, via="api")
    except revert.RevertRefused as exc:
        raise HttpError(409, str(exc)) from None
    return Status(
        201,
        RevertOut(
            reverts=deployment.name,
            deployments=[_out(d) for d in result.deployments],
            devices=result.devices,
            left=result.left,
        ),
    )


@router.get(BASE + "/{name}/status", response=StatusOut)
def status(request: HttpRequest, org: str, product: str, name: str) -> StatusOut:
    deployment = _deployment(request, org, product, name)
    return StatusOut(
        name=deployment.name,
        is_active=deployment.is_active,
        paused=deployment.paused_at is not None,
        paused_reason=deployment.paused_reason,
        counts=rollout.progress(deployment),
    )


# --- Manual updates (docs/rollout.md, "Manual updates") ----------------------------------


class ManualUpdateIn(Schema):
    model_config = ConfigDict(extra="forbid")
    firmware: str = Field(min_length=1, max_length=64, description="The UUID of a valid firmware of the product")


class ManualUpdateOut(Schema):
    id: int
    firmware: str
    version: str
    status: str
    created_at: datetime


@router.post(
    "/orgs/{org}/products/{product}/devices/{identifier}/update", response={202: ManualUpdateOut}, tags=["devices"]
)
def push_update(
    request: HttpRequest, org: str, product: str, identifier: str, payload: ManualUpdateIn
) -> Status[ManualUpdateOut]:
    """Push that firmware (the full file) to the connected device now, outside
    any deployment. The device's reports then move the update along (its
    history on the device page and in the audit log)."""
    device = load_device(request, org, product, identifier, Role.MANAGE)
    firmware = Firmware.objects.select_related("product").filter(product=device.product, uuid=payload.firmware).first()
    if firmware is None:
        raise HttpError(404, f"firmware {payload.firmware!r} not found in {product}")
    try:
        update = send_update(actor(request), device, firmware)
    except UpdateRefused as exc:
        raise HttpError(409, exc.reason) from None
    return Status(
        202,
        ManualUpdateOut(
            id=update.pk,
            firmware=firmware.uuid or "",
            version=firmware.version,
            status=update.status,
            created_at=update.created_at,
        ),
    )
