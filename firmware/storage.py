"""Where firmware files live: the `firmware` entry of STORAGES. A module of its
own so the download app (firmware/downloads.py, no database) and the services
(which sign download URLs with it) both use it without importing each other."""

from __future__ import annotations

from django.core.files.storage import Storage, storages


def firmware_storage() -> Storage:
    # Looked up per call: tests swap STORAGES (local <-> S3) with override_settings.
    return storages["firmware"]
