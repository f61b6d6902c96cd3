"""The console page: who gets it, what it says, and the admin's link to it."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.shortcuts import resolve_url
from django.test import Client

from console import views
from devices import services as device_services
from devices.models import Device
from tests.conftest import Tenant


@pytest.fixture
def device(tenant: Tenant) -> Device:
    return device_services.create_device("test", tenant.product, "dev-page")


def _client(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_it_sends_anonymous_visitors_to_the_login_page(device: Device) -> None:
    # when
    response = Client().get(f"/console/{device.pk}/")
    # then
    assert response.status_code == 302
    assert response["Location"].startswith(resolve_url(settings.LOGIN_URL))


def test_it_is_404_for_an_outsider_and_for_a_missing_or_deleted_device(tenant: Tenant, device: Device) -> None:
    # when / then
    assert _client(tenant.outsider).get(f"/console/{device.pk}/").status_code == 404
    assert _client(tenant.admin).get(f"/console/{device.pk + 1000}/").status_code == 404
    device_services.soft_delete("test", type(device).objects.filter(pk=device.pk))
    assert _client(tenant.admin).get(f"/console/{device.pk}/").status_code == 404


def test_it_gives_the_manager_a_terminal_and_the_viewer_a_read_only_one(
    tenant: Tenant, device: Device, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given: the terminal assets are there (make console-assets), whatever this checkout has
    monkeypatch.setattr(views, "_assets_present", lambda: True)
    # when
    manager_page = _client(tenant.manager).get(f"/console/{device.pk}/")
    viewer_page = _client(tenant.viewer).get(f"/console/{device.pk}/")
    # then
    assert manager_page.status_code == 200
    body = manager_page.content.decode()
    assert f'data-socket="/console/{device.pk}/socket"' in body
    assert "/static/console/vendor/xterm.js" in body and 'data-can-write="true"' in body
    assert 'id="upload-input"' in body
    assert "device offline" in body
    viewer_body = viewer_page.content.decode()
    assert viewer_page.status_code == 200
    assert "read-only (view)" in viewer_body and 'data-can-write="false"' in viewer_body
    assert 'id="upload-input"' not in viewer_body
    # no CDN: every script comes from this hub's static files
    assert "https://" not in body


def test_it_says_so_when_the_terminal_assets_are_missing(
    tenant: Tenant, device: Device, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given: a `make run` on a machine without npm
    monkeypatch.setattr(views, "_assets_present", lambda: False)
    # when
    response = _client(tenant.admin).get(f"/console/{device.pk}/")
    # then
    assert response.status_code == 200
    body = response.content.decode()
    assert "terminal assets are missing" in body and "make console-assets" in body
    assert "vendor/xterm.js" not in body


def test_it_links_the_device_admin_page_to_the_console(tenant: Tenant, device: Device) -> None:
    # given
    admin = tenant.admin
    admin.is_superuser = True
    admin.save()
    # when
    response = _client(admin).get(f"/admin/devices/device/{device.pk}/change/")
    # then
    assert response.status_code == 200
    assert f'href="/console/{device.pk}/"' in response.content.decode()
