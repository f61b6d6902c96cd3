"""The admin's app config: django.contrib.admin with the hub's site
(nerveshub.admin_site.HubAdminSite) as the default one, as Django's "overriding
the default admin site" describes. A module of its own because settings load it
before any model may be imported."""

from __future__ import annotations

from django.contrib import admin
from django.contrib.admin.apps import AdminConfig


class HubAdminConfig(AdminConfig):
    default_site = "nerveshub.admin_site.HubAdminSite"

    def ready(self) -> None:
        super().ready()
        # django-otp registers its device tables, whose rows hold the TOTP
        # secrets in clear: no admin page shows them. Imported here because
        # this module loads with the settings, before any model may.
        from django_otp.plugins.otp_static.models import StaticDevice
        from django_otp.plugins.otp_totp.models import TOTPDevice

        for model in (TOTPDevice, StaticDevice):
            if admin.site.is_registered(model):
                admin.site.unregister(model)
