"""Sign-in and password-reset forms and views with throttling (nerveshub.web.throttle).

The org sign-in page and the Django admin's login both use these forms; a
locked sign-in answers 429 on the org page (the admin's login view keeps its
200) with a message that says how long to wait.
"""

from __future__ import annotations

from typing import Any

from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth import views as auth_views
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.forms import AuthenticationForm, PasswordResetForm
from django.contrib.auth.models import User
from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.http import HttpRequest, HttpResponse
from django.urls import reverse

from nerveshub.lib.clientaddr import request_client_address
from nerveshub.tenancy import accounts, twofactor
from nerveshub.web import throttle
from nerveshub.web.twofactor import begin_second_step

THROTTLED = "throttled"


class EmailBackend(ModelBackend):
    """Signs in with the account's e-mail address where the name typed is not a
    user name (`accounts.user_for_sign_in`). Listed after Django's ModelBackend,
    which keeps signing in by user name and loading every session; this one
    answers only names with an @ that are no user name."""

    def authenticate(
        self, request: HttpRequest | None, username: str | None = None, password: str | None = None, **kwargs: Any
    ) -> User | None:
        if not username or password is None or "@" not in username:
            return None
        user = accounts.user_for_sign_in(username)
        if user is None or user.get_username() == username:
            return None  # unknown, or a user name ModelBackend has judged
        if user.check_password(password) and self.user_can_authenticate(user):
            return user
        return None


class _ThrottledSignIn:
    """Checks the lock before the password is, and counts a failure after."""

    request: HttpRequest | None
    cleaned_data: dict[str, Any]

    def clean(self) -> dict[str, Any]:
        username = str(self.cleaned_data.get("username") or "")
        address = request_client_address(self.request) if self.request is not None else "unknown"
        refusal = throttle.login_refusal(username, address)
        if refusal:
            raise ValidationError(refusal, code=THROTTLED)
        try:
            cleaned: dict[str, Any] = super().clean()  # type: ignore[misc]
        except ValidationError:
            refusal = throttle.record_login_failure(username, address)
            if refusal:
                raise ValidationError(refusal, code=THROTTLED) from None
            raise
        user = getattr(self, "user_cache", None)
        # An account with a second factor starts its count again only once the
        # code is right too: a known password alone must not reset it.
        if user is None or not twofactor.is_enabled(user):
            throttle.record_login_success(username)
        return cleaned


class SignInForm(_ThrottledSignIn, AuthenticationForm):
    pass


class AdminSignInForm(_ThrottledSignIn, AdminAuthenticationForm):
    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        user = self.get_user()
        if user is not None and twofactor.is_enabled(user):
            # This form has no code field: the hub's sign-in page asks for it,
            # and the admin accepts the session that passed it.
            raise ValidationError(
                "This account uses two-factor authentication: sign in on the hub's sign-in page (%(url)s), "
                "then open the admin.",
                code="two_factor",
                params={"url": reverse("web:login")},
            )
        return cleaned


class SignInView(auth_views.LoginView):
    """The password step. An account with two-factor sign-in on is not signed
    in here: the session only remembers who is half-way, and the code page
    (nerveshub.web.twofactor.login_code) signs in once the code is right."""

    authentication_form = SignInForm

    def form_valid(self, form: Any) -> HttpResponse:
        user = form.get_user()
        if twofactor.is_enabled(user):
            return begin_second_step(
                self.request, user, str(form.cleaned_data.get("username") or ""), self.get_success_url()
            )
        return super().form_valid(form)

    def form_invalid(self, form: Any) -> HttpResponse:
        response = super().form_invalid(form)
        if form.has_error(NON_FIELD_ERRORS, THROTTLED):
            response.status_code = 429
        return response


class ThrottledPasswordResetView(auth_views.PasswordResetView):
    def form_valid(self, form: PasswordResetForm) -> HttpResponse:
        refusal = throttle.password_reset_refusal(
            str(form.cleaned_data.get("email") or ""), request_client_address(self.request)
        )
        if refusal:
            # On the field, beside the address it is about.
            form.add_error("email", ValidationError(refusal, code=THROTTLED))
            response = self.form_invalid(form)
            response.status_code = 429
            return response
        return super().form_valid(form)
