from __future__ import annotations

import json
from io import StringIO

import pytest
from django.contrib.auth import authenticate
from django.core.management import call_command

from devices.models import ProductSharedSecret
from nerveshub.lib.sealed import unseal
from nerveshub.tenancy.models import AuditEvent, Membership, Role


def _bootstrap(*args: str) -> dict[str, str]:
    out = StringIO()
    call_command("bootstrap", *args, stdout=out)
    answer: dict[str, str] = json.loads(out.getvalue())
    return answer


@pytest.mark.django_db
def test_it_creates_everything_and_prints_one_json_object() -> None:
    # when
    result = _bootstrap("--org", "acme", "--product", "widget")
    # then
    assert set(result) == {"org", "product", "product_key", "product_secret", "admin_username", "admin_password"}
    assert result["product_key"].startswith("nhp_") and len(result["product_key"]) == 47
    assert authenticate(username=result["admin_username"], password=result["admin_password"]) is not None
    secret = ProductSharedSecret.objects.get(key=result["product_key"])
    assert unseal(secret.secret_sealed) == result["product_secret"]
    assert result["product_secret"] not in secret.secret_sealed
    assert Membership.objects.get(user__username="admin").role == Role.ADMIN
    assert AuditEvent.objects.filter(action="product_secret.created").count() == 1


@pytest.mark.django_db
def test_it_reuses_what_exists_and_omits_the_password() -> None:
    first = _bootstrap("--org", "acme", "--product", "widget")
    second = _bootstrap("--org", "acme", "--product", "widget")
    assert "admin_password" not in second
    assert second["product_key"] == first["product_key"]
    assert second["product_secret"] == first["product_secret"]
    assert ProductSharedSecret.objects.count() == 1
