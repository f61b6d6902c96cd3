"""CA ownership is proven: a verification flag, the key a verified CA owns
hub-wide, and the subject hash the issuer of a certificate is looked up by.

Step 1 of 3 (0004 fills the new columns, 0005 adds the key constraint): the
fingerprint and hash start empty and are filled from the stored DER.
"""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("certificates", "0002_initial"),
        ("tenancy", "0001_initial"),
    ]

    operations = [
        migrations.AddField(
            model_name="cacertificate",
            name="public_key_fingerprint",
            field=models.CharField(default="", max_length=64),
            preserve_default=False,
        ),
        migrations.AddField(
            model_name="cacertificate",
            name="subject_hash",
            field=models.CharField(db_index=True, default="", max_length=64),
            preserve_default=False,
        ),
        migrations.AddField(
            model_name="cacertificate",
            name="verified_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        # The SKI was unique hub-wide, so whoever pasted a CA first owned it.
        migrations.AlterField(
            model_name="cacertificate",
            name="ski",
            field=models.CharField(db_index=True, max_length=128),
        ),
        migrations.AddConstraint(
            model_name="cacertificate",
            constraint=models.UniqueConstraint(fields=("org", "ski"), name="cacert_org_ski_uniq"),
        ),
    ]
