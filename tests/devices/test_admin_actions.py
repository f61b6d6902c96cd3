"""Device admin bulk actions call services, write audit events, and refuse
lesser roles and other organizations' rows."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from devices import services
from devices.models import Device, DeviceSharedSecret, ProductSharedSecret
from nerveshub.tenancy.models import AuditEvent
from tests.conftest import Tenant

if TYPE_CHECKING:
    # django-stubs' name for what the test client returns (no runtime class).
    from django.test.client import _MonkeyPatchedWSGIResponse as TestResponse


URL = reverse("admin:devices_device_changelist")


def _post_action(client: Client, action: str, devices: list[Device], **extra: Any) -> TestResponse:
    data = {"action": action, "_selected_action": [d.pk for d in devices], **extra}
    return client.post(URL, data)


@pytest.fixture
def devices(tenant: Tenant) -> list[Device]:
    return [services.create_device("test", tenant.product, f"d{i}", tags=["base"]) for i in range(3)]


@pytest.mark.django_db
def test_it_adds_tags_through_the_confirmation_page(tenant: Tenant, client: Client, devices: list[Device]) -> None:
    # given
    client.force_login(tenant.manager)
    # when: the first post shows the form, the second applies it
    page = _post_action(client, "add_tags", devices[:2])
    applied = _post_action(client, "add_tags", devices[:2], apply="1", tags="beta, eu")
    # then
    assert page.status_code == 200 and b"Add tags" in page.content
    assert applied.status_code == 302
    assert Device.objects.get(identifier="d0").tags == ["base", "beta", "eu"]
    assert Device.objects.get(identifier="d2").tags == ["base"]
    events = AuditEvent.objects.filter(action="device.tags_added")
    assert {e.subject for e in events} == {"d0", "d1"}
    assert all(e.actor == "user:mallory-manager" for e in events)


@pytest.mark.django_db
def test_it_rejects_tags_with_spaces(tenant: Tenant, client: Client, devices: list[Device]) -> None:
    client.force_login(tenant.manager)
    response = _post_action(client, "add_tags", devices[:1], apply="1", tags="two words")
    assert response.status_code == 200
    assert b"white space" in response.content
    assert Device.objects.get(identifier="d0").tags == ["base"]


@pytest.mark.django_db
def test_it_removes_tags(tenant: Tenant, client: Client, devices: list[Device]) -> None:
    client.force_login(tenant.admin)
    _post_action(client, "remove_tags", devices, apply="1", tags="base")
    assert all(d.tags == [] for d in Device.objects.all())
    assert AuditEvent.objects.filter(action="device.tags_removed").count() == 3


@pytest.mark.django_db
def test_it_toggles_updates_and_clears_the_penalty_box(tenant: Tenant, client: Client, devices: list[Device]) -> None:
    # given
    Device.objects.filter(identifier="d1").update(penalty_box_until=timezone.now() + timedelta(hours=1))
    client.force_login(tenant.manager)
    # when
    _post_action(client, "disable_updates", devices)
    _post_action(client, "clear_penalty_box", devices)
    # then
    assert not Device.objects.filter(updates_enabled=True).exists()
    assert not Device.objects.filter(penalty_box_until__isnull=False).exists()
    assert AuditEvent.objects.filter(action="device.updates_disabled").count() == 3
    assert AuditEvent.objects.filter(action="device.penalty_box_cleared").count() == 1
    _post_action(client, "enable_updates", devices[:1])
    assert Device.objects.filter(updates_enabled=True).count() == 1


@pytest.mark.django_db
def test_it_soft_deletes_and_keeps_the_identifier_reserved(
    tenant: Tenant, client: Client, devices: list[Device]
) -> None:
    client.force_login(tenant.manager)
    services.create_device_secret("test", devices[0])
    _post_action(client, "soft_delete", devices[:1])
    device = Device.objects.get(identifier="d0")
    assert device.deleted_at is not None
    assert not DeviceSharedSecret.objects.filter(device=device, deactivated_at__isnull=True).exists()
    with pytest.raises(Exception):  # noqa: B017 - the unique constraint refuses reuse
        services.create_device("test", tenant.product, "d0")


@pytest.mark.django_db
def test_it_refuses_actions_to_a_viewer(tenant: Tenant, client: Client, devices: list[Device]) -> None:
    # given
    client.force_login(tenant.viewer)
    # when
    response = _post_action(client, "disable_updates", devices)
    # then: the action is not offered, nothing changes
    assert response.status_code in (200, 302)
    assert Device.objects.filter(updates_enabled=True).count() == 3
    assert not AuditEvent.objects.filter(action="device.updates_disabled").exists()


@pytest.mark.django_db
def test_it_ignores_another_organizations_device_ids(tenant: Tenant, other_tenant: Tenant, client: Client) -> None:
    # given
    foreign = services.create_device("test", other_tenant.product, "foreign")
    client.force_login(tenant.manager)
    # when
    _post_action(client, "disable_updates", [foreign])
    # then
    foreign.refresh_from_db()
    assert foreign.updates_enabled


@pytest.mark.django_db
def test_it_issues_and_deactivates_shared_secrets(tenant: Tenant, client: Client, devices: list[Device]) -> None:
    # given
    client.force_login(tenant.admin)
    product_url = reverse("admin:tenancy_product_changelist")
    # when
    issued = client.post(
        product_url, {"action": "issue_shared_secret", "_selected_action": [tenant.product.pk]}, follow=True
    )
    key = ProductSharedSecret.objects.get(product=tenant.product)
    client.post(
        reverse("admin:devices_productsharedsecret_changelist"),
        {"action": "deactivate", "_selected_action": [key.pk]},
    )
    # then
    assert key.key.encode() in issued.content
    key.refresh_from_db()
    assert key.deactivated_at is not None
    assert AuditEvent.objects.filter(action="shared_secret.deactivated", subject_id=str(key.pk)).exists()


@pytest.mark.django_db
def test_it_refuses_secret_deactivation_to_a_manager(tenant: Tenant, client: Client) -> None:
    _, issued = services.create_product_secret("test", tenant.product)
    client.force_login(tenant.manager)
    key = ProductSharedSecret.objects.get(key=issued.key)
    client.post(
        reverse("admin:devices_productsharedsecret_changelist"),
        {"action": "deactivate", "_selected_action": [key.pk]},
    )
    key.refresh_from_db()
    assert key.deactivated_at is None


@pytest.mark.django_db
def test_it_audits_a_change_made_through_a_form(tenant: Tenant, client: Client, devices: list[Device]) -> None:
    # given
    client.force_login(tenant.manager)
    device = devices[0]
    url = reverse("admin:devices_device_change", args=[device.pk])
    # when
    response = client.post(
        url,
        {"product": tenant.product.pk, "description": "on the roof", "tags": '["base"]', "updates_enabled": "on"},
    )
    # then
    assert response.status_code == 302, response.content
    event = AuditEvent.objects.get(action="device.changed")
    assert event.actor == "user:mallory-manager"
    assert "description" in str(event.details["fields"]).lower()
