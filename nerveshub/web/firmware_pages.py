"""A firmware file's own page: what validation read from it, who signed it,
which deployments use it, and its download link (manage). Deleting goes
through the list's delete view (firmware.services.delete_firmware), which
refuses while a deployment or an update record keeps the file."""

from __future__ import annotations

from django.contrib import messages
from django.db.models import Q
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, redirect

from deployments.models import Deployment, DeviceUpdate
from devices.models import Device
from firmware import services as firmware_services
from firmware.models import DeltaFirmware, Firmware, FirmwareStatus
from nerveshub.tenancy.models import Role
from nerveshub.web.access import get_org_for_user, org_methods
from nerveshub.web.views import _capped_count, _render, page

# Deltas listed on the page; a file patched from many versions shows the newest.
DELTAS_SHOWN = 20


def in_use_reason(firmware: Firmware) -> str:
    """Why the file cannot be deleted now ("" when it can): the same things
    that make delete_firmware refuse, said before the button is pressed."""
    names = list(
        Deployment.objects.filter(Q(firmware=firmware) | Q(archive=firmware)).values_list("name", flat=True)[:5]
    )
    if names:
        return "Used by deployment(s) " + ", ".join(names) + ": point them at other firmware first."
    if DeviceUpdate.objects.filter(firmware=firmware).exists():
        return "Devices' update records name it: it is kept as their history."
    return ""


@page
@org_methods("GET")
def firmware_detail(request: HttpRequest, org: str, pk: int) -> HttpResponse:
    access = get_org_for_user(request, org)
    firmware = get_object_or_404(
        Firmware.objects.select_related("product", "signing_key", "uploaded_by"), pk=pk, org=access.org
    )
    deployments = (
        Deployment.objects.filter(Q(firmware=firmware) | Q(archive=firmware)).select_related("product").order_by("name")
    )
    running, running_more = (0, False)
    if firmware.uuid:
        running, running_more = _capped_count(
            Device.objects.filter(org=access.org, firmware_uuid=firmware.uuid, deleted_at__isnull=True)
        )
    deltas = (
        DeltaFirmware.objects.filter(Q(source=firmware) | Q(target=firmware))
        .select_related("source", "target")
        .order_by("-created_at")[:DELTAS_SHOWN]
    )
    context = {
        "fw": firmware,
        "deployments": deployments,
        "running": running,
        "running_more": running_more,
        "deltas": deltas,
        "in_use": in_use_reason(firmware),
        "downloadable": firmware.status == FirmwareStatus.VALID and bool(firmware.storage_name),
    }
    return _render(request, access, "web/firmware_detail.html", context)


@page
@org_methods("GET")
def firmware_download(request: HttpRequest, org: str, pk: int) -> HttpResponse:
    """Send the manage role to a freshly signed URL of the file: the link on the
    page never expires, the URL it leads to does (FIRMWARE_URL_TTL)."""
    access = get_org_for_user(request, org, Role.MANAGE)
    firmware = get_object_or_404(Firmware, pk=pk, org=access.org)
    try:
        url = firmware_services.download_url(firmware)
    except ValueError:
        messages.error(request, "Only valid firmware can be downloaded.")
        return redirect("web:firmware_detail", access.slug, firmware.pk)
    response = HttpResponseRedirect(url)
    # The signed URL is a credential for its lifetime: no cache keeps it.
    response["Cache-Control"] = "no-store"
    return response
