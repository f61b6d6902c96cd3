"""Generated from the URL patterns: every org page refuses an outsider with 404
(also when the outsider names their own org and another org's object) and a
viewer's POST with 403. Then one refusal per view for the role just below the
one it needs."""

from __future__ import annotations

import pytest
from django.urls import URLPattern

from certificates import pki
from devices.services import create_product_secret
from firmware.models import SigningKey
from nerveshub.tenancy.models import Membership
from nerveshub.web import services
from nerveshub.web.access import org_slug
from nerveshub.web.urls import org_patterns
from tests.certificates.proof import register_ca
from tests.conftest import Tenant
from tests.support.fwup import generate_keypair
from tests.web.conftest import Fleet, client_for

pytestmark = pytest.mark.django_db

# Pages that only read: a POST is answered 405 before anything else.
READ_ONLY = {
    "dashboard",
    "devices",
    "device",
    "device_audit",
    "firmware_status",
    "firmware_detail",
    "firmware_download",
    "devices_deleted",
    "deployments",
    "deployment",
    "deployment_preview",
    "deployment_progress",
    "deployment_audit",
    "audit",
    "audit_chain",
    "audit_export",
    "live_counts",
}


def _pk_for(name: str, fleet: Fleet, objects: dict[str, int]) -> int | None:
    if name in ("product", "product_delete", "product_secret_new", "product_health"):
        return fleet.tenant.product.pk
    if name.startswith("device") and name != "device_bulk_tags":
        return fleet.device.pk
    if name.startswith("firmware_"):
        return fleet.firmware.pk
    if (name.startswith("deployment_") and name != "deployment_new") or name == "deployment":
        return fleet.deployment.pk
    return objects.get(name)


@pytest.fixture
def objects(fleet: Fleet) -> dict[str, int]:
    key = SigningKey.objects.create(org=fleet.tenant.org, name="k", key=generate_keypair().public)
    ca = register_ca("test", fleet.tenant.org, pki.create_ca("CA"), description="ca")
    member = Membership.objects.get(org=fleet.tenant.org, user=fleet.tenant.viewer)
    invitation = services.create_invitation(fleet.tenant.admin, fleet.tenant.org, "view").invitation
    secret, _ = create_product_secret("test", fleet.tenant.product)
    return {
        "product_secret_deactivate": secret.pk,
        "key_delete": key.pk,
        "certificate_delete": ca.pk,
        "certificate_verify": ca.pk,
        "member_role": member.pk,
        "member_remove": member.pk,
        "invitation_revoke": invitation.pk,
    }


def _urls(fleet: Fleet, objects: dict[str, int], slug: str) -> list[tuple[str, str, bool]]:
    urls = []
    for pattern in org_patterns:
        assert isinstance(pattern, URLPattern)
        name = pattern.name or ""
        route = str(pattern.pattern)
        if "<int:pk>" in route:
            pk = _pk_for(name, fleet, objects)
            assert pk is not None, f"no object for {name}: add it to the fixture"
            route = route.replace("<int:pk>", str(pk))
        urls.append((name, f"/org/{slug}/{route}", "<int:pk>" in str(pattern.pattern)))
    return urls


def test_every_org_url_is_covered(fleet: Fleet, objects: dict[str, int]) -> None:
    assert len(_urls(fleet, objects, fleet.slug)) == len(org_patterns) >= 27


def test_an_outsider_gets_404_everywhere(fleet: Fleet, objects: dict[str, int]) -> None:
    client = client_for(fleet.tenant.outsider)
    for name, url, _ in _urls(fleet, objects, fleet.slug):
        assert client.get(url).status_code == 404, f"GET {name}"
        assert client.post(url).status_code == 404, f"POST {name}"


def test_another_orgs_objects_are_404_under_ones_own_org(
    fleet: Fleet, other_tenant: Tenant, objects: dict[str, int]
) -> None:
    client = client_for(other_tenant.admin)
    for name, url, has_pk in _urls(fleet, objects, org_slug(other_tenant.org)):
        if has_pk:
            assert client.get(url).status_code in (404, 405), f"GET {name}"
            assert client.post(url).status_code in (404, 405), f"POST {name}"
            if name not in READ_ONLY:
                assert client.post(url).status_code == 404, f"POST {name}"


