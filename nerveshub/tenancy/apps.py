from django.apps import AppConfig


class TenancyConfig(AppConfig):
    name = "nerveshub.tenancy"
    label = "tenancy"
    verbose_name = "Organizations and people"

    def ready(self) -> None:
        from nerveshub.tenancy import access_events  # models are loaded only now

        access_events.connect()
