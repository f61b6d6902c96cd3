"""A product's devices, their actions and certificates (docs/nerveshub-api.md,
"Devices")."""

from __future__ import annotations

from datetime import datetime

from django.core.exceptions import ValidationError
from django.db import IntegrityError
from django.http import HttpRequest
from ninja import Query, Router, Schema, Status
from ninja.errors import HttpError
from pydantic import ConfigDict, Field

from certificates import services as certificates
from certificates.models import DeviceCertificate
from deployments.manual import UpdateRefused, send_update
from devices import services
from devices.fields import normalise_tags
from devices.models import IDENTIFIER_MAX_LENGTH, Device, validate_identifier, validate_tags
from devices.move import MoveRefused, move_device
from devices.scripts import TEXT_MAX, ScriptRefused, run_text
from firmware.models import Firmware
from nerveshub.apihelpers import actor
from nerveshub.lib.params import MAX_PAGE
from nerveshub.nhapi.common import (
    PEM_MAX,
    Data,
    FieldErrors,
    loose_bool,
    loose_tags,
    not_found,
    pem_from_base64,
    product_for,
)
from nerveshub.tenancy.models import Role

router = Router(tags=["devices"])
BASE = "/orgs/{org}/products/{product}/devices"


class FirmwareMetadataOut(Schema):
    uuid: str
    product: str
    version: str
    platform: str
    architecture: str
    author: str
    description: str
    vcs_identifier: str
    misc: str
    fwup_version: str


class DeploymentGroupOut(Schema):
    name: str


class DeviceOut(Schema):
    identifier: str
    description: str
    tags: list[str]
    online: bool
    connection_status: str
    firmware_metadata: FirmwareMetadataOut | None
    version: str
    deployment_group: DeploymentGroupOut | None
    updates_enabled: bool
    last_communication: datetime | None
    penalty_box_until: datetime | None
    org_name: str
    product_name: str


class PaginationOut(Schema):
    page_number: int
    page_size: int
    total_entries: int
    total_pages: int


class DevicePage(Schema):
    data: list[DeviceOut]
    pagination: PaginationOut


class DeviceFilters(Schema):
    page: int = Field(1, ge=1, le=MAX_PAGE, alias="pagination[page]")
    page_size: int = Field(25, ge=1, le=500, alias="pagination[page_size]")
    identifier: str | None = Field(None, max_length=IDENTIFIER_MAX_LENGTH, alias="filters[identifier]")
    tag: str | None = Field(None, max_length=200, alias="filters[tag]")
    connection: str | None = Field(
        None, max_length=20, alias="filters[connection]", description="connected or disconnected"
    )
    firmware_version: str | None = Field(None, max_length=100, alias="filters[firmware_version]")


class DeviceIn(Schema):
    model_config = ConfigDict(extra="ignore")
    identifier: str = Field(min_length=1, max_length=IDENTIFIER_MAX_LENGTH)
    description: str = Field("", max_length=10_000)
    tags: list[str] | str = []


class DeviceFields(Schema):
    model_config = ConfigDict(extra="ignore")
    description: str | None = Field(None, max_length=10_000)
    tags: list[str] | str | None = None
    updates_enabled: bool | str | None = None


class DeviceUpdateIn(DeviceFields):
    device: DeviceFields | None = Field(None, description='The same fields wrapped: {"device": {…}}')


def device_out(device: Device) -> DeviceOut:
    metadata = None
    if device.firmware_uuid:
        metadata = FirmwareMetadataOut(
            uuid=device.firmware_uuid,
            product=device.firmware_product,
            version=device.firmware_version,
            platform=device.firmware_platform,
            architecture=device.firmware_architecture,
            author=device.firmware_author,
            description=device.firmware_description,
            vcs_identifier=device.firmware_vcs_identifier,
            misc=device.firmware_misc,
            fwup_version=device.fwup_version,
        )
    return DeviceOut(
        identifier=device.identifier,
        description=device.description,
        tags=list(device.tags),
        online=device.online,
        connection_status=device.presence,
        firmware_metadata=metadata,
        version=device.firmware_version,
        deployment_group=DeploymentGroupOut(name=device.deployment.name) if device.deployment else None,
        updates_enabled=device.updates_enabled,
        last_communication=device.last_seen_at,
        penalty_box_until=device.penalty_box_until,
        org_name=device.product.org.name,
        product_name=device.product.name,
    )


def _device(request: HttpRequest, org: str, product: str, identifier: str, role: str = Role.VIEW) -> Device:
    found = product_for(request, org, product, role)
    device = (
        Device.objects.select_related("deployment", "hub_lease", "product__org")
        .filter(product=found, identifier=identifier, deleted_at__isnull=True)
        .first()
    )
    if device is None:
        raise not_found(f"device {identifier!r}")
    return device


def _tags(value: list[str] | str) -> list[str]:
    tags = normalise_tags(loose_tags(value))
    try:
        validate_tags(tags)
    except ValidationError as exc:
        raise FieldErrors({"tags": exc.messages}) from None
    return tags


