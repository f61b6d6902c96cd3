"""Shared-secret keys in the audit log, read by a member with the view role:
the org pages and the admin show them masked, and the admin's search cannot be
used to guess them a character at a time. Managers and admins see them."""

from __future__ import annotations

import time

import pytest
from django.urls import reverse

from devicelink.auth import authenticate_shared_secret
from devices import services
from devices.models import Device, ProductSharedSecret
from nerveshub.tenancy.models import AuditEvent
from tests.support.nhl_client import nh1_headers
from tests.web.conftest import Fleet, client_for

# The `keyed` fixture: the fleet, a deactivated product key, and the device it registered.
Keyed = tuple[Fleet, str, Device]


@pytest.fixture
def keyed(fleet: Fleet) -> Keyed:
    # a product key issued, a device registered with it, the key deactivated
    _, issued = services.create_product_secret("test", fleet.tenant.product)
    headers = dict(nh1_headers(issued.key, issued.secret, "dev-keyed", int(time.time())))
    device = authenticate_shared_secret(headers)
    services.deactivate_secrets("test", list(ProductSharedSecret.objects.filter(key=issued.key)))
    assert AuditEvent.objects.filter(details__key=issued.key).count() == 2
    return fleet, issued.key, device


def _pages(fleet: Fleet, device: Device) -> list[str]:
    slug = fleet.slug
    return [
        f"/org/{slug}/",
        f"/org/{slug}/audit/",
        f"/org/{slug}/devices/{device.pk}/",
        f"/org/{slug}/devices/{device.pk}/audit/",
    ]


@pytest.mark.django_db
def test_a_viewer_sees_no_product_key_in_the_org_pages(keyed: Keyed) -> None:
    fleet, key, device = keyed
    client = client_for(fleet.tenant.viewer)
    for url in _pages(fleet, device):
        response = client.get(url)
        assert response.status_code == 200, url
        assert key.encode() not in response.content, url
        assert key[4:12].encode() not in response.content, url
    assert "nhp_…".encode() in client.get(f"/org/{fleet.slug}/audit/").content


@pytest.mark.django_db
def test_a_manager_and_an_admin_see_the_key(keyed: Keyed) -> None:
    fleet, key, _device = keyed
    for user in (fleet.tenant.manager, fleet.tenant.admin):
        assert key.encode() in client_for(user).get(f"/org/{fleet.slug}/audit/").content


@pytest.mark.django_db
def test_a_viewer_sees_no_product_key_in_the_admin(keyed: Keyed) -> None:
    fleet, key, _device = keyed
    client = client_for(fleet.tenant.viewer)
    changelist = reverse("admin:tenancy_auditevent_changelist")
    # when
    listed = client.get(changelist)
    searched = client.get(changelist, {"q": key[:8]})
    events = AuditEvent.objects.filter(org=fleet.tenant.org, details__key=key)
    shown = [client.get(reverse("admin:tenancy_auditevent_change", args=[e.pk])) for e in events]
    keys_page = client.get(reverse("admin:devices_productsharedsecret_changelist"))
    # then
    assert listed.status_code == 200 and key.encode() not in listed.content
    assert searched.status_code == 200 and key.encode() not in searched.content
    assert b"0 results" in searched.content  # the key rows are not matched at all
    for page in shown:
        assert page.status_code == 200 and key.encode() not in page.content
    assert keys_page.status_code == 403


@pytest.mark.django_db
def test_a_manager_sees_the_key_in_the_admin(keyed: Keyed) -> None:
    fleet, key, _device = keyed
    client = client_for(fleet.tenant.manager)
    listed = client.get(reverse("admin:tenancy_auditevent_changelist"))
    assert key.encode() in listed.content
