"""The console page: a server-rendered terminal for one device."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.contrib.staticfiles import finders
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render

from console import services

# The terminal library's files, copied from npm by `make console-assets`.
VENDOR_ASSETS = ("console/vendor/xterm.js", "console/vendor/xterm.css", "console/vendor/addon-fit.js")


def _assets_present() -> bool:
    return all(finders.find(name) for name in VENDOR_ASSETS)


@login_required
def console_page(request: HttpRequest, device_id: int) -> HttpResponse:
    access = services.console_access(request.user, device_id)
    if access is None:
        raise Http404("No such device.")
    state = services.device_console_state(device_id)
    return render(
        request,
        "console/console.html",
        {
            "access": access,
            "state": state,
            "assets_present": _assets_present(),
            "socket_path": f"/console/{device_id}/socket",
        },
    )
