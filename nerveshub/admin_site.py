"""The Django admin, with the hub's second-factor rule.

A person who turned on two-factor sign-in (nerveshub.tenancy.twofactor) uses
the admin only from a session that passed the code (django-otp marks it, see
request.user.is_verified). The hub's sign-in page is where the code is asked;
the admin's own login form refuses such accounts and points there
(nerveshub.web.signin.AdminSignInForm). It is the default site through
nerveshub.admin_apps.
"""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from nerveshub.tenancy import twofactor


class HubAdminSite(admin.AdminSite):
    def has_permission(self, request: HttpRequest) -> bool:
        if not super().has_permission(request):
            return False
        user = request.user
        is_verified = getattr(user, "is_verified", None)
        if is_verified is not None and is_verified():
            return True
        return not twofactor.is_enabled(user)  # type: ignore[arg-type]  # authenticated: a User
