from django.apps import AppConfig


class TenancyConfig(AppConfig):
    name = "nerveshub.tenancy"
    label = "tenancy"
    verbose_name = "Organizations and people"
