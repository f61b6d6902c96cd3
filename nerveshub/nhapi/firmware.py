"""A product's firmware (docs/nerveshub-api.md, "Firmware")."""

from __future__ import annotations

import time

from django.http import HttpRequest, HttpResponse
from ninja import Router, Schema, Status
from ninja.errors import HttpError

from firmware import services
from firmware.models import Firmware, FirmwareKind, FirmwareStatus
from nerveshub.apihelpers import actor
from nerveshub.nhapi.common import Data, FieldErrors, not_found, product_for
from nerveshub.tenancy.models import Product, Role

router = Router(tags=["firmwares"])
BASE = "/orgs/{org}/products/{product}/firmwares"
TTL_MAX = 2**31 - 1
# How long an upload waits for a validation the background task is running.
DECISION_WAIT_SECONDS = 30


class FirmwareOut(Schema):
    uuid: str
    product: str
    version: str
    platform: str
    architecture: str
    author: str
    description: str
    vcs_identifier: str
    misc: str


def firmware_out(firmware: Firmware, product: Product) -> FirmwareOut:
    return FirmwareOut(
        uuid=firmware.uuid or "",
        product=product.name,
        version=firmware.version,
        platform=firmware.platform,
        architecture=firmware.architecture,
        author=firmware.author,
        description=firmware.description,
        vcs_identifier=firmware.vcs_identifier,
        misc=firmware.misc,
    )


def _firmware(request: HttpRequest, org: str, product: str, uuid: str, role: str = Role.VIEW) -> Firmware:
    found = product_for(request, org, product, role)
    firmware = (
        Firmware.objects.select_related("product")
        .filter(product=found, kind=FirmwareKind.FIRMWARE, status=FirmwareStatus.VALID, uuid=uuid)
        .first()
    )
    if firmware is None:
        raise not_found(f"firmware {uuid!r}")
    return firmware


@router.get(BASE, response=Data[list[FirmwareOut]])
def list_firmware(request: HttpRequest, org: str, product: str) -> Data[list[FirmwareOut]]:
    found = product_for(request, org, product)
    rows = Firmware.objects.filter(product=found, kind=FirmwareKind.FIRMWARE, status=FirmwareStatus.VALID)
    return Data(data=[firmware_out(f, found) for f in rows.order_by("-created_at")[:500]])


def _declare_chunked_length(request: HttpRequest) -> None:
    """NervesHub's tools stream the upload with chunked transfer encoding, so
    the request has no Content-Length, and Django's multipart parser reads a
    body without one as empty. The ASGI server has already spooled the whole
    body (within the limit nerveshub/lib/bodyguard.py sets) to a file: its
    size is the length."""
    if request.META.get("CONTENT_LENGTH"):
        return
    stream = getattr(request, "_stream", None)
    if stream is None or not hasattr(stream, "seek") or not hasattr(stream, "tell"):
        return
    start = stream.tell()
    stream.seek(0, 2)
    size = stream.tell() - start
    stream.seek(start)
    request.META["CONTENT_LENGTH"] = str(size)


def _decided(firmware_id: int) -> Firmware | None:
    """The upload once validated or rejected. The background task the upload
    queued may be validating it at the same moment (the compare-and-set in
    validate_firmware lets one of the two decide): wait for it, a bounded time."""
    deadline = time.monotonic() + DECISION_WAIT_SECONDS
    while True:
        row = Firmware.objects.select_related("product").filter(pk=firmware_id).first()
        if row is None or row.status != FirmwareStatus.PENDING or time.monotonic() > deadline:
            return row
        time.sleep(0.2)


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
                        "ttl": {"type": "integer", "minimum": 1, "maximum": TTL_MAX},
                    },
                }
            }
        },
    }
}


@router.post(BASE, response={201: Data[FirmwareOut]}, openapi_extra=UPLOAD_BODY)
def publish(request: HttpRequest, org: str, product: str, response: HttpResponse) -> Status[Data[FirmwareOut]]:
    """Multipart field `firmware` (a fwup .fw file for this product, signed with
    one of the organization's keys) and optional `ttl`. Validated before the
    answer: 201 with the firmware and a `location` header, or 422 with the
    reason. `ttl` is checked and not acted on: the hub keeps firmware until it
    is deleted."""
    found = product_for(request, org, product, Role.MANAGE)
    _declare_chunked_length(request)
    upload = request.FILES.get("firmware")
    if upload is None:
        raise FieldErrors({"firmware": ["send the firmware file as the multipart field `firmware`"]})
    ttl = request.POST.get("ttl")
    if ttl is not None and ttl != "":
        if not (ttl.isascii() and ttl.isdigit() and len(ttl) <= 10 and 0 < int(ttl) <= TTL_MAX):
            raise FieldErrors({"ttl": [f"must be a whole number of seconds between 1 and {TTL_MAX}"]})
    try:
        row = services.upload_firmware(actor(request), found, upload, upload.name or "upload.fw")
    except services.UploadRefused as exc:
        raise FieldErrors({"firmware": [exc.reason]}) from None
    # NervesHub's tools expect the file checked by the time they are answered
    # (a deployment update may name its uuid next); the background task that
    # the upload also queued then finds it decided and does nothing.
    try:
        services.validate_firmware(row.pk)
    except services.StorageUnavailable:
        raise HttpError(503, "the firmware store is unavailable; the upload will be validated later") from None
    validated = _decided(row.pk)
    if validated is None or validated.status == FirmwareStatus.PENDING:
        raise HttpError(503, "the upload is still being validated; list the firmware in a moment")
    if validated.status != FirmwareStatus.VALID:
        raise FieldErrors({"firmware": [validated.rejected_reason or "the firmware is not valid"]})
    response["Location"] = f"/api/orgs/{found.org.name}/products/{found.name}/firmwares/{validated.uuid}"
    return Status(201, Data(data=firmware_out(validated, found)))


@router.get(BASE + "/{uuid}", response=Data[FirmwareOut])
def get_firmware(request: HttpRequest, org: str, product: str, uuid: str) -> Data[FirmwareOut]:
    firmware = _firmware(request, org, product, uuid)
    return Data(data=firmware_out(firmware, firmware.product))


@router.delete(BASE + "/{uuid}", response={204: None})
def delete_firmware(request: HttpRequest, org: str, product: str, uuid: str) -> Status[None]:
    firmware = _firmware(request, org, product, uuid, Role.MANAGE)
    try:
        services.delete_firmware(actor(request), firmware)
    except services.FirmwareInUse as exc:
        raise HttpError(409, exc.reason) from None
    return Status(204, None)
