"""Moving a device to another product, of its own organization or another one:
a device service (docs/nerveshub-api.md, "Devices"), kept in a module of its own
beside devices/services.py."""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from devices import publish
from devices.models import Device
from nerveshub.tenancy.models import Product
from nerveshub.tenancy.services import Actor, audit


class MoveRefused(Exception):
    """The device cannot be moved there; the message says why."""


def move_device(actor: Actor, device: Device, product: Product) -> Device:
    """Move `device` to `product`. It leaves its deployment (a deployment is one
    product's) and is asked to reconnect, so that it joins afresh as a device of
    its new product and organization. The event is written to the audit log of
    both organizations. Whether `actor` may take the device out of one and put
    it into the other is the caller's check (the `manage` role in both).
    Raises MoveRefused."""
    with transaction.atomic():
        current = Device.objects.select_for_update(no_key=True).select_related("product", "org").get(pk=device.pk)
        if current.deleted_at is not None:
            raise MoveRefused("the device is deleted")
        if current.product_id == product.pk:
            raise MoveRefused(f"the device is already in {product.name}")
        if (
            product.org_id != current.org_id
            and Device.objects.filter(org_id=product.org_id, identifier=current.identifier).exists()
        ):
            # Identifiers are unique in an organization, deleted devices included.
            raise MoveRefused(f"the target organization already has a device {current.identifier!r}")
        Device.objects.filter(pk=current.pk).update(
            org_id=product.org_id, product=product, deployment=None, updated_at=timezone.now()
        )
        details = {
            "from_org": current.org.name,
            "from_product": current.product.name,
            "to_org": product.org.name,
            "to_product": product.name,
        }
        audit(actor, "device.moved", current, org=current.org_id, details=details)
        if product.org_id != current.org_id:
            audit(actor, "device.moved", current, org=product.org_id, details=details)
        publish.disconnect_device(current.pk)
    return Device.objects.select_related("product__org", "deployment", "hub_lease").get(pk=device.pk)
