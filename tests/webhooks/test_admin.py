"""The webhook admin: an org's admins manage its endpoints and replay its
deliveries; managers, viewers and other organizations are refused."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse
from pytest_django.fixtures import DjangoAssertNumQueries

from nerveshub.tenancy.models import AuditEvent, Organization
from nerveshub.tenancy.services import audit
from tests.conftest import Tenant
from tests.webhooks.conftest import Subscribe
from webhooks.models import EventType, WebhookDelivery, WebhookEndpoint

pytestmark = pytest.mark.django_db

ENDPOINTS = reverse("admin:webhooks_webhookendpoint_changelist")
DELIVERIES = reverse("admin:webhooks_webhookdelivery_changelist")
ADD = reverse("admin:webhooks_webhookendpoint_add")


@pytest.fixture
def delivered(tenant: Tenant, subscribe: Subscribe) -> WebhookDelivery:
    subscribe(EventType.FIRMWARE_VALIDATED)
    audit("system", "firmware.validated", tenant.product)
    return WebhookDelivery.objects.get()


def _add_form(org: Organization, url: str) -> dict[str, object]:
    return {"org": org.pk, "url": url, "description": "ops", "event_types": ["device.online"], "is_active": "on"}


def test_an_admin_adds_an_endpoint_with_a_generated_secret(tenant: Tenant, client: Client) -> None:
    # given
    client.force_login(tenant.admin)

    # when
    response = client.post(ADD, _add_form(tenant.org, "https://hooks.example.com/nh"))

    # then
    assert response.status_code == 302, response.content
    endpoint = WebhookEndpoint.objects.get()
    assert endpoint.event_types == ["device.online"]
    assert endpoint.secret.startswith("whsec_")
    assert AuditEvent.objects.filter(action="webhookendpoint.created", actor="user:alice").exists()
    page = client.get(reverse("admin:webhooks_webhookendpoint_change", args=[endpoint.pk]))
    assert endpoint.secret in page.content.decode()


def test_the_form_refuses_plain_http_to_a_remote_host(tenant: Tenant, client: Client) -> None:
    client.force_login(tenant.admin)
    response = client.post(ADD, _add_form(tenant.org, "http://hooks.example.com/nh"))
    assert response.status_code == 200
    assert "https://" in response.content.decode()
    assert not WebhookEndpoint.objects.exists()


def test_an_admin_cannot_add_an_endpoint_to_another_org(tenant: Tenant, other_tenant: Tenant, client: Client) -> None:
    client.force_login(tenant.admin)
    response = client.post(ADD, _add_form(other_tenant.org, "https://hooks.example.com/nh"))
    assert response.status_code == 200  # the org is not among the form's choices
    assert not WebhookEndpoint.objects.exists()


@pytest.mark.parametrize("who", ["manager", "viewer"])
def test_lesser_roles_are_refused(tenant: Tenant, client: Client, delivered: WebhookDelivery, who: str) -> None:
    # given
    client.force_login(getattr(tenant, who))
    endpoint = delivered.endpoint

    # when
    pages = [
        client.get(ENDPOINTS),
        client.get(DELIVERIES),
        client.get(reverse("admin:webhooks_webhookendpoint_change", args=[endpoint.pk])),
        client.post(ADD, _add_form(tenant.org, "https://hooks.example.com/nh")),
        client.post(DELIVERIES, {"action": "replay", "_selected_action": [delivered.pk]}),
    ]

    # then
    assert [p.status_code for p in pages] == [403, 403, 403, 403, 403]
    assert WebhookDelivery.objects.count() == 1
    assert WebhookEndpoint.objects.count() == 1


def test_an_outsider_sees_and_replays_nothing_of_another_org(
    tenant: Tenant, client: Client, delivered: WebhookDelivery
) -> None:
    # given: the outsider administers another org
    client.force_login(tenant.outsider)

    # when
    listing = client.get(DELIVERIES)
    change = client.get(reverse("admin:webhooks_webhookendpoint_change", args=[delivered.endpoint.pk]))
    client.post(DELIVERIES, {"action": "replay", "_selected_action": [delivered.pk]})
    client.post(ENDPOINTS, {"action": "rotate_secret", "_selected_action": [delivered.endpoint.pk]})

    # then
    assert listing.status_code == 200
    assert str(delivered.event_id) not in listing.content.decode()
    assert change.status_code == 302  # "doesn't exist", back to the index
    assert WebhookDelivery.objects.count() == 1
    assert not AuditEvent.objects.filter(action="webhook_endpoint.secret_rotated").exists()


def test_an_admin_replays_a_delivery_from_the_log(tenant: Tenant, client: Client, delivered: WebhookDelivery) -> None:
    # given
    client.force_login(tenant.admin)

    # when
    listing = client.get(DELIVERIES)
    response = client.post(DELIVERIES, {"action": "replay", "_selected_action": [delivered.pk]})

    # then
    assert listing.status_code == 200
    assert response.status_code == 302
    replay = WebhookDelivery.objects.exclude(pk=delivered.pk).get()
    assert replay.replay_of_id == delivered.pk and replay.event_id == delivered.event_id
    assert AuditEvent.objects.filter(action="webhook_delivery.replayed", actor="user:alice").exists()


def test_an_admin_rotates_a_secret(tenant: Tenant, client: Client, delivered: WebhookDelivery) -> None:
    client.force_login(tenant.admin)
    before = delivered.endpoint.secret
    response = client.post(ENDPOINTS, {"action": "rotate_secret", "_selected_action": [delivered.endpoint.pk]})
    assert response.status_code == 302
    delivered.endpoint.refresh_from_db()
    assert delivered.endpoint.secret != before


def test_the_delivery_log_costs_a_fixed_number_of_queries(
    tenant: Tenant, client: Client, delivered: WebhookDelivery, django_assert_max_num_queries: DjangoAssertNumQueries
) -> None:
    # given
    from nerveshub.tenancy.services import audit as write

    for _ in range(20):
        write("system", "firmware.validated", tenant.product)
    client.force_login(tenant.admin)

    # when / then
    with django_assert_max_num_queries(12):
        response = client.get(DELIVERIES)
    assert response.status_code == 200
