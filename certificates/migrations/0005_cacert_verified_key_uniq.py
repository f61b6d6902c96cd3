"""One proven owner per CA key, hub-wide; unverified rows never take part."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("certificates", "0004_fill_ca_verification"),
    ]

    operations = [
        migrations.AddConstraint(
            model_name="cacertificate",
            constraint=models.UniqueConstraint(
                condition=models.Q(("verified_at__isnull", False)),
                fields=("public_key_fingerprint",),
                name="cacert_verified_key_uniq",
            ),
        ),
    ]
