"""The device page's "Send update": a manager pushes one valid firmware of the
device's product to the device now (deployments.manual.send_update; docs/rollout.md,
"Manual updates"). The form is drawn by the `send_update_form` template tag,
so the device page's own view is unchanged."""

from __future__ import annotations

from typing import cast

from django import forms
from django.contrib import messages
from django.contrib.auth.models import User
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect

from deployments.manual import UpdateRefused, send_update
from devices.models import Device
from firmware.models import Firmware, FirmwareKind, FirmwareStatus
from nerveshub.tenancy.models import Role
from nerveshub.web.access import get_org_for_user, org_methods
from nerveshub.web.views import page


def firmware_choices(device: Device) -> QuerySet[Firmware]:
    """What may be pushed to the device: its product's valid firmware, newest first."""
    return Firmware.objects.filter(
        product_id=device.product_id, kind=FirmwareKind.FIRMWARE, status=FirmwareStatus.VALID
    ).order_by("-created_at")


class FirmwareChoiceField(forms.ModelChoiceField[Firmware]):
    def label_from_instance(self, obj: Firmware) -> str:
        return f"{obj.version} ({(obj.uuid or '')[:8]})"


class SendUpdateForm(forms.Form):
    firmware = FirmwareChoiceField(
        queryset=Firmware.objects.none(),
        to_field_name="uuid",
        widget=forms.Select(attrs={"id": "send-update-firmware"}),
    )

    def __init__(self, *args: object, device: Device, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        cast(FirmwareChoiceField, self.fields["firmware"]).queryset = firmware_choices(device)


@page
@org_methods("POST")
def device_send_update(request: HttpRequest, org: str, pk: int) -> HttpResponse:
    access = get_org_for_user(request, org, Role.MANAGE)
    device = get_object_or_404(
        Device.objects.select_related("product", "hub_lease"), pk=pk, org=access.org, deleted_at__isnull=True
    )
    form = SendUpdateForm(request.POST, device=device)
    if not form.is_valid():
        messages.error(request, "Choose a valid firmware of this device's product.")
    else:
        firmware: Firmware = form.cleaned_data["firmware"]
        try:
            send_update(cast(User, request.user), device, firmware)
        except UpdateRefused as exc:
            messages.error(request, exc.reason)
        else:
            messages.success(request, f"Update to {firmware.version} sent to {device.identifier}.")
    return redirect("web:device", access.slug, device.pk)
