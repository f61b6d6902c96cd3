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
from devices.models import IDENTIFIER_MAX_LENGTH, Device, validate_identifier, validate_tags
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


def _device(request: HttpRequest, org: str, product: str, identifier: str, role: str = Role.VIEW) -> Device:
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
    return _out(_device(request, org, product, identifier))


@router.patch(BASE + "/{identifier}", response=DeviceOut)
def update_device(request: HttpRequest, org: str, product: str, identifier: str, payload: DevicePatch) -> DeviceOut:
    device = _device(request, org, product, identifier, Role.MANAGE)
    user = actor(request)
    one = Device.objects.filter(pk=device.pk)
    if payload.tags is not None:
        services.set_tags(user, device, _tags(payload.tags))
    if payload.updates_enabled is not None:
        services.set_updates_enabled(user, one, payload.updates_enabled)
    if payload.description is not None:
        services.set_description(user, device, payload.description)
    return _out(_device(request, org, product, identifier))


@router.delete(BASE + "/{identifier}", response={204: None})
def delete_device(request: HttpRequest, org: str, product: str, identifier: str) -> Status[None]:
    device = _device(request, org, product, identifier, Role.MANAGE)
    services.soft_delete(actor(request), Device.objects.filter(pk=device.pk))
    return Status(204, None)


@router.delete(BASE + "/{identifier}/penalty", response={204: None})
def clear_penalty(request: HttpRequest, org: str, product: str, identifier: str) -> Status[None]:
    device = _device(request, org, product, identifier, Role.MANAGE)
    services.clear_penalty_box(actor(request), Device.objects.filter(pk=device.pk))
    return Status(204, None)


@router.post(BASE + "/{identifier}/reboot", response={202: None})
def reboot(request: HttpRequest, org: str, product: str, identifier: str) -> Status[None]:
    services.reboot_device(actor(request), _device(request, org, product, identifier, Role.MANAGE))
    return Status(202, None)


@router.post(BASE + "/{identifier}/identify", response={202: None})
def identify(request: HttpRequest, org: str, product: str, identifier: str) -> Status[None]:
    services.identify_device(actor(request), _device(request, org, product, identifier, Role.MANAGE))
    return Status(202, None)


@router.post(BASE + "/{identifier}/reconnect", response={202: None})
def reconnect(request: HttpRequest, org: str, product: str, identifier: str) -> Status[None]:
    services.reconnect_device(actor(request), _device(request, org, product, identifier, Role.MANAGE))
    return Status(202, None)
