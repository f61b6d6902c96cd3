"""Two-factor pages: the sign-in's second step, and the account page where a
person turns it on and off. The rules are in nerveshub.tenancy.twofactor.

Between the password and the code the session is not signed in: it holds only
who is half-way through (`PENDING_KEY`), for PENDING_SECONDS. request.user stays
anonymous, so no org page, API token or console opens, until `login_code`
accepts a code and calls Django's login.
"""

from __future__ import annotations

import time
from typing import Any, cast

import segno
from django import forms
from django.contrib import messages
from django.contrib.auth import login, logout
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.safestring import mark_safe
from django.views.decorators.cache import never_cache
from django_otp import login as otp_login

from nerveshub.lib.clientaddr import request_client_address
from nerveshub.tenancy import twofactor
from nerveshub.web import throttle
from nerveshub.web.access import orgs_of

PENDING_KEY = "two_factor_pending"
# Long enough to find the phone; short enough that a forgotten half-way
# sign-in on a shared computer is soon of no use.
PENDING_SECONDS = 300

page = login_required(login_url="/accounts/login/")


class CodeForm(forms.Form):
    code = forms.CharField(
        label="Code",
        max_length=40,
        help_text="The six digits your authenticator app shows, or one of your recovery codes.",
        widget=forms.TextInput(attrs={"autocomplete": "one-time-code", "autofocus": True, "inputmode": "text"}),
    )


class DisableForm(forms.Form):
    password = forms.CharField(label="Current password", widget=forms.PasswordInput, strip=False)
    code = forms.CharField(
        label="Code",
        max_length=40,
        help_text="From your authenticator app, or a recovery code.",
        widget=forms.TextInput(attrs={"autocomplete": "one-time-code"}),
    )


def begin_second_step(request: HttpRequest, user: User, typed_name: str, next_url: str) -> HttpResponse:
    """After the right password of an account with a second factor: remember
    who, not signed in, and ask for the code."""
    if request.user.is_authenticated:
        # Someone else's session on this browser ends here, as Django's login
        # would end it: the half-way session must not be theirs meanwhile.
        logout(request)
    request.session.cycle_key()
    request.session[PENDING_KEY] = {
        "user": user.pk,
        "backend": getattr(user, "backend", "django.contrib.auth.backends.ModelBackend"),
        # The sign-in lock counts by the name typed (nerveshub.web.throttle).
        "name": typed_name[:150],
        "next": next_url,
        "since": time.time(),
    }
    return redirect("web:login_code")


def _pending(request: HttpRequest) -> tuple[User, dict[str, Any]] | None:
    state = request.session.get(PENDING_KEY)
    if not isinstance(state, dict) or time.time() - float(state.get("since", 0)) > PENDING_SECONDS:
        return None
    user = User.objects.filter(pk=int(state.get("user") or 0), is_active=True).first()
    if user is None:
        return None
    return user, state


@never_cache
def login_code(request: HttpRequest) -> HttpResponse:
    """The second step of signing in: the code, then the session signs in."""
    pending = _pending(request)
    if pending is None:
        request.session.pop(PENDING_KEY, None)
        messages.error(request, "Sign in again: the sign-in expired or was not started.")
        return redirect("web:login")
    user, state = pending
    form = CodeForm(request.POST if request.method == "POST" else None)
    status = 200
    if request.method == "POST" and form.is_valid():
        name, address = str(state.get("name", "")), request_client_address(request)
        refusal = throttle.login_refusal(name, address)
        if refusal:
            form.add_error("code", refusal)
            status = 429
        else:
            try:
                device = twofactor.check_second_factor(user, form.cleaned_data["code"])
            except ValidationError as exc:
                status = 429 if exc.code == twofactor.WAIT else 400
                if exc.code == twofactor.WRONG_CODE:
                    refusal = throttle.record_login_failure(name, address)
                    status = 429 if refusal else 400
                form.add_error("code", refusal or exc)
            else:
                throttle.record_login_success(name)
                del request.session[PENDING_KEY]
                login(request, user, backend=str(state.get("backend")))
                otp_login(request, device)
                return redirect(str(state.get("next") or "web:home"))
    elif request.method == "POST":
        status = 400
    return render(request, "web/login_code.html", {"form": form}, status=status)


def _qr_svg(device: Any) -> str:
    # Drawn here as inline SVG: the secret never leaves the page for a QR service.
    svg = segno.make(device.config_url, error="m").svg_inline(scale=4, border=2, dark="#111", light="#fff")
    return mark_safe(svg)  # noqa: S308  # segno's own markup; the URL in it is escaped by segno


def _grouped(secret: str) -> str:
    return " ".join(secret[i : i + 4] for i in range(0, len(secret), 4))


@page
@never_cache  # the page shows the secret, and then the recovery codes
def settings_page(request: HttpRequest) -> HttpResponse:
    """Turn two-factor sign-in on (scan, confirm with a code, note the
    recovery codes) or off (password and code), or replace the recovery codes
    (password and code)."""
    user = cast(User, request.user)
    code_form = CodeForm()
    disable_form = DisableForm()
    codes_form = DisableForm(prefix="codes")
    recovery_codes: list[str] = []
    status = 200
    action = request.POST.get("action") if request.method == "POST" else None
    if action == "start":
        try:
            twofactor.start_totp_setup(user)
        except ValidationError as exc:
            messages.error(request, " ".join(exc.messages))
        return redirect("web:two_factor")
    if action == "cancel":
        twofactor.cancel_totp_setup(user)
        return redirect("web:two_factor")
    if action == "confirm":
        code_form = CodeForm(request.POST)
        if code_form.is_valid():
            try:
                recovery_codes = twofactor.confirm_totp_setup(user, code_form.cleaned_data["code"])
            except ValidationError as exc:
                code_form.add_error(None, exc)
                status = 400
            else:
                # This session proved the code just now: the admin accepts it.
                device = twofactor.confirmed_totp(user)
                if device is not None:
                    otp_login(request, device)
        else:
            status = 400
    elif action == "new-codes":
        codes_form = DisableForm(request.POST, prefix="codes")
        if codes_form.is_valid():
            try:
                recovery_codes = twofactor.regenerate_recovery_codes(
                    user, codes_form.cleaned_data["password"], codes_form.cleaned_data["code"]
                )
            except ValidationError as exc:
                codes_form.add_error(None, exc)
                status = 400
        else:
            status = 400
    elif action == "disable":
        disable_form = DisableForm(request.POST)
        if disable_form.is_valid():
            try:
                twofactor.disable_two_factor(
                    user, disable_form.cleaned_data["password"], disable_form.cleaned_data["code"]
                )
            except ValidationError as exc:
                disable_form.add_error(None, exc)
                status = 400
            else:
                messages.success(request, "Two-factor authentication is off.")
                return redirect("web:two_factor")
        else:
            status = 400
    elif request.method == "POST":
        status = 400
    pending = None if recovery_codes else twofactor.pending_totp(user)
    context = {
        "switcher": orgs_of(request),
        "enabled": twofactor.is_enabled(user),
        "pending": pending,
        "qr": _qr_svg(pending) if pending else "",
        "secret": _grouped(twofactor.totp_secret(pending)) if pending else "",
        "code_form": code_form,
        "disable_form": disable_form,
        "codes_form": codes_form,
        "codes_replaced": action == "new-codes",
        "recovery_codes": recovery_codes,
        "codes_left": twofactor.recovery_codes_left(user),
    }
    return render(request, "web/two_factor.html", context, status=status)
