"""Fixtures for device-socket tests: credentials and a device factory."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest

from devices import services
from devices.models import Device
from tests.conftest import Tenant
from tests.support.faults import db_cut, private_redis  # noqa: F401 - fixtures
from tests.support.nhl_client import NHLDevice

T = TypeVar("T")


@dataclass
class Credentials:
    tenant: Tenant
    product_key: str
    product_secret: str

    def device(self, url: str, identifier: str = "dev-0001", **kwargs: Any) -> NHLDevice:
        return NHLDevice(url=url, identifier=identifier, key=self.product_key, secret=self.product_secret, **kwargs)


@pytest.fixture
def creds(tenant: Tenant) -> Credentials:
    tenant.product.extensions = ["health", "geo"]
    tenant.product.save()
    _, issued = services.create_product_secret("test", tenant.product)
    return Credentials(tenant=tenant, product_key=issued.key, product_secret=issued.secret)


@pytest.fixture
def device_key(creds: Credentials) -> Callable[[str], tuple[Device, str, str]]:
    def make(identifier: str) -> tuple[Device, str, str]:
        device = services.create_device("test", creds.tenant.product, identifier)
        _, issued = services.create_device_secret("test", device)
        return device, issued.key, issued.secret

    return make


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


def wait_until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll `check` until it holds: a hub process finishes its side of a close
    after the client has returned."""
    import time

    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.05)
