"""What a reconnecting device costs the database.

A fleet that comes back after a hub restart is mostly devices reporting what is
stored already. On PostgreSQL their connect is one statement and their join
none (devicelink/hotpath.py); on SQLite, and for whatever the fast path does not
cover, the full path stays a handful of reads and one write (the connection
itself). The join rate of a hub process is about one over its CPU and database
time per join (docs/benchmarks.md, M3).
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from pytest_django.fixtures import Settings

from deployments.models import Deployment, DeviceUpdate
from devicelink import auth
from devicelink.join import needs_nothing, store_join
from devicelink.protocol import DeviceJoin
from devices import services
from devices.models import Device
from nerveshub.tenancy.models import AuditEvent
from tests.deployments.conftest import make_firmware
from tests.devices.conftest import Credentials
from tests.support.nhl_client import nh1_headers

JOIN = {
    "nerves_fw_uuid": "2f3c0a9e-7d1b-4c55-9a77-0d1f3e5b6a01",
    "nerves_fw_product": "hub-test",
    "nerves_fw_version": "1.0.0",
    "nerves_fw_platform": "rpi4",
    "nerves_fw_architecture": "arm",
    "fwup_version": "1.10.2",
    "device_api_version": "2.2.0",
    "fwup_public_keys": "on_connect",
    "meta": {"firmware_validated": True},
}


def connect_and_join(
    creds: Credentials, identifier: str, channel: str, join: Mapping[str, object] = JOIN
) -> int | None:
    """What the device socket does for a connect and a join (devicelink.consumer)."""
    headers = dict(nh1_headers(creds.product_key, creds.product_secret, identifier, int(time.time())))
    connected = auth.connect_shared_secret(headers, None, channel, None)
    params = DeviceJoin.model_validate(join)
    if connected.known is not None and needs_nothing(connected.known, params):
        return connected.info.deployment_id
    _, deployment_id = store_join(connected.device_id, params)
    return deployment_id


@pytest.fixture(autouse=True)
def with_the_fast_path(settings: Settings) -> None:
    # These budgets are the fast path's on PostgreSQL (whatever the environment
    # sets DEVICE_FAST_PATH to) and the full path's on SQLite.
    settings.DEVICE_FAST_PATH = True


def fast_path() -> bool:
    return connection.vendor == "postgresql"


def statements(queries: list[dict[str, str]]) -> list[str]:
    # Transaction control (BEGIN, savepoints inside the test's transaction) aside.
    control = ("BEGIN", "COMMIT", "SAVEPOINT", "RELEASE", "ROLLBACK")
    return [q["sql"] for q in queries if not q["sql"].startswith(control)]


def writes(queries: list[dict[str, str]]) -> list[str]:
    return [sql for sql in statements(queries) if sql.split(" ", 1)[0] in ("INSERT", "UPDATE", "DELETE")]


@pytest.mark.django_db
def test_a_returning_device_costs_one_statement(creds: Credentials) -> None:
    older = make_firmware(creds.tenant.product, "1.0.0")
    deployment = Deployment.objects.create(
        org=creds.tenant.org, product=creds.tenant.product, name="stable", firmware=older, is_active=True
    )
    plain = {k: v for k, v in JOIN.items() if k != "fwup_public_keys"}
    assert connect_and_join(creds, "dev-1", "chan-1", plain) == deployment.pk  # first sight: registered, assigned
    assert connect_and_join(creds, "dev-1", "chan-2", plain) == deployment.pk  # this process has read the key

    with CaptureQueriesContext(connection) as queries:
        assert connect_and_join(creds, "dev-1", "chan-3", plain) == deployment.pk

    sql = statements(queries.captured_queries)
    if fast_path():
        # The connect: the row locked, the connection recorded, what the join compares read.
        (statement,) = sql
        assert statement.lstrip().startswith("WITH old AS") and 'UPDATE "devices_device"' not in statement
    else:
        assert len(sql) <= 7, [q[:80] for q in sql]
        (write,) = writes(queries.captured_queries)
        assert write.startswith('UPDATE "devices_device" SET "socket_channel"')
    device = Device.objects.get(identifier="dev-1")
    assert device.socket_channel == "chan-3" and device.firmware_version == "1.0.0"
    assert device.connection_status == "connected" and device.deployment_id == deployment.pk
    assert not DeviceUpdate.objects.exists()  # it runs the deployment's firmware already


@pytest.mark.django_db
def test_a_returning_device_that_asks_for_the_signing_keys_costs_a_handful(creds: Credentials) -> None:
    older = make_firmware(creds.tenant.product, "1.0.0")
    deployment = Deployment.objects.create(
        org=creds.tenant.org, product=creds.tenant.product, name="stable", firmware=older, is_active=True
    )
    assert connect_and_join(creds, "dev-1", "chan-1") == deployment.pk  # first sight: registered and assigned

    with CaptureQueriesContext(connection) as queries:
        assert connect_and_join(creds, "dev-1", "chan-2") == deployment.pk

    # The connect, then the full join (it reads and sends the org's keys).
    assert len(statements(queries.captured_queries)) <= (5 if fast_path() else 8), [
        sql[:80] for sql in statements(queries.captured_queries)
    ]
    if fast_path():
        # The connect statement is the one write; the full join reads.
        assert statements(queries.captured_queries)[0].lstrip().startswith("WITH old AS")
        assert not writes(queries.captured_queries)
    else:
        (write,) = writes(queries.captured_queries)
        assert write.startswith('UPDATE "devices_device" SET "socket_channel"')
    assert Device.objects.get(identifier="dev-1").socket_channel == "chan-2"


@pytest.mark.django_db
def test_a_first_seen_device_stays_within_its_statement_budget(creds: Credentials) -> None:
    connect_and_join(creds, "dev-0", "chan-0")  # this process has read the key

    with CaptureQueriesContext(connection) as queries:
        connect_and_join(creds, "dev-new", "chan-1")

    assert len(statements(queries.captured_queries)) <= (14 if fast_path() else 17), [
        sql[:80] for sql in statements(queries.captured_queries)
    ]
    device = Device.objects.get(identifier="dev-new")
    assert device.socket_channel == "chan-1" and device.firmware_version == "1.0.0"


@pytest.mark.django_db
def test_what_a_join_changes_is_still_written_and_audited(creds: Credentials) -> None:
    connect_and_join(creds, "dev-2", "chan-1")
    newer = {**JOIN, "nerves_fw_uuid": "2f3c0a9e-7d1b-4c55-9a77-0d1f3e5b6a02", "nerves_fw_version": "1.1.0"}

    connect_and_join(creds, "dev-2", "chan-2", newer)

    device = Device.objects.get(identifier="dev-2")
    assert (device.firmware_uuid, device.firmware_version) == (newer["nerves_fw_uuid"], "1.1.0")
    changes = AuditEvent.objects.filter(action="device.firmware_changed", subject_id=str(device.pk))
    assert [e.details["to"] for e in changes.order_by("pk")] == [JOIN["nerves_fw_uuid"], newer["nerves_fw_uuid"]]


@pytest.mark.django_db
def test_a_stale_read_of_the_socket_still_reports_the_socket_it_replaces(creds: Credentials) -> None:
    connect_and_join(creds, "dev-3", "chan-1")
    stale = Device.objects.get(identifier="dev-3")
    Device.objects.filter(pk=stale.pk).update(socket_channel="chan-elsewhere")  # another process took it since

    info = services.open_device_connection(stale, "chan-2")

    assert info.previous_channel == "chan-elsewhere"
    assert Device.objects.get(pk=stale.pk).socket_channel == "chan-2"


@pytest.mark.django_db
def test_a_join_moves_a_device_whose_deployment_stopped(creds: Credentials) -> None:
    firmware = make_firmware(creds.tenant.product, "1.0.0")
    first = Deployment.objects.create(
        org=creds.tenant.org, product=creds.tenant.product, name="a", firmware=firmware, is_active=True
    )
    assert connect_and_join(creds, "dev-4", "chan-1") == first.pk
    Deployment.objects.filter(pk=first.pk).update(is_active=False)
    second = Deployment.objects.create(
        org=creds.tenant.org, product=creds.tenant.product, name="b", firmware=firmware, is_active=True
    )

    assert connect_and_join(creds, "dev-4", "chan-2") == second.pk
    assert Device.objects.get(identifier="dev-4").deployment_id == second.pk


@pytest.mark.django_db
def test_the_fast_connect_reads_json_columns_as_values(creds: Credentials) -> None:
    # given: a product with extensions, a tagged device in a deployment with conditions
    firmware = make_firmware(creds.tenant.product, "1.0.0")
    Deployment.objects.create(
        org=creds.tenant.org,
        product=creds.tenant.product,
        name="tagged",
        firmware=firmware,
        is_active=True,
        conditions_tags=["ab"],
    )
    headers = dict(nh1_headers(creds.product_key, creds.product_secret, "dev-5", int(time.time())))
    auth.connect_shared_secret(headers, None, "chan-1", None)  # first sight; this process reads the key
    Device.objects.filter(identifier="dev-5").update(tags=["ba", "beta"])

    # when: it connects again, through the one statement on PostgreSQL
    connected = auth.connect_shared_secret(headers, None, "chan-2", None)

    # then: extensions, tags and conditions are names, not the characters of their JSON text
    assert connected.info.product_extensions == {"health", "geo"}
    if fast_path():
        assert connected.known is not None
        assert connected.known.tags == ["ba", "beta"]
        assert connected.known.deployment is None or connected.known.deployment.conditions_tags == ["ab"]
