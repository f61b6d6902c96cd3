"""`{% send_update_form %}`: the device page's "Send update" form, for a
manager (nerveshub/web/manual_update_pages.py handles the POST)."""

from __future__ import annotations

from typing import Any

from django import template

from nerveshub.web.manual_update_pages import SendUpdateForm

register = template.Library()


@register.inclusion_tag("web/_send_update.html", takes_context=True)
def send_update_form(context: template.Context) -> dict[str, Any]:
    access, device = context.get("access"), context.get("device")
    if access is None or device is None or not access.can_manage:
        return {"show": False}
    return {"show": True, "access": access, "device": device, "form": SendUpdateForm(device=device)}
