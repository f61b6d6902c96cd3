"""Forms that sit on pages other views render (the device page, the product
page): each tag loads what its form needs, so those views stay as they are."""

from __future__ import annotations

from typing import Any

from django import template

from devices import health
from devices.models import Device
from nerveshub.tenancy.models import Product
from nerveshub.web.device_forms import ThresholdsForm, initial_thresholds

register = template.Library()


@register.inclusion_tag("web/_device_manage.html", takes_context=True)
def device_manage(context: template.Context, device: Device) -> dict[str, Any]:
    """Move and delete buttons for the manage role; one query for the products
    the device may move to."""
    access = context["access"]
    products = (
        Product.objects.filter(org=access.org).exclude(pk=device.product_id).only("pk", "name").order_by("name")
        if access.can_manage
        else Product.objects.none()
    )
    return {"access": access, "device": device, "products": products, "csrf_token": context.get("csrf_token")}


@register.inclusion_tag("web/_product_health.html", takes_context=True)
def product_thresholds(context: template.Context, product: Product, form: Any = None) -> dict[str, Any]:
    """The product's health thresholds: what each metric's limits are and where
    they come from, and the form that changes them (manage)."""
    own = product.health_thresholds if isinstance(product.health_thresholds, dict) else {}
    effective = health.thresholds_for(own)
    rows = [
        {
            "metric": health.STANDARD_METRICS.get(name, name),
            "warning": warn,
            "unhealthy": bad,
            "own": name in own,
        }
        for name, (warn, bad) in effective.items()
    ]
    access = context["access"]
    if form is None and access.can_manage:
        form = ThresholdsForm(initial=initial_thresholds(product))
    return {"access": access, "product": product, "rows": rows, "form": form, "csrf_token": context.get("csrf_token")}
