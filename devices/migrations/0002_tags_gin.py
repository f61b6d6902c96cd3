from django.db import migrations


def create_gin(apps, schema_editor):  # type: ignore[no-untyped-def]
    # SQLite has no GIN; its tag filters use json_each() (devices/fields.py).
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("CREATE INDEX IF NOT EXISTS device_tags_gin ON devices_device USING gin (tags)")


def drop_gin(apps, schema_editor):  # type: ignore[no-untyped-def]
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("DROP INDEX IF EXISTS device_tags_gin")


class Migration(migrations.Migration):
    dependencies = [("devices", "0001_initial")]

    operations = [migrations.RunPython(create_gin, drop_gin)]
