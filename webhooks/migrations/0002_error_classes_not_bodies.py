"""last_error holds an error class from now on; rows written before kept up to
300 characters of the receiver's answer, which an endpoint aimed at an internal
service turned into a read-back. Replace them with their class (one UPDATE per
class, no row-by-row loop)."""

from typing import Any

from django.db import migrations, models
from django.db.models.functions import Cast, Concat


def replace_bodies_with_classes(apps: Any, schema_editor: Any) -> None:
    WebhookDelivery = apps.get_model("webhooks", "WebhookDelivery")
    rows = WebhookDelivery.objects.exclude(last_error="")
    known = ("timeout", "connection_error", "dns_error", "tls_error", "refused_destination", "endpoint_disabled")
    rows = rows.exclude(last_error__in=known).exclude(last_error="redirect_not_followed")
    rows = rows.exclude(last_error__regex=r"^http_[0-9]{3}$")
    rows.filter(last_status__gte=300, last_status__lt=400).update(last_error="redirect_not_followed")
    rows.filter(last_status__isnull=False).exclude(last_status__gte=300, last_status__lt=400).update(
        last_error=Concat(models.Value("http_"), Cast("last_status", models.CharField()))
    )
    rows.filter(last_status__isnull=True, last_error="the endpoint is disabled").update(last_error="endpoint_disabled")
    rows.filter(last_status__isnull=True, last_error__icontains="timed out").update(last_error="timeout")
    rows.filter(last_status__isnull=True).update(last_error="connection_error")


class Migration(migrations.Migration):
    dependencies = [
        ("webhooks", "0001_initial"),
    ]

    operations = [
        migrations.AlterField(
            model_name="webhookdelivery",
            name="last_error",
            field=models.TextField(
                blank=True, help_text="Error class of the last attempt; the receiver's answer is never kept."
            ),
        ),
        migrations.RunPython(replace_bodies_with_classes, migrations.RunPython.noop),
    ]
