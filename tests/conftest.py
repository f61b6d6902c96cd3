"""Shared fixtures: personas (owner, manager, viewer, outsider), and `live_hub`,
which runs real daphne server processes on the test database.

Service-backed tests carry `@pytest.mark.services`. Without REDIS_URL they are
skipped and listed at the end of the run; with NERVESHUB_REQUIRE_SERVICES=1 (CI)
a missing service fails the run instead.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import User

from nerveshub.tenancy import services as tenancy
from nerveshub.tenancy.models import Organization, Product, Role

ROOT = Path(__file__).resolve().parent.parent
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
    layer = settings.CHANNEL_LAYERS["default"]["BACKEND"].rsplit(".", 1)[-1]
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _database_url_for_children() -> str:
    db = settings.DATABASES["default"]
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    user = db.get("USER") or ""
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    auth = f"{user}{password}@" if user else ""
    return f"postgres://{auth}{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}/{db['NAME']}"


@dataclass
class HubProcess:
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


@dataclass
class HubFactory:
    tmp_path: Path
    started: list[HubProcess] = field(default_factory=list)
    # The hubs of one test share their cache counters (failed authentications)
    # with each other, not with earlier tests' hubs on the same Redis database.
    cache_prefix: str = field(default_factory=lambda: f"test-{uuid.uuid4().hex[:12]}")

    def __call__(self, extra_env: dict[str, str] | None = None) -> HubProcess:
        port = free_port()
        env = {
            **os.environ,
            "DATABASE_URL": _database_url_for_children(),
            "DATA_DIR": str(settings.DATA_DIR),
            "PUBLIC_URL": f"http://127.0.0.1:{port}",
            "LOG_LEVEL": "info",
            "CACHE_KEY_PREFIX": self.cache_prefix,
            **(extra_env or {}),
        }
        log_path = self.tmp_path / f"hub-{port}.log"
        log = log_path.open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "nerveshub.serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        hub = HubProcess(port=port, process=process, log_path=log_path)
        self.started.append(hub)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"hub process exited early:\n{hub.log()}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    return hub
            except OSError:
                time.sleep(0.1)
        hub.stop()
        raise RuntimeError(f"hub process did not listen within 30 s:\n{hub.log()}")


@pytest.fixture
def live_hub(transactional_db: None, tmp_path: Path) -> Iterator[Callable[..., HubProcess]]:
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
def anyio_backend() -> Any:
    return "asyncio"