def test_a_viewer_is_refused_every_post(fleet: Fleet, objects: dict[str, int]) -> None:
    client = client_for(fleet.tenant.viewer)
    for name, url, _ in _urls(fleet, objects, fleet.slug):
        expected = 405 if name in READ_ONLY else 403
        assert client.post(url, {"action": "reboot", "role": "admin"}).status_code == expected, f"POST {name}"


def test_anonymous_visitors_are_sent_to_sign_in(fleet: Fleet, objects: dict[str, int]) -> None:
    from django.test import Client

    client = Client()
    for name, url, _ in _urls(fleet, objects, fleet.slug):
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith("/accounts/login/"), name


# One refusal per view that changes something: the role just below the one it needs.
REFUSALS = [
    ("manager", "post", "members/", {"role": "admin"}),
    ("manager", "post", "products/{product}/delete/", {}),
    ("manager", "post", "products/{product}/secrets/", {}),
    ("manager", "post", "products/secrets/{secret}/deactivate/", {}),
    ("viewer", "post", "products/", {"name": "x"}),
    ("viewer", "post", "products/{product}/", {"name": "x"}),
    ("manager", "post", "members/{member}/role/", {"role": "admin"}),
    ("manager", "post", "members/{member}/remove/", {}),
    ("manager", "post", "invitations/{invitation}/revoke/", {}),
    ("manager", "post", "keys/", {"name": "x", "key": "y"}),
    ("manager", "post", "keys/{key}/delete/", {}),
    ("manager", "post", "certificates/", {"description": "x", "pem": "y"}),
    ("manager", "post", "certificates/{ca}/delete/", {}),
    ("manager", "post", "certificates/{ca}/verify/", {"verification_pem": "y"}),
    ("viewer", "post", "devices/tags/", {"device": "1", "tags": "x", "operation": "add"}),
    ("viewer", "post", "devices/{device}/action/", {"action": "reboot"}),
    ("viewer", "post", "devices/{device}/update/", {"firmware": "x"}),
    ("viewer", "post", "firmware/", {}),
    ("viewer", "post", "firmware/{firmware}/delete/", {}),
    ("viewer", "get", "deployments/new/", {}),
    ("viewer", "post", "deployments/new/", {"name": "x"}),
    ("viewer", "get", "deployments/{deployment}/edit/", {}),
    ("viewer", "post", "deployments/{deployment}/action/", {"action": "activate"}),
    ("viewer", "get", "devices/new/", {}),
    ("viewer", "post", "devices/new/", {"identifier": "x"}),
    ("viewer", "post", "devices/{device}/delete/", {}),
    ("viewer", "post", "devices/{device}/restore/", {}),
    ("viewer", "post", "devices/{device}/move/", {"product": "1"}),
    ("viewer", "post", "products/{product}/health/", {}),
    ("viewer", "get", "firmware/{firmware}/download/", {}),
]


@pytest.mark.parametrize(("who", "method", "route", "data"), REFUSALS, ids=[r[2] + r[1] for r in REFUSALS])
def test_each_view_refuses_the_role_below(
    fleet: Fleet, objects: dict[str, int], who: str, method: str, route: str, data: dict[str, str]
) -> None:
    user = fleet.tenant.manager if who == "manager" else fleet.tenant.viewer
    url = f"/org/{fleet.slug}/" + route.format(
        member=objects["member_role"],
        invitation=objects["invitation_revoke"],
        key=objects["key_delete"],
        ca=objects["certificate_delete"],
        device=fleet.device.pk,
        firmware=fleet.firmware.pk,
        deployment=fleet.deployment.pk,
        product=fleet.tenant.product.pk,
        secret=objects["product_secret_deactivate"],
    )
    client = client_for(user)
    response = client.post(url, data) if method == "post" else client.get(url)
    assert response.status_code == 403
