"""REST endpoints for signing keys and firmware."""

from __future__ import annotations

from datetime import datetime

from django.http import HttpRequest
from ninja import Router, Schema, Status
from ninja.errors import HttpError
from pydantic import ConfigDict, Field

from firmware import services
from firmware.models import Firmware, FirmwareKind, SigningKey
from nerveshub.apihelpers import actor, require_org, require_product
from nerveshub.tenancy.models import Role

router = Router(tags=["firmware"])
KEYS = "/orgs/{org}/keys"
FIRMWARE = "/orgs/{org}/products/{product}/firmwares"


class KeyIn(Schema):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=100)
    key: str = Field(min_length=1, description="Base64 ed25519 public key (fwup-key.pub)")


class KeyOut(Schema):
    name: str
    key: str
    created_at: datetime


class FirmwareOut(Schema):
    id: int
    uuid: str | None
    kind: str
    status: str
    rejected_reason: str
    version: str
    platform: str
    architecture: str
    author: str
    description: str
    vcs_identifier: str
    misc: str
    size: int
    sha256: str
    delta_resources: list[str]
    delta_fwup_version: str
    signing_key: str | None
    created_at: datetime


def _key_out(key: SigningKey) -> KeyOut:
    return KeyOut(name=key.name, key=key.key, created_at=key.created_at)


def _fw_out(firmware: Firmware) -> FirmwareOut:
    return FirmwareOut(
        id=firmware.pk,
        uuid=firmware.uuid,
        kind=firmware.kind,
        status=firmware.status,
        rejected_reason=firmware.rejected_reason,
        version=firmware.version,
        platform=firmware.platform,
        architecture=firmware.architecture,
        author=firmware.author,
        description=firmware.description,
        vcs_identifier=firmware.vcs_identifier,
        misc=firmware.misc,
        size=firmware.size,
        sha256=firmware.sha256,
        delta_resources=list(firmware.delta_resources),
        delta_fwup_version=firmware.delta_fwup_version,
        signing_key=firmware.signing_key.name if firmware.signing_key else None,
        created_at=firmware.created_at,
    )


@router.get(KEYS, response=list[KeyOut])
def list_keys(request: HttpRequest, org: str) -> list[KeyOut]:
    organization = require_org(request, org)
    return [_key_out(k) for k in SigningKey.objects.filter(org=organization).order_by("name")]


@router.post(KEYS, response={201: KeyOut})
def create_key(request: HttpRequest, org: str, payload: KeyIn) -> Status[KeyOut]:
    organization = require_org(request, org, Role.ADMIN)
    if SigningKey.objects.filter(org=organization, name=payload.name.strip()).exists():
        raise HttpError(409, f"a key named {payload.name!r} already exists")
    return Status(201, _key_out(services.create_signing_key(actor(request), organization, payload.name, payload.key)))


@router.get(KEYS + "/{name}", response=KeyOut)
def get_key(request: HttpRequest, org: str, name: str) -> KeyOut:
    key = SigningKey.objects.filter(org=require_org(request, org), name=name).first()
    if key is None:
        raise HttpError(404, f"key {name!r} not found")
    return _key_out(key)


@router.delete(KEYS + "/{name}", response={204: None})
def delete_key(request: HttpRequest, org: str, name: str) -> Status[None]:
    key = SigningKey.objects.filter(org=require_org(request, org, Role.ADMIN), name=name).first()
    if key is None:
        raise HttpError(404, f"key {name!r} not found")
    try:
        services.delete_signing_key(actor(request), key)
    except services.SigningKeyInUse as exc:
        raise HttpError(409, exc.reason) from None
    return Status(204, None)


def _firmware(request: HttpRequest, org: str, product: str, ref: str, role: str = Role.VIEW) -> Firmware:
    """`ref` is the firmware uuid, or the upload id while it has none yet."""
    found = require_product(request, org, product, role)
    rows = Firmware.objects.select_related("signing_key", "product").filter(product=found)
    # isdecimal() also holds for non-ASCII digits ("٣"), which are not ids.
    is_id = ref.isascii() and ref.isdecimal() and len(ref) <= 18
    firmware = rows.filter(pk=int(ref)).first() if is_id else rows.filter(uuid=ref).first()
    if firmware is None:
        raise HttpError(404, f"firmware {ref!r} not found")
    return firmware


@router.get(FIRMWARE, response=list[FirmwareOut])
def list_firmware(request: HttpRequest, org: str, product: str) -> list[FirmwareOut]:
    found = require_product(request, org, product)
    rows = Firmware.objects.filter(product=found).select_related("signing_key").order_by("-created_at")[:500]
    return [_fw_out(f) for f in rows]


# The multipart body is read by hand, after the access check: a declared File
# parameter would be validated first and tell an outsider the route exists.
UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["firmware"],
                    "properties": {
                        "firmware": {"type": "string", "format": "binary"},
                        "kind": {"type": "string", "enum": ["firmware", "archive"], "default": "firmware"},
                    },
                }
            }
        },
    }
}


@router.post(FIRMWARE, response={201: FirmwareOut}, openapi_extra=UPLOAD_BODY)
def upload(request: HttpRequest, org: str, product: str) -> Status[FirmwareOut]:
    """Multipart field `firmware` (and `kind`: `firmware`, the default, or
    `archive`). The file is validated in the background; poll the returned id
    until `status` is `valid` or `rejected`."""
    found = require_product(request, org, product, Role.MANAGE)
    firmware = request.FILES.get("firmware")
    if firmware is None:
        raise HttpError(422, "send the firmware file as the multipart field `firmware`")
    kind = request.POST.get("kind") or FirmwareKind.FIRMWARE
    if kind not in FirmwareKind.values:
        raise HttpError(422, "kind must be `firmware` or `archive`")
    try:
        row = services.upload_firmware(actor(request), found, firmware, firmware.name or "upload.fw", kind=kind)
    except services.UploadRefused as exc:
        raise HttpError(422, exc.reason) from None
    except services.StorageUnavailable:
        raise HttpError(503, services.UPLOAD_STORE_FAILED) from None
    row.refresh_from_db()
    return Status(201, _fw_out(row))


@router.get(FIRMWARE + "/{ref}", response=FirmwareOut)
def get_firmware(request: HttpRequest, org: str, product: str, ref: str) -> FirmwareOut:
    return _fw_out(_firmware(request, org, product, ref))


@router.delete(FIRMWARE + "/{ref}", response={204: None})
def delete_firmware(request: HttpRequest, org: str, product: str, ref: str) -> Status[None]:
    found = _firmware(request, org, product, ref, Role.MANAGE)
    try:
        services.delete_firmware(actor(request), found)
    except services.FirmwareInUse as exc:
        raise HttpError(409, exc.reason) from None
    return Status(204, None)
