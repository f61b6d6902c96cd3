"""Products in the organization pages: create, change, delete (refused while in
use, with the reason), shared secrets issued once and deactivated."""

from __future__ import annotations

import re

import pytest
from django.utils import timezone

from devices.models import Device, ProductSharedSecret
from nerveshub.lib.sealed import unseal
from nerveshub.tenancy.models import AuditEvent, Product
from tests.conftest import Tenant
from tests.deployments.conftest import make_device
from tests.web.conftest import client_for

pytestmark = pytest.mark.django_db

PRODUCTS = "/org/acme/products/"


def test_a_manager_creates_a_product_with_extensions(tenant: Tenant) -> None:
    # given
    client = client_for(tenant.manager)
    # when
    response = client.post(PRODUCTS, {"name": "gadget", "description": "v2 board", "extensions": ["health", "geo"]})
    # then
    assert response.status_code == 302
    product = Product.objects.get(org=tenant.org, name="gadget")
    assert product.extensions == ["health", "geo"] and product.description == "v2 board"
    event = AuditEvent.objects.get(action="product.created", subject_id=str(product.pk))
    assert event.actor_user == tenant.manager and event.details["via"] == "pages"
    page = client.get(PRODUCTS).content.decode()
    assert "gadget" in page and "meta-product" in page


def test_the_form_says_why_a_product_is_refused(tenant: Tenant) -> None:
    client = client_for(tenant.manager)
    # a name the org has already, an unknown extension, no name
    for data, error in (
        ({"name": "widget"}, "already exists"),
        ({"name": "x", "extensions": ["telepathy"]}, "not one of the available choices"),
        ({"name": ""}, "This field is required"),
    ):
        response = client.post(PRODUCTS, data)
        assert response.status_code == 200 and error in response.content.decode(), data
    assert Product.objects.filter(org=tenant.org).count() == 1


def test_a_manager_renames_a_product_and_changes_its_extensions(tenant: Tenant) -> None:
    # given
    url = f"{PRODUCTS}{tenant.product.pk}/"
    client = client_for(tenant.manager)
    # when
    response = client.post(url, {"name": "widget-pro", "description": "", "extensions": ["local_shell"]})
    # then
    assert response.status_code == 302
    tenant.product.refresh_from_db()
    assert tenant.product.name == "widget-pro" and tenant.product.extensions == ["local_shell"]
    page = client.get(url).content.decode()
    assert re.search(r'value="local_shell"[^>]*checked', page)
    assert not re.search(r'value="health"[^>]*checked', page)


def test_a_product_in_use_is_kept_and_the_page_says_why(tenant: Tenant) -> None:
    # given: a device (deleted since: its row still keeps the product)
    device = make_device(tenant.product, "d1")
    Device.objects.filter(pk=device.pk).update(deleted_at=timezone.now())
    client = client_for(tenant.admin)
    # when
    response = client.post(f"{PRODUCTS}{tenant.product.pk}/delete/", follow=True)
    # then
    assert "widget still has 1 devices: delete them or move the devices first." in response.content.decode()
    assert Product.objects.filter(pk=tenant.product.pk).exists()
    # and an unused one goes
    empty = Product.objects.create(org=tenant.org, name="empty")
    response = client.post(f"{PRODUCTS}{empty.pk}/delete/", follow=True)
    assert "Product deleted." in response.content.decode()
    assert not Product.objects.filter(pk=empty.pk).exists()


def test_an_admin_issues_a_secret_shown_once_and_deactivates_it(tenant: Tenant) -> None:
    # given
    client = client_for(tenant.admin)
    url = f"{PRODUCTS}{tenant.product.pk}/"
    # when
    response = client.post(url + "secrets/")
    page = response.content.decode()
    assert "no-store" in response["Cache-Control"]
    # then: shown once, and it is the stored secret
    key = re.search(r'Key <code class="secret">(nhp_[^<]+)</code>', page)
    secret = re.search(r'Secret <code class="secret">([^<]+)</code>', page)
    assert key is not None and secret is not None
    row = ProductSharedSecret.objects.get(key=key.group(1))
    assert unseal(row.secret_sealed) == secret.group(1)
    assert secret.group(1) not in client.get(url).content.decode()
    # when: deactivated
    response = client.post(f"{PRODUCTS}secrets/{row.pk}/deactivate/")
    # then
    assert response.status_code == 302
    row.refresh_from_db()
    assert row.deactivated_at is not None
    assert AuditEvent.objects.filter(action="shared_secret.deactivated", org=tenant.org).count() == 1


def test_a_manager_sees_no_secrets(tenant: Tenant) -> None:
    # given
    ProductSharedSecret.objects.create(product=tenant.product, key="nhp_visible-to-admins", secret_sealed="x")
    # when
    page = client_for(tenant.manager).get(f"{PRODUCTS}{tenant.product.pk}/").content.decode()
    # then
    assert "nhp_visible-to-admins" not in page and "1 key(s)" in page
