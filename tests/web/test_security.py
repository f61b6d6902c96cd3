"""What a browser and the database see of the hub's secrets and pages: every
page sends the security headers, a cross-site POST without the CSRF token is
refused, and no secret is stored in the clear."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.urls import reverse

from devices import services as devices
from devices.models import Device, DeviceSharedSecret, ProductSharedSecret
from nerveshub.lib.sealed import unseal
from nerveshub.tenancy import services as tenancy
from nerveshub.tenancy.models import APIToken
from tests.web.conftest import Fleet, client_for
from webhooks import services as webhooks
from webhooks.models import WebhookEndpoint

pytestmark = pytest.mark.django_db


def test_pages_send_the_security_headers(fleet: Fleet) -> None:
    client = client_for(fleet.tenant.admin)
    urls = [f"/org/{fleet.slug}/", f"/org/{fleet.slug}/devices/{fleet.device.pk}/", "/admin/", reverse("web:login")]
    for url in urls:
        response = client.get(url)
        assert response.status_code == 200, url
        assert response["X-Frame-Options"] == "DENY", url
        assert response["X-Content-Type-Options"] == "nosniff", url
        assert response["Referrer-Policy"] == "same-origin", url
        assert response["Cross-Origin-Opener-Policy"] == "same-origin", url


def test_a_post_without_the_csrf_token_is_refused(fleet: Fleet) -> None:
    # given: a signed-in admin whose browser enforces nothing: Django must
    client = Client(enforce_csrf_checks=True)
    client.force_login(fleet.tenant.admin)
    url = f"/org/{fleet.slug}/devices/{fleet.device.pk}/action/"
    # when: a forged form (another site's page posting with the user's cookies)
    forged = client.post(url, {"action": "set_tags", "tags": "forged"})
    # then
    assert forged.status_code == 403
    assert Device.objects.get(pk=fleet.device.pk).tags == ["beta"]
    # and the hub's own form, with the token from the page, goes through
    client.get(f"/org/{fleet.slug}/devices/{fleet.device.pk}/")
    token = client.cookies["csrftoken"].value
    genuine = client.post(url, {"action": "set_tags", "tags": "genuine", "csrfmiddlewaretoken": token})
    assert genuine.status_code == 302
    assert Device.objects.get(pk=fleet.device.pk).tags == ["genuine"]


def _row_text(model: Any, pk: int) -> str:
    """Every column of one row as the database returns it."""
    table, column = model._meta.db_table, model._meta.pk.column
    with connection.cursor() as cursor:
        cursor.execute(f'SELECT * FROM "{table}" WHERE "{column}" = %s', [pk])
        return repr(cursor.fetchone())


def test_no_secret_is_stored_in_the_clear(fleet: Fleet) -> None:
    # given: every kind of secret the hub issues
    admin = fleet.tenant.admin
    token = tenancy.create_api_token(admin, admin, "ci")
    product_row, product_secret = devices.create_product_secret(admin, fleet.tenant.product)
    device_row, device_secret = devices.create_device_secret(admin, fleet.device)
    endpoint = webhooks.create_endpoint(admin, fleet.tenant.org, "https://hooks.example.com/in", ["device.online"])
    stored = {
        token.clear: _row_text(APIToken, token.token.pk),
        product_secret.secret: _row_text(ProductSharedSecret, product_row.pk),
        device_secret.secret: _row_text(DeviceSharedSecret, device_row.pk),
        endpoint.secret: _row_text(WebhookEndpoint, endpoint.endpoint.pk),
    }
    # then: none of them is in its row, nor in the audit log
    audit_text = repr(list(fleet.tenant.org.audit_events.values_list("details", "subject")))
    for clear, row in stored.items():
        assert len(clear) >= 32
        assert clear not in row
        assert clear not in audit_text
    # and what is stored still opens: the sealed secrets unseal to the issued ones
    assert unseal(ProductSharedSecret.objects.get(pk=product_row.pk).secret_sealed) == product_secret.secret
    assert tenancy.authenticate_api_token(token.clear) is not None
