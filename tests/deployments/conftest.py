from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

import pytest
from django.utils import timezone

from deployments.models import Deployment
from devices import services as device_services
from devices.models import ConnectionStatus, Device
from firmware.models import Firmware, FirmwareStatus
from nerveshub.tenancy.models import Product
from tests.conftest import Tenant
from tests.support.faults import db_cut, private_redis  # noqa: F401 - fixtures


def make_firmware(product: Product, version: str, *, platform: str = "rpi4", architecture: str = "arm") -> Firmware:
    """A validated firmware row (the validation path has its own tests)."""
    return Firmware.objects.create(
        org=product.org,
        product=product,
        uuid=str(uuid.uuid4()),
        version=version,
        platform=platform,
        architecture=architecture,
        size=1024,
        sha256="ab" * 32,
        partial_sha256=["ab" * 32],
        storage_name=f"{product.pk}/{version}.fw",
        status=FirmwareStatus.VALID,
    )


def make_device(
    product: Product,
    identifier: str,
    *,
    version: str = "1.0.0",
    online: bool = True,
    tags: Iterable[str] = (),
    **fields: Any,
) -> Device:
    device = device_services.create_device("test", product, identifier, tags=list(tags))
    Device.objects.filter(pk=device.pk).update(
        firmware_uuid=fields.pop("firmware_uuid", f"uuid-{version}"),
        firmware_version=version,
        firmware_platform=fields.pop("platform", "rpi4"),
        firmware_architecture=fields.pop("architecture", "arm"),
        connection_status=ConnectionStatus.CONNECTED if online else ConnectionStatus.DISCONNECTED,
        connected_at=timezone.now(),
        **fields,
    )
    device.refresh_from_db()
    return device


@pytest.fixture
def target(tenant: Tenant) -> Firmware:
    return make_firmware(tenant.product, "2.0.0")


@pytest.fixture
def deployment(tenant: Tenant, target: Firmware) -> Deployment:
    return Deployment.objects.create(
        org=tenant.org, product=tenant.product, name="stable", firmware=target, is_active=True, concurrent_updates=3
    )
