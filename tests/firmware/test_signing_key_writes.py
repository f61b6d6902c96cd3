"""One write path for signing keys: the API, the org page and the admin add a
key through services.create_signing_key, so each add is audited once, under
one action name."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from firmware.models import SigningKey
from nerveshub.tenancy.models import AuditEvent
from nerveshub.web.access import org_slug
from tests.api.conftest import api_for
from tests.support.fwup import generate_keypair

pytestmark = pytest.mark.django_db


def test_each_adapter_audits_an_added_key_exactly_once(tenant: Any) -> None:
    # given
    keys = {via: generate_keypair().public for via in ("api", "page", "admin")}
    client = Client()
    client.force_login(tenant.admin)
    # when
    api = api_for(tenant.admin).post("/orgs/acme/keys", {"name": "from-api", "key": keys["api"]})
    page = client.post(f"/org/{org_slug(tenant.org)}/keys/", {"name": "from-page", "key": keys["page"]})
    admin = client.post(
        reverse("admin:firmware_signingkey_add"), {"org": tenant.org.pk, "name": "from-admin", "key": keys["admin"]}
    )
    # then
    assert (api.status_code, page.status_code, admin.status_code) == (201, 302, 302)
    added = SigningKey.objects.get(name="from-admin")
    assert added.created_by == tenant.admin
    events = AuditEvent.objects.filter(subject_type="signingkey").order_by("id")
    assert [(e.action, e.subject) for e in events] == [
        ("signing_key.created", "acme/from-api"),
        ("signing_key.created", "acme/from-page"),
        ("signing_key.created", "acme/from-admin"),
    ]
