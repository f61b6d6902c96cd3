"""One write path for a CA's settings: the API and the admin's change page are
adapters over services.update_ca_certificate, so each change is checked by the
same rule and audited exactly once."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.test import Client
from django.urls import reverse

from certificates import pki, services
from nerveshub.tenancy.models import AuditEvent
from tests.api.conftest import api_for
from tests.certificates.proof import register_ca

pytestmark = pytest.mark.django_db


def test_each_adapter_audits_a_ca_change_exactly_once(tenant: Any, device_ca: pki.Issued) -> None:
    # given
    ca = register_ca("test", tenant.org, device_ca, description="factory")
    client = Client()
    client.force_login(tenant.admin)
    form = {"description": "from the admin", "check_expiration": "on", "jitp_tags": "[]", "jitp_description": ""}
    # when
    api = api_for(tenant.admin).patch(f"/orgs/acme/ca_certificates/{ca.ski}", {"description": "from the api"})
    admin = client.post(reverse("admin:certificates_cacertificate_change", args=[ca.pk]), form)
    # then
    assert (api.status_code, admin.status_code) == (200, 302)
    ca.refresh_from_db()
    assert ca.description == "from the admin"
    events = AuditEvent.objects.filter(action="ca_certificate.changed").order_by("id")
    assert [(e.details["via"], e.details.get("description")) for e in events] == [
        ("api", "from the api"),
        ("admin", "from the admin"),
    ]


def test_it_refuses_a_jitp_product_of_another_org_by_the_same_rule(
    tenant: Any, other_tenant: Any, device_ca: pki.Issued
) -> None:
    # given
    ca = register_ca("test", tenant.org, device_ca)
    client = Client()
    client.force_login(tenant.admin)
    form = {"description": "", "jitp_product": other_tenant.product.pk, "jitp_tags": "[]", "jitp_description": ""}
    # when: the admin offers only the org's products; the service refuses a foreign one itself
    admin = client.post(reverse("admin:certificates_cacertificate_change", args=[ca.pk]), form)
    with pytest.raises(ValidationError) as refused:
        services.update_ca_certificate("test", ca, {"jitp_product": other_tenant.product}, via="test")
    # then
    assert admin.status_code == 200
    assert refused.value.message_dict == {"jitp_product": ["The JITP product must belong to the CA's organization."]}
    ca.refresh_from_db()
    assert ca.jitp_product is None
    assert not AuditEvent.objects.filter(action="ca_certificate.changed").exists()
