from django.apps import AppConfig


class WebhooksConfig(AppConfig):
    name = "webhooks"
    verbose_name = "Webhooks"

    def ready(self) -> None:
        # Imported only now: the models are not loaded when apps.py is.
        from nerveshub.tenancy.services import register_audit_hook
        from webhooks.services import on_audit_event

        # Outbox rows for audited events are written by the audit call itself,
        # in the transaction of the change it records.
        register_audit_hook(on_audit_event)