@router.get(BASE, response=DevicePage)
def list_devices(request: HttpRequest, org: str, product: str, filters: Query[DeviceFilters]) -> DevicePage:
    found = product_for(request, org, product)
    rows = Device.objects.filter(product=found, deleted_at__isnull=True).select_related(
        "deployment", "hub_lease", "product__org"
    )
    if filters.identifier:
        rows = rows.filter(identifier__startswith=filters.identifier)
    if filters.tag:
        rows = rows.filter(tags__has_tag=filters.tag)
    if filters.connection:
        if filters.connection not in ("connected", "disconnected"):
            raise FieldErrors({"filters[connection]": ["must be connected or disconnected"]})
        rows = rows.online() if filters.connection == "connected" else rows.offline()
    if filters.firmware_version:
        rows = rows.filter(firmware_version=filters.firmware_version)
    total = rows.count()
    start = (filters.page - 1) * filters.page_size
    page = list(rows.order_by("identifier")[start : start + filters.page_size])
    pages = (total + filters.page_size - 1) // filters.page_size
    return DevicePage(
        data=[device_out(d) for d in page],
        pagination=PaginationOut(
            page_number=filters.page, page_size=filters.page_size, total_entries=total, total_pages=pages
        ),
    )


@router.post(BASE, response={201: Data[DeviceOut]})
def create_device(request: HttpRequest, org: str, product: str, payload: DeviceIn) -> Status[Data[DeviceOut]]:
    found = product_for(request, org, product, Role.MANAGE)
    try:
        validate_identifier(payload.identifier)
    except ValidationError as exc:
        raise FieldErrors({"identifier": exc.messages}) from None
    tags = _tags(payload.tags)
    try:
        services.create_device(actor(request), found, payload.identifier, description=payload.description, tags=tags)
    except IntegrityError:
        raise FieldErrors({"identifier": ["has already been taken"]}) from None
    return Status(201, Data(data=device_out(_device(request, org, product, payload.identifier))))


@router.get(BASE + "/{identifier}", response=Data[DeviceOut])
def get_device(request: HttpRequest, org: str, product: str, identifier: str) -> Data[DeviceOut]:
    return Data(data=device_out(_device(request, org, product, identifier)))


@router.put(BASE + "/{identifier}", response=Data[DeviceOut])
def update_device(
    request: HttpRequest, org: str, product: str, identifier: str, payload: DeviceUpdateIn
) -> Data[DeviceOut]:
    """`description`, `tags` (a list, or text with commas) and `updates_enabled`,
    flat or wrapped in `{"device": {…}}`."""
    device = _device(request, org, product, identifier, Role.MANAGE)
    fields: DeviceFields = payload.device if payload.device is not None else payload
    user = actor(request)
    tags = _tags(fields.tags) if fields.tags is not None else None
    enabled = loose_bool("updates_enabled", fields.updates_enabled) if fields.updates_enabled is not None else None
    if tags is not None:
        services.set_tags(user, device, tags)
    if enabled is not None:
        services.set_updates_enabled(user, Device.objects.filter(pk=device.pk), enabled)
    if fields.description is not None:
        services.set_description(user, device, fields.description)
    return Data(data=device_out(_device(request, org, product, identifier)))


@router.delete(BASE + "/{identifier}", response={204: None})
def delete_device(request: HttpRequest, org: str, product: str, identifier: str) -> Status[None]:
    device = _device(request, org, product, identifier, Role.MANAGE)
    services.soft_delete(actor(request), Device.objects.filter(pk=device.pk))
    return Status(204, None)


@router.post(BASE + "/{identifier}/reboot", response=Data[DeviceOut])
def reboot(request: HttpRequest, org: str, product: str, identifier: str) -> Data[DeviceOut]:
    device = _device(request, org, product, identifier, Role.MANAGE)
    services.reboot_device(actor(request), device)
    return Data(data=device_out(device))


@router.post(BASE + "/{identifier}/reconnect", response=Data[DeviceOut])
def reconnect(request: HttpRequest, org: str, product: str, identifier: str) -> Data[DeviceOut]:
    device = _device(request, org, product, identifier, Role.MANAGE)
    services.reconnect_device(actor(request), device)
    return Data(data=device_out(device))


@router.delete(BASE + "/{identifier}/penalty", response={204: None})
def clear_penalty(request: HttpRequest, org: str, product: str, identifier: str) -> Status[None]:
    device = _device(request, org, product, identifier, Role.MANAGE)
    services.clear_penalty_box(actor(request), Device.objects.filter(pk=device.pk))
    return Status(204, None)


class MoveIn(Schema):
    model_config = ConfigDict(extra="ignore")
    new_org_name: str = Field(min_length=1, max_length=100)
    new_product_name: str = Field(min_length=1, max_length=100)


@router.post(BASE + "/{identifier}/move", response=Data[DeviceOut])
def move(request: HttpRequest, org: str, product: str, identifier: str, payload: MoveIn) -> Data[DeviceOut]:
    """Move the device to another product, in this organization or another one
    where the caller also has the `manage` role."""
    device = _device(request, org, product, identifier, Role.MANAGE)
    target = product_for(request, payload.new_org_name, payload.new_product_name, Role.MANAGE)
    try:
        moved = move_device(actor(request), device, target)
    except MoveRefused as exc:
        raise HttpError(409, str(exc)) from None
    return Data(data=device_out(moved))


