"""Deployment admin: progress, actions through services, preview, refusals."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from django.test import Client
from django.urls import reverse
from pytest_django.fixtures import DjangoCaptureOnCommitCallbacks

from deployments import rollout
from deployments.models import Deployment, DeviceUpdate
from firmware.models import Firmware
from nerveshub.tenancy.models import AuditEvent
from tests.conftest import Tenant
from tests.deployments.conftest import make_device, make_firmware

if TYPE_CHECKING:
    # django-stubs' name for what the test client returns (no runtime class).
    from django.test.client import _MonkeyPatchedWSGIResponse as TestResponse


CHANGELIST = reverse("admin:deployments_deployment_changelist")


def _act(client: Client, action: str, deployment: Deployment) -> TestResponse:
    return client.post(CHANGELIST, {"action": action, "_selected_action": [deployment.pk]})


@pytest.mark.django_db
def test_it_pauses_resumes_and_deactivates_through_services(
    tenant: Tenant, client: Client, deployment: Deployment
) -> None:
    # given
    client.force_login(tenant.manager)
    # when
    _act(client, "pause", deployment)
    deployment.refresh_from_db()
    paused = deployment.paused_at
    _act(client, "resume", deployment)
    _act(client, "deactivate", deployment)
    deployment.refresh_from_db()
    # then
    assert paused is not None
    assert deployment.paused_at is None and not deployment.is_active
    actions = list(AuditEvent.objects.filter(subject_type="deployment").values_list("action", flat=True))
    assert {"deployment.paused", "deployment.resumed", "deployment.deactivated"} <= set(actions)


@pytest.mark.django_db
def test_it_refuses_actions_to_a_viewer_and_an_outsider(tenant: Tenant, client: Client, deployment: Deployment) -> None:
    for user in (tenant.viewer, tenant.outsider):
        client.force_login(user)
        _act(client, "deactivate", deployment)
        deployment.refresh_from_db()
        assert deployment.is_active, user
    client.force_login(tenant.outsider)
    assert client.get(reverse("admin:deployments_deployment_preview", args=[deployment.pk])).status_code == 404


@pytest.mark.django_db
def test_it_previews_targets_and_reasons(tenant: Tenant, client: Client, deployment: Deployment) -> None:
    # given
    make_device(tenant.product, "ready", deployment=deployment)
    make_device(tenant.product, "asleep", deployment=deployment, online=False)
    client.force_login(tenant.viewer)
    # when
    page = client.get(reverse("admin:deployments_deployment_preview", args=[deployment.pk])).content.decode()
    # then
    assert "1 of 2 devices of the product would get the update now" in page
    assert "offline: 1" in page


@pytest.mark.django_db
def test_it_shows_progress_on_the_change_page(tenant: Tenant, client: Client, deployment: Deployment) -> None:
    from deployments import rollout

    make_device(tenant.product, "d1", deployment=deployment)
    rollout.run_rollout(deployment.pk)
    client.force_login(tenant.viewer)
    page = client.get(reverse("admin:deployments_deployment_change", args=[deployment.pk])).content.decode()
    assert "<th>requested</th><td>1</td>" in page
    assert DeviceUpdate.objects.count() == 1


@pytest.mark.django_db
def test_it_refuses_firmware_of_another_product(tenant: Tenant, other_tenant: Tenant, client: Client) -> None:
    # given
    client.force_login(tenant.manager)
    foreign = make_firmware(other_tenant.product, "1.0.0")
    # when
    response = client.post(
        reverse("admin:deployments_deployment_add"),
        {
            "org": tenant.org.pk,
            "product": tenant.product.pk,
            "name": "x",
            "firmware": foreign.pk,
            "conditions_tags": "[]",
            "conditions_version": "",
            "concurrent_updates": 10,
            "inflight_timeout_minutes": 30,
            "penalty_attempts": 3,
            "penalty_rate_attempts": 5,
            "penalty_rate_seconds": 180,
            "penalty_minutes": 1440,
            "breaker_failure_percent": 20,
            "breaker_min_attempts": 10,
            "stages-TOTAL_FORMS": 0,
            "stages-INITIAL_FORMS": 0,
        },
    )
    # then: another tenant's firmware is not even a choice
    assert response.status_code == 200
    assert 'id="id_firmware_error"' in response.content.decode()
    assert not Deployment.objects.filter(name="x").exists()


@pytest.mark.django_db
def test_it_refuses_firmware_of_another_product_of_the_same_org(tenant: Tenant, client: Client) -> None:
    # given
    from nerveshub.tenancy import services as tenancy

    client.force_login(tenant.manager)
    sibling, _ = tenancy.get_or_create_product("test", tenant.org, "sibling")
    firmware = make_firmware(sibling, "1.0.0")
    # when
    response = _add_main(client, tenant, firmware)
    # then
    assert "belongs to another product" in response.content.decode()
    assert not Deployment.objects.filter(name="main").exists()


@pytest.mark.django_db
def test_it_assigns_devices_when_a_deployment_is_created(
    tenant: Tenant, client: Client, django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks
) -> None:
    # given
    firmware = make_firmware(tenant.product, "2.0.0")
    device = make_device(tenant.product, "d1", version="1.0.0")
    client.force_login(tenant.manager)
    # when
    with django_capture_on_commit_callbacks(execute=True):
        response = _add_main(client, tenant, firmware)
    # then
    assert response.status_code == 302, response.content.decode()[:2000]
    device.refresh_from_db()
    assert device.deployment is not None and device.deployment.name == "main"
    # the orchestrator run that the save woke (a worker's job; called directly here)
    rollout.run_rollout(device.deployment.pk)
    assert DeviceUpdate.objects.filter(device=device).count() == 1


def _add_main(client: Client, tenant: Tenant, firmware: Firmware) -> TestResponse:
    return client.post(
        reverse("admin:deployments_deployment_add"),
        {
            "org": tenant.org.pk,
            "product": tenant.product.pk,
            "name": "main",
            "firmware": firmware.pk,
            "conditions_tags": "[]",
            "conditions_version": "~> 1.0",
            "is_active": "on",
            "concurrent_updates": 10,
            "inflight_timeout_minutes": 30,
            "penalty_attempts": 3,
            "penalty_rate_attempts": 5,
            "penalty_rate_seconds": 180,
            "penalty_minutes": 1440,
            "breaker_failure_percent": 20,
            "breaker_min_attempts": 10,
            "stages-TOTAL_FORMS": 0,
            "stages-INITIAL_FORMS": 0,
        },
    )
