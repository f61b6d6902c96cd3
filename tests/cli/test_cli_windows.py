"""`nerveshub deployment create/update --window/--no-windows/--preflight`
against a live hub: windows set and cleared, a bad window refused with the
hub's reason, activation refused or warned by the trust preflight."""

from __future__ import annotations

import pytest

from deployments.models import Deployment
from firmware.models import Firmware, SigningKey
from tests.cli.conftest import Cli
from tests.conftest import Tenant
from tests.deployments.conftest import make_device, make_firmware
from tests.support.fwup import generate_keypair
from tests.support.hub import HubLauncher

SCOPE = ("--org", "acme", "--product", "widget")


@pytest.fixture
def signed_uuid(tenant: Tenant) -> str:
    key = SigningKey.objects.create(org=tenant.org, name="release", key=generate_keypair().public)
    firmware = make_firmware(tenant.product, "2.0.0")
    Firmware.objects.filter(pk=firmware.pk).update(signing_key=key)
    make_device(tenant.product, "keyless")
    return firmware.uuid or ""


def test_windows_and_preflight_from_the_command_line(
    live_hub: HubLauncher, tenant: Tenant, cli: Cli, signed_uuid: str
) -> None:
    # given
    manager = cli.as_user(tenant.manager, live_hub().http_url)
    # when
    created = manager(
        "deployment", "create", "stable", "--firmware", signed_uuid,
        "--window", "mon-fri 01:00-05:00 Europe/Berlin", "--window", "sat,sun 00:00-24:00 UTC",
        "--preflight", "refuse", *SCOPE, "--json",
    )  # fmt: skip
    bad = manager("deployment", "update", "stable", "--window", "mon-fri 01:00-05:00 Europe/Nowhere", *SCOPE)
    both = manager("deployment", "update", "stable", "--window", "daily 00:00-24:00 UTC", "--no-windows", *SCOPE)
    refused = manager("deployment", "activate", "stable", *SCOPE)
    cleared = manager("deployment", "update", "stable", "--no-windows", "--preflight", "warn", *SCOPE, "--json")
    warned = manager("deployment", "activate", "stable", *SCOPE)
    # then
    assert created.code == 0, created.stderr
    assert created.json()["windows"] == ["mon-fri 01:00-05:00 Europe/Berlin", "sat,sun 00:00-24:00 UTC"]
    assert bad.code == 1 and "unknown time zone 'Europe/Nowhere'" in bad.stderr
    assert both.code == 2
    assert refused.code == 1 and "Not activated: 1 of 1 matching device(s) would refuse" in refused.stderr
    assert cleared.code == 0 and cleared.json()["windows"] == [] and cleared.json()["preflight"] == "warn"
    assert warned.code == 0, warned.stderr
    assert "warning: 1 of 1 matching device(s) would refuse this firmware: keyless" in warned.stdout
    assert Deployment.objects.get(name="stable").is_active


def test_a_viewer_cannot_set_windows(live_hub: HubLauncher, tenant: Tenant, cli: Cli, signed_uuid: str) -> None:
    Deployment.objects.create(
        org=tenant.org, product=tenant.product, name="stable", firmware=Firmware.objects.get(uuid=signed_uuid)
    )
    viewer = cli.as_user(tenant.viewer, live_hub().http_url)
    result = viewer("deployment", "update", "stable", "--window", "daily 00:00-24:00 UTC", *SCOPE)
    assert result.code == 1
    assert Deployment.objects.get(name="stable").windows == []
