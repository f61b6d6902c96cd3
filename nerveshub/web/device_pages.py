"""Organization pages that create, delete, restore and move devices, and the
product's health thresholds. Each view checks the org and role first
(`get_org_for_user`), then hands the write to the device or product service."""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.db import IntegrityError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect

from devices import services as devices
from devices.models import Device
from devices.move import MoveRefused, move_device
from nerveshub.lib.params import parse_int
from nerveshub.tenancy import services as tenancy
from nerveshub.tenancy.models import Product, Role
from nerveshub.web.access import OrgAccess, get_org_for_user, org_methods
from nerveshub.web.device_forms import DeviceForm, ThresholdsForm, initial_thresholds
from nerveshub.web.forms import add_service_errors, split_tags
from nerveshub.web.views import _render, _text, _user, page

# Deleted devices shown at once; the search narrows a larger bin.
DELETED_PAGE = 100


def _device(access: OrgAccess, pk: int, *, deleted: bool = False) -> Device:
    return get_object_or_404(
        Device.objects.select_related("product"), pk=pk, org=access.org, deleted_at__isnull=not deleted
    )


@page
@org_methods("GET", "POST")
def device_new(request: HttpRequest, org: str) -> HttpResponse:
    """Register a device by hand (manage): it may then connect with a
    certificate or a device key issued to it."""
    access = get_org_for_user(request, org, Role.MANAGE)
    form = DeviceForm(request.POST if request.method == "POST" else None, org=access.org)
    status = 200
    if request.method == "POST":
        status = 400
        if form.is_valid():
            data = form.cleaned_data
            try:
                device = devices.create_device(
                    _user(request),
                    data["product"],
                    data["identifier"],
                    description=data["description"],
                    tags=split_tags(data["tags"]),
                )
            except ValidationError as exc:
                add_service_errors(form, exc if hasattr(exc, "error_dict") else ValidationError({"identifier": exc}))
            except IntegrityError:
                # Identifiers are unique in an organization, deleted devices included.
                bin_has_it = Device.objects.filter(
                    org=access.org, identifier=data["identifier"], deleted_at__isnull=False
                ).exists()
                form.add_error(
                    "identifier",
                    "A deleted device has this identifier: restore it from Deleted devices."
                    if bin_has_it
                    else "A device with this identifier already exists.",
                )
            else:
                messages.success(request, f"Device {device.identifier} created.")
                return redirect("web:device", access.slug, device.pk)
    return _render(request, access, "web/device_new.html", {"form": form}, status=status)


@page
@org_methods("POST")
def device_delete(request: HttpRequest, org: str, pk: int) -> HttpResponse:
    access = get_org_for_user(request, org, Role.MANAGE)
    device = _device(access, pk)
    devices.soft_delete(_user(request), Device.objects.filter(pk=device.pk))
    messages.success(request, f"Device {device.identifier} deleted. It can be restored from Deleted devices.")
    return redirect("web:devices", access.slug)


@page
@org_methods("POST")
def device_restore(request: HttpRequest, org: str, pk: int) -> HttpResponse:
    access = get_org_for_user(request, org, Role.MANAGE)
    device = _device(access, pk, deleted=True)
    if devices.restore_device(_user(request), device):
        messages.success(request, f"Device {device.identifier} restored.")
    return redirect("web:device", access.slug, device.pk)


@page
@org_methods("POST")
def device_move(request: HttpRequest, org: str, pk: int) -> HttpResponse:
    """Move the device to another product of the same organization (manage)."""
    access = get_org_for_user(request, org, Role.MANAGE)
    device = _device(access, pk)
    product_id = parse_int(request.POST.get("product") or "")
    target = Product.objects.filter(org=access.org, pk=product_id).first() if product_id is not None else None
    if target is None:
        messages.error(request, "Choose a product of this organization to move the device to.")
    else:
        try:
            move_device(_user(request), device, target)
            messages.success(request, f"Device {device.identifier} moved to {target.name}.")
        except MoveRefused as exc:
            messages.error(request, f"Not moved: {exc}.")
    return redirect("web:device", access.slug, device.pk)


@page
@org_methods("GET")
def devices_deleted(request: HttpRequest, org: str) -> HttpResponse:
    """The organization's deleted devices, newest deletion first, with a
    restore button for the manage role."""
    access = get_org_for_user(request, org)
    rows = Device.objects.filter(org=access.org, deleted_at__isnull=False).select_related("product")
    q = _text(request, request.GET, "q")
    if q:
        rows = rows.filter(identifier__icontains=q)
    listed = list(rows.order_by("-deleted_at", "-pk")[: DELETED_PAGE + 1])
    context = {"devices": listed[:DELETED_PAGE], "more": len(listed) > DELETED_PAGE, "q": q}
    return _render(request, access, "web/devices_deleted.html", context)


@page
@org_methods("GET", "POST")
def product_health(request: HttpRequest, org: str, pk: int) -> HttpResponse:
    """The product's health thresholds: read by anyone in the org, changed by
    the manage role through tenancy.services.save_product."""
    access = get_org_for_user(request, org, Role.MANAGE if request.method == "POST" else Role.VIEW)
    product = get_object_or_404(Product, pk=pk, org=access.org)
    if request.method != "POST":
        form = ThresholdsForm(initial=initial_thresholds(product))
        return _render(request, access, "web/product_health.html", {"product": product, "form": form})
    form = ThresholdsForm(request.POST)
    if form.is_valid():
        product.health_thresholds = form.thresholds(product.health_thresholds)
        if form.is_valid():  # `thresholds` adds an error for a half-given pair
            try:
                tenancy.save_product(_user(request), product, ["health_thresholds"], via="pages")
            except ValidationError as exc:
                add_service_errors(form, exc)
            else:
                messages.success(request, "Health thresholds saved.")
                return redirect("web:product", access.slug, product.pk)
    product.refresh_from_db()
    return _render(request, access, "web/product_health.html", {"product": product, "form": form}, status=400)
