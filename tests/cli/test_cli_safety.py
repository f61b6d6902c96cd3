"""`nerveshub deployment status/get` against a live hub: soak, the health
gate's state (off, waiting, paused with both cohorts' figures), what the
deployment reverts and the window note, in the human output."""

from __future__ import annotations

from django.utils import timezone

from deployments.models import Deployment
from tests.cli.conftest import Cli
from tests.conftest import Tenant
from tests.deployments.conftest import make_firmware
from tests.support.hub import HubLauncher

SCOPE = ("--org", "acme", "--product", "widget")
REASON = "health gate (margin 5, alpha 0.001): auto-reverts: canary 4/4 (100.0%) vs control 0/4 (0.0%) (p=0)"
REPORT = {
    "checked_at": "2026-01-01T00:00:00+00:00",
    "state": "paused",
    "min_devices": 4,
    "canary": {"devices": 4},
    "control": {"devices": 4},
    "findings": [
        {
            "signal": "auto-reverts",
            "canary": "4/4 (100.0%)",
            "control": "0/4 (0.0%)",
            "p_value": 0.0,
            "worse": True,
        }
    ],
}


def _deployments(tenant: Tenant) -> None:
    old = Deployment.objects.create(
        org=tenant.org, product=tenant.product, name="old", firmware=make_firmware(tenant.product, "1.0.0")
    )
    Deployment.objects.create(
        org=tenant.org,
        product=tenant.product,
        name="stable",
        firmware=make_firmware(tenant.product, "2.0.0"),
        is_active=True,
        soak_minutes=30,
        gate_enabled=True,
        gate_min_devices=4,
        gate_report=REPORT,
        paused_at=timezone.now(),
        paused_reason=REASON,
        reverts=old,
        # a window that is never open now: the hub notes when it opens
        windows=["mon 00:00-00:01 UTC"] if timezone.now().weekday() != 0 else ["tue 00:00-00:01 UTC"],
    )


def test_status_and_get_show_the_safety_state(live_hub: HubLauncher, tenant: Tenant, cli: Cli) -> None:
    # given
    _deployments(tenant)
    viewer = cli.as_user(tenant.viewer, live_hub().http_url)
    # when
    status = viewer("deployment", "status", "stable", *SCOPE)
    got = viewer("deployment", "get", "stable", *SCOPE)
    plain = viewer("deployment", "get", "old", *SCOPE)
    as_json = viewer("deployment", "status", "stable", *SCOPE, "--json")
    # then
    assert status.code == 0, status.stderr
    lines = status.stdout.splitlines()
    assert lines[0] == f"stable: active paused ({REASON})"
    assert "soak: 30 min" in lines
    assert "gate: paused (canary 4 device(s), control 4 device(s))" in lines
    assert "  auto-reverts: canary 4/4 (100.0%) vs control 0/4 (0.0%) (p=0) WORSE" in lines
    assert "reverts: old" in lines
    assert any(line.startswith("warning: ") and "window" in line.lower() for line in lines), status.stdout
    assert got.code == 0, got.stderr
    assert f"  reason: {REASON}" in got.stdout.splitlines()
    assert "gate: paused" in got.stdout and "soak: 30 min" in got.stdout
    assert plain.code == 0 and "gate: off" in plain.stdout and "soak: none" in plain.stdout
    assert "reverts:" not in plain.stdout
    assert as_json.json()["deployment"]["gate"]["state"] == "paused"


def test_a_waiting_gate_says_what_it_waits_for(live_hub: HubLauncher, tenant: Tenant, cli: Cli) -> None:
    Deployment.objects.create(
        org=tenant.org,
        product=tenant.product,
        name="stable",
        firmware=make_firmware(tenant.product, "2.0.0"),
        gate_enabled=True,
        gate_min_devices=5,
    )
    viewer = cli.as_user(tenant.viewer, live_hub().http_url)
    result = viewer("deployment", "get", "stable", *SCOPE)
    assert result.code == 0, result.stderr
    assert "gate: watching, no verdict yet" in result.stdout
    Deployment.objects.filter(name="stable").update(
        gate_report={"state": "waiting", "min_devices": 5, "canary": {"devices": 2}, "control": {"devices": 9}}
    )
    waiting = viewer("deployment", "get", "stable", *SCOPE)
    assert "gate: watching, waiting for 5 device(s) per cohort (canary 2, control 9)" in waiting.stdout


def test_an_outsider_cannot_read_the_safety_state(live_hub: HubLauncher, tenant: Tenant, cli: Cli) -> None:
    _deployments(tenant)
    outsider = cli.as_user(tenant.outsider, live_hub().http_url)
    for command in ("status", "get"):
        result = outsider("deployment", command, "stable", *SCOPE)
        assert result.code == 1
        assert REASON not in result.stdout + result.stderr