class UpgradeIn(Schema):
    model_config = ConfigDict(extra="ignore")
    uuid: str = Field(min_length=1, max_length=64, description="The UUID of a valid firmware of the device's product")


@router.post(BASE + "/{identifier}/upgrade", response={204: None})
def upgrade(request: HttpRequest, org: str, product: str, identifier: str, payload: UpgradeIn) -> Status[None]:
    """Push that firmware (the full file) to the connected device now, outside
    any deployment (docs/rollout.md, "Manual updates")."""
    device = _device(request, org, product, identifier, Role.MANAGE)
    firmware = Firmware.objects.filter(product=device.product, uuid=payload.uuid).select_related("product").first()
    if firmware is None:
        raise not_found(f"firmware {payload.uuid!r}")
    try:
        send_update(actor(request), device, firmware)
    except UpdateRefused as exc:
        raise HttpError(409, exc.reason) from None
    return Status(204, None)


class CodeIn(Schema):
    model_config = ConfigDict(extra="ignore")
    body: str | None = Field(None, max_length=TEXT_MAX, description="Elixir code to run on the device")
    code: str | None = Field(None, max_length=TEXT_MAX, description="The same, under the other name the tools use")


@router.post(BASE + "/{identifier}/code", response={204: None})
def code(request: HttpRequest, org: str, product: str, identifier: str, payload: CodeIn) -> Status[None]:
    """Run the text on the connected device as a support script (device API
    2.1.0 or later); its answer is kept with the device's script runs."""
    device = _device(request, org, product, identifier, Role.MANAGE)
    text = payload.code if payload.code is not None else payload.body
    if text is None or not text.strip():
        raise FieldErrors({"body": ["the code to run is required"]})
    try:
        run_text(actor(request), device, text)
    except ScriptRefused as exc:
        raise HttpError(409, exc.reason) from None
    return Status(204, None)


# --- Device certificates -------------------------------------------------------------

CERTS = BASE + "/{identifier}/certificates"


class DeviceCertIn(Schema):
    model_config = ConfigDict(extra="ignore")
    cert: str = Field(min_length=1, max_length=PEM_MAX * 2, description="The device certificate: PEM, base64-encoded")


class DeviceCertOut(Schema):
    serial: str
    not_before: datetime
    not_after: datetime
    aki: str
    ski: str
    fingerprint: str
    public_key_fingerprint: str
    revoked_at: datetime | None


def _cert_out(cert: DeviceCertificate) -> DeviceCertOut:
    return DeviceCertOut(
        serial=cert.serial,
        not_before=cert.not_before,
        not_after=cert.not_after,
        aki=cert.aki,
        ski=cert.ski,
        fingerprint=cert.fingerprint,
        public_key_fingerprint=cert.public_key_fingerprint,
        revoked_at=cert.revoked_at,
    )


def _cert(
    request: HttpRequest, org: str, product: str, identifier: str, serial: str, role: str = Role.VIEW
) -> DeviceCertificate:
    device = _device(request, org, product, identifier, role)
    cert = DeviceCertificate.objects.filter(device=device, serial=serial).order_by("-created_at").first()
    if cert is None:
        raise not_found(f"certificate {serial!r} of {identifier}")
    return cert


@router.get(CERTS, response=Data[list[DeviceCertOut]], tags=["device certificates"])
def list_certs(request: HttpRequest, org: str, product: str, identifier: str) -> Data[list[DeviceCertOut]]:
    device = _device(request, org, product, identifier)
    rows = DeviceCertificate.objects.filter(device=device).order_by("-created_at")
    return Data(data=[_cert_out(c) for c in rows])


@router.post(CERTS, response={201: Data[DeviceCertOut]}, tags=["device certificates"])
def register_cert(
    request: HttpRequest, org: str, product: str, identifier: str, payload: DeviceCertIn
) -> Status[Data[DeviceCertOut]]:
    device = _device(request, org, product, identifier, Role.MANAGE)
    pem = pem_from_base64("cert", payload.cert)
    try:
        cert = certificates.register_device_certificate(actor(request), device, pem)
    except certificates.CertificateError as exc:
        raise FieldErrors({"cert": [str(exc)]}) from None
    return Status(201, Data(data=_cert_out(cert)))


@router.get(CERTS + "/{serial}", response=Data[DeviceCertOut], tags=["device certificates"])
def get_cert(request: HttpRequest, org: str, product: str, identifier: str, serial: str) -> Data[DeviceCertOut]:
    return Data(data=_cert_out(_cert(request, org, product, identifier, serial)))


@router.delete(CERTS + "/{serial}", response={204: None}, tags=["device certificates"])
def delete_cert(request: HttpRequest, org: str, product: str, identifier: str, serial: str) -> Status[None]:
    cert = _cert(request, org, product, identifier, serial, Role.MANAGE)
    certificates.delete_device_certificates(actor(request), [cert])
    return Status(204, None)
