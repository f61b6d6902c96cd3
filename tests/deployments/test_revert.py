"""One-click revert: the devices a paused or stopped rollout updated go back to
the firmware each ran before, through new deployments linked to the old one;
the service, the API, the page, the admin action and the CLI, and who is
refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from deployments import revert, rollout
from deployments.models import Deployment, DeviceUpdate, UpdateStatus
from devicelink.join import join_report
from devicelink.protocol import DeviceJoin
from devices.models import Device
from firmware.models import Firmware
from nerveshub.tenancy.models import AuditEvent, Membership
from tests.api.conftest import api_for
from tests.cli.conftest import Cli
from tests.conftest import Tenant
from tests.deployments.conftest import make_device, make_firmware
from tests.support.hub import HubLauncher

URL = "/orgs/acme/products/widget/deployments/stable/revert"


def _rolled_out(tenant: Tenant, deployment: Deployment, target: Firmware) -> tuple[Firmware, Firmware]:
    """Four devices on 1.0.0, two on 1.1.0, updated to the target; one more
    whose previous firmware the hub has no file for; then paused."""
    one, other = make_firmware(tenant.product, "1.0.0"), make_firmware(tenant.product, "1.1.0")
    Deployment.objects.filter(pk=deployment.pk).update(concurrent_updates=10)
    for i in range(4):
        make_device(tenant.product, f"a{i}", deployment=deployment, firmware_uuid=one.uuid)
    for i in range(2):
        make_device(tenant.product, f"b{i}", deployment=deployment, firmware_uuid=other.uuid)
    make_device(tenant.product, "c0", deployment=deployment, firmware_uuid="uuid-unknown")
    rollout.run_rollout(deployment.pk)
    for update in DeviceUpdate.objects.filter(deployment=deployment):
        DeviceUpdate.objects.filter(pk=update.pk).update(status=UpdateStatus.COMPLETED, attempted_at=timezone.now())
        Device.objects.filter(pk=update.device_id).update(firmware_uuid=target.uuid, firmware_version="2.0.0")
        join = DeviceJoin.model_validate({"nerves_fw_uuid": target.uuid})
        rollout.on_device_joined(update.device_id, join_report(join))
    assert DeviceUpdate.objects.filter(deployment=deployment, status=UpdateStatus.SUCCEEDED).count() == 7
    rollout.pause("test", deployment)
    deployment.refresh_from_db()
    return one, other


@pytest.mark.django_db
def test_it_reverts_each_device_to_the_firmware_it_ran_before(
    tenant: Tenant, deployment: Deployment, target: Firmware
) -> None:
    # given
    one, other = _rolled_out(tenant, deployment, target)
    # when
    result = revert.revert("test", deployment, via="test")
    # then: one deployment per previous firmware, linked, active, with the old one's pacing
    deployment.refresh_from_db()
    assert deployment.is_active and deployment.paused_at is not None
    assert result.devices == 6 and result.left == 1
    by_firmware = {d.firmware_id: d for d in result.deployments}
    assert set(by_firmware) == {one.pk, other.pk}
    for reverting in result.deployments:
        reverting.refresh_from_db()
        assert reverting.reverts_id == deployment.pk and reverting.is_active
        assert reverting.concurrent_updates == 10 and reverting.conditions_version == "== 2.0.0"
    # the device with no known previous firmware stays in the paused rollout
    assert Device.objects.get(identifier="c0").deployment_id == deployment.pk
    assert set(Device.objects.filter(identifier__startswith="a").values_list("deployment_id", flat=True)) == {
        by_firmware[one.pk].pk
    }
    assert set(Device.objects.filter(identifier__startswith="b").values_list("deployment_id", flat=True)) == {
        by_firmware[other.pk].pk
    }
    assert AuditEvent.objects.filter(action="deployment.reverted").count() == 1
    # and the revert rolls out: each device is pushed its own previous firmware
    for reverting in result.deployments:
        rollout.run_rollout(reverting.pk)
    pushed = dict(
        DeviceUpdate.objects.filter(deployment__reverts=deployment).values_list("device__identifier", "firmware_id")
    )
    assert pushed == {"a0": one.pk, "a1": one.pk, "a2": one.pk, "a3": one.pk, "b0": other.pk, "b1": other.pk}


@pytest.mark.django_db
def test_it_refuses_a_running_rollout_and_a_second_revert(
    tenant: Tenant, deployment: Deployment, target: Firmware
) -> None:
    _rolled_out(tenant, deployment, target)
    rollout.resume("test", deployment)
    deployment.refresh_from_db()
    with pytest.raises(revert.RevertRefused, match="pause or deactivate"):
        revert.revert("test", deployment, via="test")
    rollout.pause("test", deployment)
    revert.revert("test", deployment, via="test")
    with pytest.raises(revert.RevertRefused, match="reverted already"):
        revert.revert("test", deployment, via="test")


@pytest.mark.django_db
def test_it_refuses_when_no_device_can_go_back(tenant: Tenant, deployment: Deployment) -> None:
    rollout.pause("test", deployment)
    deployment.refresh_from_db()
    with pytest.raises(revert.RevertRefused, match="no device"):
        revert.revert("test", deployment, via="test")
    assert not Deployment.objects.filter(reverts=deployment).exists()


# --- API --------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_api_reverts_for_a_manager(tenant: Tenant, deployment: Deployment, target: Firmware) -> None:
    _rolled_out(tenant, deployment, target)
    as_manager = api_for(tenant.manager)
    answer = as_manager.post(URL)
    assert answer.status_code == 201, answer.content
    body = answer.json()
    assert body["reverts"] == "stable" and body["devices"] == 6 and body["left"] == 1
    assert sorted(d["firmware_version"] for d in body["deployments"]) == ["1.0.0", "1.1.0"]
    assert as_manager.post(URL).status_code == 409


@pytest.mark.django_db
def test_the_api_refuses_a_viewer_an_outsider_a_removed_member_and_a_running_rollout(
    tenant: Tenant, deployment: Deployment, target: Firmware
) -> None:
    _rolled_out(tenant, deployment, target)
    as_viewer, as_outsider = api_for(tenant.viewer), api_for(tenant.outsider)
    removed = api_for(tenant.manager)
    Membership.objects.filter(user=tenant.manager, org=tenant.org).delete()
    assert as_viewer.post(URL).status_code == 403
    assert as_outsider.post(URL).status_code == 404
    assert removed.post(URL).status_code in (403, 404)
    rollout.resume("test", deployment)
    running = api_for(tenant.admin).post(URL)
    assert running.status_code == 409 and "pause" in running.content.decode()
    assert not Deployment.objects.filter(reverts=deployment).exists()


# --- page and admin ---------------------------------------------------------------------


def _page(deployment: Deployment) -> str:
    return reverse("web:deployment_revert", args=["acme", deployment.pk])


@pytest.mark.django_db
def test_the_page_shows_the_gate_and_reverts_for_a_manager(
    tenant: Tenant, deployment: Deployment, target: Firmware, client: Client
) -> None:
    # given
    _rolled_out(tenant, deployment, target)
    Deployment.objects.filter(pk=deployment.pk).update(
        gate_enabled=True,
        soak_minutes=15,
        gate_report={
            "state": "paused",
            "checked_at": "now",
            "min_devices": 20,
            "canary": {"devices": 21, "device_hours": 3.5, "reconnects": 9},
            "control": {"devices": 40, "device_hours": 7.0, "reconnects": 2},
            "findings": [
                {"signal": "auto-reverts", "canary": "8/21", "control": "0/40", "p_value": 0.0001, "worse": True}
            ],
        },
    )
    client.force_login(tenant.manager)
    # when
    shown = client.get(reverse("web:deployment", args=["acme", deployment.pk])).content.decode()
    answer = client.post(_page(deployment))
    # then
    assert "15 minute(s) on the new firmware" in shown
    assert 'id="gate-cohorts"' in shown and "8/21" in shown and "0/40" in shown
    assert 'id="revert-form"' in shown
    assert answer.status_code == 302
    assert Deployment.objects.filter(reverts=deployment).count() == 2


@pytest.mark.django_db
def test_the_page_refuses_a_viewer_an_outsider_and_a_removed_member(
    tenant: Tenant, deployment: Deployment, target: Firmware, client: Client
) -> None:
    _rolled_out(tenant, deployment, target)
    client.force_login(tenant.viewer)
    shown = client.get(reverse("web:deployment", args=["acme", deployment.pk])).content.decode()
    assert 'id="revert-form"' not in shown
    assert client.post(_page(deployment)).status_code == 403
    client.force_login(tenant.outsider)
    assert client.post(_page(deployment)).status_code == 404
    Membership.objects.filter(user=tenant.manager, org=tenant.org).delete()
    client.force_login(tenant.manager)
    assert client.post(_page(deployment)).status_code == 404
    assert not Deployment.objects.filter(reverts=deployment).exists()


@pytest.mark.django_db
def test_the_page_says_why_a_running_rollout_is_not_reverted(
    tenant: Tenant, deployment: Deployment, target: Firmware, client: Client
) -> None:
    _rolled_out(tenant, deployment, target)
    rollout.resume("test", deployment)
    client.force_login(tenant.manager)
    answer = client.post(_page(deployment), follow=True)
    assert "Not reverted: the rollout is running" in answer.content.decode()
    assert not Deployment.objects.filter(reverts=deployment).exists()


@pytest.mark.django_db
def test_the_admin_action_reverts_for_a_manager_only(
    tenant: Tenant, deployment: Deployment, target: Firmware, client: Client
) -> None:
    _rolled_out(tenant, deployment, target)
    changelist = reverse("admin:deployments_deployment_changelist")
    for user in (tenant.viewer, tenant.outsider):
        client.force_login(user)
        client.post(changelist, {"action": "revert_updated", "_selected_action": [deployment.pk]})
        assert not Deployment.objects.filter(reverts=deployment).exists(), user
    client.force_login(tenant.manager)
    client.post(changelist, {"action": "revert_updated", "_selected_action": [deployment.pk]})
    assert Deployment.objects.filter(reverts=deployment).count() == 2


# --- CLI ----------------------------------------------------------------------------------


def test_the_cli_reverts(live_hub: HubLauncher, tenant: Tenant, tmp_path: Path) -> None:
    # given
    (tmp_path / "home").mkdir()
    cli = Cli(home=tmp_path / "home")
    target = make_firmware(tenant.product, "2.0.0")
    deployment = Deployment.objects.create(
        org=tenant.org, product=tenant.product, name="stable", firmware=target, is_active=True
    )
    _rolled_out(tenant, deployment, target)
    hub = live_hub()
    # when
    refused = cli.as_user(tenant.viewer, hub.http_url)(
        "deployment", "revert", "stable", "--org", "acme", "--product", "widget"
    )
    done = cli.as_user(tenant.manager, hub.http_url)(
        "deployment", "revert", "stable", "--org", "acme", "--product", "widget"
    )
    # then
    assert refused.code == 1
    assert done.code == 0, done.stderr
    assert "reverting 6 device(s)" in done.stdout and "1 without a known previous firmware" in done.stdout
