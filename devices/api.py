"""REST endpoints for devices: /orgs/{org}/products/{product}/devices/…"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from django.core.exceptions import ValidationError
from django.db import IntegrityError
from django.http import HttpRequest
from ninja import Query, Router, Schema, Status
from ninja.errors import HttpError
from pydantic import AfterValidator, ConfigDict, Field

from devices import services
from devices.fields import normalise_tags
from devices.models import IDENTIFIER_MAX_LENGTH, Device, ScriptRun, SupportScript, validate_identifier, validate_tags
from devices.move import MoveRefused, move_device
from devices.scripts import DEFAULT_TIMEOUT_MS, TEXT_MAX, ScriptRefused, run_script, run_text
from nerveshub.apihelpers import actor, require_product
from nerveshub.lib.params import MAX_PAGE, api_int
from nerveshub.tenancy.models import Product, Role

router = Router(tags=["devices"])
BASE = "/orgs/{org}/products/{product}/devices"


def _identifier(value: str) -> str:
    # The model's rule (devices.models.validate_identifier), as a 422 on the field.
    try:
        validate_identifier(value)
    except ValidationError as exc:
        raise ValueError(" ".join(exc.messages)) from None
    return value


class DeviceIn(Schema):
    model_config = ConfigDict(extra="forbid")
    identifier: Annotated[str, AfterValidator(_identifier)] = Field(min_length=1, max_length=IDENTIFIER_MAX_LENGTH)
    description: str = ""
    tags: list[str] = []


class DevicePatch(Schema):
    model_config = ConfigDict(extra="forbid")
    description: str | None = None
    tags: list[str] | None = None
    updates_enabled: bool | None = None


class DeviceOut(Schema):
    identifier: str
    description: str
    tags: list[str]
    online: bool
    connection_status: str
    last_seen_at: datetime | None
    firmware_uuid: str
    firmware_version: str
    platform: str
    architecture: str
    firmware_validation: str
    updates_enabled: bool
    penalty_box_until: datetime | None
    deployment: str | None


class DevicePage(Schema):
    devices: list[DeviceOut]
    page: int
    page_size: int
    total: int


class DeviceFilters(Schema):
    tag: str | None = None
    online: bool | None = None
    version: str | None = None
    search: str | None = Field(None, description="Identifier prefix")
    page: int = api_int(1, maximum=MAX_PAGE)
    page_size: int = api_int(50, maximum=500)


def _out(device: Device) -> DeviceOut:
    return DeviceOut(
        identifier=device.identifier,
        description=device.description,
        tags=list(device.tags),
        online=device.online,
        connection_status=device.presence,
        last_seen_at=device.last_seen_at,
        firmware_uuid=device.firmware_uuid,
        firmware_version=device.firmware_version,
        platform=device.firmware_platform,
        architecture=device.firmware_architecture,
        firmware_validation=device.firmware_validation,
        updates_enabled=device.updates_enabled,
        penalty_box_until=device.penalty_box_until,
        deployment=device.deployment.name if device.deployment else None,
    )


def load_device(request: HttpRequest, org: str, product: str, identifier: str, role: str = Role.VIEW) -> Device:
    """The live device, after require_product's checks (404 for an outsider,
    403 below `role`); other routers' device routes load it here too."""
    found_product = require_product(request, org, product, role)
    device = (
        Device.objects.select_related("deployment", "hub_lease")
        .filter(product=found_product, identifier=identifier, deleted_at__isnull=True)
        .first()
    )
    if device is None:
        raise HttpError(404, f"device {identifier!r} not found")
    return device


def _tags(value: list[str]) -> list[str]:
    tags = normalise_tags(value)
    try:
        validate_tags(tags)
    except Exception as exc:
        raise HttpError(422, str(getattr(exc, "message", exc))) from None
    return tags


@router.get(BASE, response=DevicePage)
def list_devices(request: HttpRequest, org: str, product: str, filters: Query[DeviceFilters]) -> DevicePage:
    found: Product = require_product(request, org, product)
    devices = Device.objects.filter(product=found, deleted_at__isnull=True).select_related("deployment", "hub_lease")
    if filters.tag:
        devices = devices.filter(tags__has_tag=filters.tag)
    if filters.online is not None:
        devices = devices.online() if filters.online else devices.offline()
    if filters.version:
        devices = devices.filter(firmware_version=filters.version)
    if filters.search:
        devices = devices.filter(identifier__startswith=filters.search)
    start = (filters.page - 1) * filters.page_size
    page = list(devices.order_by("identifier")[start : start + filters.page_size])
    return DevicePage(
        devices=[_out(d) for d in page], page=filters.page, page_size=filters.page_size, total=devices.count()
    )


@router.post(BASE, response={201: DeviceOut})
def create_device(request: HttpRequest, org: str, product: str, payload: DeviceIn) -> Status[DeviceOut]:
    found = require_product(request, org, product, Role.MANAGE)
    try:
        device = services.create_device(
            actor(request), found, payload.identifier, description=payload.description, tags=_tags(payload.tags)
        )
    except IntegrityError:
        raise HttpError(409, f"device {payload.identifier!r} already exists in {org}") from None
    return Status(201, _out(device))


@router.get(BASE + "/{identifier}", response=DeviceOut)
def get_device(request: HttpRequest, org: str, product: str, identifier: str) -> DeviceOut:
    return _out(load_device(request, org, product, identifier))


