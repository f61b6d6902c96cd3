"""Every admin changelist renders, for operators and for org members, with a
query count that does not grow with the number of rows."""

from __future__ import annotations

import pytest
from django.contrib import admin
from django.contrib.auth.models import User
from django.db import connection
from django.db.models import Model
from django.http import HttpRequest
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from pytest_django.fixtures import DjangoAssertNumQueries

from devices import services as device_services
from devices.models import Device
from nerveshub.tenancy import services as tenancy
from tests.conftest import Tenant


def _changelist_url(model: type[Model]) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")


def _queries(client: Client, url: str) -> int:
    with CaptureQueriesContext(connection) as ctx:
        response = client.get(url)
    assert response.status_code == 200, (url, response.status_code)
    return len(ctx.captured_queries)


def _make_devices(tenant: Tenant, count: int, start: int = 0) -> None:
    for i in range(start, start + count):
        device = device_services.create_device("test", tenant.product, f"dev-{i:04d}", tags=["a", "b"])
        device_services.create_device_secret("test", device)
    from devices.services import create_product_secret

    create_product_secret("test", tenant.product)


@pytest.mark.django_db
def test_it_renders_every_registered_changelist_for_an_operator(tenant: Tenant, client: Client) -> None:
    # given
    root = User.objects.create_superuser("root", "root@example.com", "pw")
    _make_devices(tenant, 3)
    client.force_login(root)
    # when / then
    for model in admin.site._registry:
        url = _changelist_url(model)
        response = client.get(url)
        assert response.status_code == 200, url


@pytest.mark.django_db
@pytest.mark.parametrize("persona", ["operator", "viewer"])
def test_it_keeps_changelist_query_counts_flat_as_rows_grow(tenant: Tenant, client: Client, persona: str) -> None:
    # given
    user = User.objects.create_superuser("root", "root@example.com", "pw") if persona == "operator" else tenant.viewer
    client.force_login(user)
    _make_devices(tenant, 2)
    urls = [_changelist_url(m) for m in admin.site._registry if admin.site._registry[m].has_view_permission(_req(user))]
    before = {url: _queries(client, url) for url in urls}
    # when
    _make_devices(tenant, 25, start=100)
    after = {url: _queries(client, url) for url in urls}
    # then
    assert after == before
    assert max(after.values()) <= 15, after


def _req(user: User) -> HttpRequest:
    from django.test import RequestFactory

    request = RequestFactory().get("/")
    request.user = user
    return request


@pytest.mark.django_db
def test_it_pins_the_device_changelist_query_count(
    tenant: Tenant, client: Client, django_assert_num_queries: DjangoAssertNumQueries
) -> None:
    # given
    _make_devices(tenant, 30)
    client.force_login(tenant.viewer)
    url = _changelist_url(Device)
    client.get(url)  # warm the session and content-type caches
    # when / then: session, user, memberships, count, page, related-only product filter
    with django_assert_num_queries(_queries(client, url)):
        response = client.get(url)
    assert response.status_code == 200
    assert b"dev-0029" in response.content


@pytest.mark.django_db
def test_it_hides_other_organizations_rows_from_members(tenant: Tenant, other_tenant: Tenant, client: Client) -> None:
    # given
    _make_devices(tenant, 2)
    device_services.create_device("test", other_tenant.product, "foreign-1")
    tenancy.audit("test", "probe", Device.objects.get(identifier="foreign-1"))
    client.force_login(tenant.viewer)
    # when
    listing = client.get(_changelist_url(Device)).content.decode()
    foreign = Device.objects.get(identifier="foreign-1")
    detail = client.get(reverse("admin:devices_device_change", args=[foreign.pk]))
    audit = client.get(reverse("admin:tenancy_auditevent_changelist")).content.decode()
    # then
    assert "dev-0000" in listing
    assert "foreign-1" not in listing
    assert detail.status_code == 302  # Django redirects a missing object to the index
    assert "foreign-1" not in audit


@pytest.mark.django_db
def test_it_refuses_the_admin_to_a_user_without_membership(client: Client) -> None:
    # given
    loner = User.objects.create_user("loner", password="pw", is_staff=True)
    client.force_login(loner)
    # when
    response = client.get(_changelist_url(Device))
    # then
    assert response.status_code == 403
