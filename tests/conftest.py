"""Shared fixtures: personas (owner, manager, viewer, outsider), and `live_hub`,
which runs real daphne server processes on the test database.

Service-backed tests carry `@pytest.mark.services`. Without REDIS_URL they are
skipped and listed at the end of the run; with NERVESHUB_REQUIRE_SERVICES=1 (CI)
a missing service fails the run instead.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth.models import User

from nerveshub.tenancy import services as tenancy
from nerveshub.tenancy.models import Organization, Product, Role
from tests.support.hub import ROOT as ROOT
from tests.support.hub import HubLauncher as HubLauncher
from tests.support.hub import HubProcess as HubProcess
from tests.support.hub import database_url_for_children, start_hub
from tests.support.hub import free_port as free_port

# The launcher lives in tests/support/hub.py (benchmarks use it too); the names
# above stay importable from here for test modules written against this file.
REQUIRE_SERVICES = os.environ.get("NERVESHUB_REQUIRE_SERVICES") == "1"


def services_available() -> bool:
    return bool(os.environ.get("REDIS_URL")) and settings.DATABASES["default"]["ENGINE"].endswith("postgresql")


def pytest_configure(config: pytest.Config) -> None:
    if REQUIRE_SERVICES and not services_available():
        raise pytest.UsageError("NERVESHUB_REQUIRE_SERVICES=1 but REDIS_URL / a PostgreSQL DATABASE_URL are not set")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if services_available():
        return
    skip = pytest.mark.skip(reason="needs PostgreSQL and Redis: set DATABASE_URL and REDIS_URL")
    for item in items:
        if "services" in item.keywords:
            item.add_marker(skip)


def pytest_report_header(config: pytest.Config) -> str:
    engine = settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1]
    layer = str(settings.CHANNEL_LAYERS["default"]["BACKEND"]).rsplit(".", 1)[-1]
    return f"nerveshub: database={engine} channel_layer={layer} services={'yes' if services_available() else 'no'}"


# --- Personas ---------------------------------------------------------------------


@dataclass
class Tenant:
    org: Organization
    product: Product
    admin: User
    manager: User
    viewer: User
    outsider: User  # admin of another organization


def _user(name: str) -> User:
    return User.objects.create_user(username=name, email=f"{name}@example.com", password="pw-" + name, is_staff=True)


@pytest.fixture
def tenant(db: None) -> Tenant:
    org, _ = tenancy.get_or_create_org("test", "acme")
    product, _ = tenancy.get_or_create_product("test", org, "widget")
    other, _ = tenancy.get_or_create_org("test", "globex")
    admin, manager, viewer, outsider = (_user(n) for n in ("alice", "mallory-manager", "victor", "oscar"))
    tenancy.set_membership("test", org, admin, Role.ADMIN)
    tenancy.set_membership("test", org, manager, Role.MANAGE)
    tenancy.set_membership("test", org, viewer, Role.VIEW)
    tenancy.set_membership("test", other, outsider, Role.ADMIN)
    return Tenant(org=org, product=product, admin=admin, manager=manager, viewer=viewer, outsider=outsider)


@pytest.fixture
def other_tenant(tenant: Tenant) -> Tenant:
    org = Organization.objects.get(name="globex")
    product, _ = tenancy.get_or_create_product("test", org, "gadget")
    return Tenant(
        org=org,
        product=product,
        admin=tenant.outsider,
        manager=tenant.outsider,
        viewer=tenant.outsider,
        outsider=tenant.admin,
    )


# --- Live server processes --------------------------------------------------------


@dataclass
class HubFactory:
    """The `live_hub` fixture: hubs on the test database, stopped after the test."""

    tmp_path: Path
    started: list[HubProcess] = field(default_factory=list)
    # The hubs of one test share their cache counters (failed authentications)
    # with each other, not with earlier tests' hubs on the same Redis database.
    cache_prefix: str = field(default_factory=lambda: f"test-{uuid.uuid4().hex[:12]}")

    def __call__(self, extra_env: dict[str, str] | None = None) -> HubProcess:
        env = {**os.environ, "DATABASE_URL": database_url_for_children(), "DATA_DIR": str(settings.DATA_DIR)}
        hub = start_hub(
            env, self.tmp_path, {"LOG_LEVEL": "info", "CACHE_KEY_PREFIX": self.cache_prefix, **(extra_env or {})}
        )
        self.started.append(hub)
        return hub


@pytest.fixture
def live_hub(transactional_db: None, tmp_path: Path) -> Iterator[HubLauncher]:
    """Start real hub server processes (daphne, the production entry point) on
    the test database. Tests that use it must commit their data, hence
    transactional_db."""
    factory = HubFactory(tmp_path)
    yield factory
    for hub in factory.started:
        hub.stop()
        # Captured output: pytest shows it only when the test failed.
        print(f"--- hub on port {hub.port} ---\n{hub.log()[-20000:]}")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