@router.patch(BASE + "/{identifier}", response=DeviceOut)
def update_device(request: HttpRequest, org: str, product: str, identifier: str, payload: DevicePatch) -> DeviceOut:
    device = load_device(request, org, product, identifier, Role.MANAGE)
    user = actor(request)
    one = Device.objects.filter(pk=device.pk)
    if payload.tags is not None:
        services.set_tags(user, device, _tags(payload.tags))
    if payload.updates_enabled is not None:
        services.set_updates_enabled(user, one, payload.updates_enabled)
    if payload.description is not None:
        services.set_description(user, device, payload.description)
    return _out(load_device(request, org, product, identifier))


@router.delete(BASE + "/{identifier}", response={204: None})
def delete_device(request: HttpRequest, org: str, product: str, identifier: str) -> Status[None]:
    device = load_device(request, org, product, identifier, Role.MANAGE)
    services.soft_delete(actor(request), Device.objects.filter(pk=device.pk))
    return Status(204, None)


@router.delete(BASE + "/{identifier}/penalty", response={204: None})
def clear_penalty(request: HttpRequest, org: str, product: str, identifier: str) -> Status[None]:
    device = load_device(request, org, product, identifier, Role.MANAGE)
    services.clear_penalty_box(actor(request), Device.objects.filter(pk=device.pk))
    return Status(204, None)


@router.post(BASE + "/{identifier}/reboot", response={202: None})
def reboot(request: HttpRequest, org: str, product: str, identifier: str) -> Status[None]:
    services.reboot_device(actor(request), load_device(request, org, product, identifier, Role.MANAGE))
    return Status(202, None)


@router.post(BASE + "/{identifier}/identify", response={202: None})
def identify(request: HttpRequest, org: str, product: str, identifier: str) -> Status[None]:
    services.identify_device(actor(request), load_device(request, org, product, identifier, Role.MANAGE))
    return Status(202, None)


@router.post(BASE + "/{identifier}/reconnect", response={202: None})
def reconnect(request: HttpRequest, org: str, product: str, identifier: str) -> Status[None]:
    services.reconnect_device(actor(request), load_device(request, org, product, identifier, Role.MANAGE))
    return Status(202, None)


class MoveIn(Schema):
    model_config = ConfigDict(extra="forbid")
    product: str = Field(min_length=1, max_length=100, description="The product of this organization to move it to")


@router.post(BASE + "/{identifier}/move", response=DeviceOut)
def move(request: HttpRequest, org: str, product: str, identifier: str, payload: MoveIn) -> DeviceOut:
    """Move the device to another product of the organization: it leaves its
    deployment and reconnects as a device of that product."""
    device = load_device(request, org, product, identifier, Role.MANAGE)
    target = require_product(request, org, payload.product, Role.MANAGE)
    try:
        moved = move_device(actor(request), device, target)
    except MoveRefused as exc:
        raise HttpError(409, str(exc)) from None
    return _out(moved)


# --- Support scripts ---------------------------------------------------------------------


class ScriptRunIn(Schema):
    model_config = ConfigDict(extra="forbid")
    script: str | None = Field(None, min_length=1, max_length=100, description="The name of a saved script")
    text: str | None = Field(None, min_length=1, max_length=TEXT_MAX, description="Elixir code, instead of a script")
    timeout_ms: int | None = Field(
        None, ge=1, le=600_000, description="How long the device lets ad-hoc text run (a script has its own)"
    )


class ScriptRunOut(Schema):
    ref: str
    script: str | None
    status: str = Field(description="pending, completed or error")
    output: str
    return_value: str
    reason: str
    created_at: datetime
    finished_at: datetime | None


def _run_out(run: ScriptRun) -> ScriptRunOut:
    return ScriptRunOut(
        ref=run.ref,
        script=run.script.name if run.script is not None else None,
        status=run.status,
        output=run.output,
        return_value=run.return_value,
        reason=run.reason,
        created_at=run.created_at,
        finished_at=run.finished_at,
    )


@router.post(BASE + "/{identifier}/scripts", response={202: ScriptRunOut}, tags=["support scripts"])
def run_on_device(
    request: HttpRequest, org: str, product: str, identifier: str, payload: ScriptRunIn
) -> Status[ScriptRunOut]:
    """Run a saved support script (`script`) or ad-hoc Elixir (`text`) on the
    connected device (device API 2.1.0 or later). The answer's `ref` reads the
    result once the device has answered."""
    device = load_device(request, org, product, identifier, Role.MANAGE)
    if (payload.script is None) == (payload.text is None):
        raise HttpError(422, "give either script (a saved script's name) or text (code to run)")
    if payload.text is not None and not payload.text.strip():
        raise HttpError(422, "text holds no code to run")
    user = actor(request)
    try:
        if payload.script is not None:
            script = SupportScript.objects.filter(product=device.product, name=payload.script).first()
            if script is None:
                raise HttpError(404, f"script {payload.script!r} not found in {product}")
            run = run_script(user, device, script)
        else:
            run = run_text(user, device, payload.text or "", payload.timeout_ms or DEFAULT_TIMEOUT_MS)
    except ScriptRefused as exc:
        raise HttpError(409, exc.reason) from None
    return Status(202, _run_out(run))


@router.get(BASE + "/{identifier}/scripts/{ref}", response=ScriptRunOut, tags=["support scripts"])
def script_result(request: HttpRequest, org: str, product: str, identifier: str, ref: str) -> ScriptRunOut:
    """A run's status, and once the device answered, its output and return
    value. Needs `manage`, as running one does: output can hold anything the
    device knows."""
    device = load_device(request, org, product, identifier, Role.MANAGE)
    run = ScriptRun.objects.select_related("script").filter(device=device, ref=ref[:20]).first()
    if run is None:
        raise HttpError(404, f"script run {ref!r} not found on {identifier}")
    return _run_out(run)
