"""Creating an organization (hub operators) and renaming it (its admins), with
the refusals: a non-superuser creating, a manager or viewer renaming, an
outsider, a removed member; and names the pages refuse beside the field."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied, ValidationError
from django.test import Client

from nerveshub.tenancy import services as tenancy
from nerveshub.tenancy.models import AuditEvent, Membership, Organization, Role
from tests.conftest import Tenant
from tests.web.conftest import client_for

pytestmark = pytest.mark.django_db


@pytest.fixture
def operator(tenant: Tenant) -> User:
    return User.objects.create_superuser("root", "root@example.com", "pw-root")


def test_it_creates_an_organization_whose_creator_is_its_admin(operator: User) -> None:
    client = client_for(operator)
    # given: the list offers it to a hub operator
    assert b'href="/orgs/new/"' in client.get("/").content
    # when
    response = client.post("/orgs/new/", {"name": "  Initech   Labs "})
    # then: the name tidied, the creator its admin, audited, and its dashboard next
    assert response.status_code == 302 and response["Location"] == "/org/initech-labs/"
    org = Organization.objects.get(name="Initech Labs")
    assert Membership.objects.get(org=org, user=operator).role == Role.ADMIN
    created = AuditEvent.objects.get(action="org.created", org=org)
    assert created.actor_user == operator and created.details == {"name": "Initech Labs", "slug": "initech-labs"}
    assert client.get("/org/initech-labs/").status_code == 200


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("", "This field is required."),
        ("ACME", "Another organization has this name."),
        ("Acme!", "Another organization&#x27;s address is /org/acme/ already"),
        ("!!!", "The name needs a letter or digit"),
        ("x" * 101, "at most 100 characters"),
    ],
)
def test_it_shows_why_a_name_is_refused_beside_the_field(operator: User, name: str, reason: str) -> None:
    response = client_for(operator).post("/orgs/new/", {"name": name})
    assert response.status_code == 400
    page = response.content.decode()
    assert reason in page
    # beside the field: Django's error list comes right before the input
    assert page.index(reason) < page.index('name="name"')
    assert Organization.objects.count() == 2


def test_only_hub_operators_create_organizations(tenant: Tenant) -> None:
    # an org admin is not a hub operator
    client = client_for(tenant.admin)
    assert client.get("/orgs/new/").status_code == 403
    assert client.post("/orgs/new/", {"name": "Rogue"}).status_code == 403
    assert b"/orgs/new/" not in client.get("/").content
    assert Client().post("/orgs/new/", {"name": "Rogue"})["Location"].startswith("/accounts/login/")
    with pytest.raises(PermissionDenied):
        tenancy.create_organization(tenant.admin, "Rogue")
    assert not Organization.objects.filter(name="Rogue").exists()


def test_an_admin_renames_the_organization_and_the_old_address_is_gone(tenant: Tenant) -> None:
    client = client_for(tenant.admin)
    # given
    assert b'href="/org/acme/settings/"' in client.get("/org/acme/").content
    # when
    response = client.post("/org/acme/settings/", {"name": "Acme Robotics"}, follow=True)
    # then: the page moved with the name and says so
    assert response.redirect_chain[-1][0] == "/org/acme-robotics/settings/"
    assert "links to /org/acme/ no longer work" in response.content.decode()
    assert client.get("/org/acme/").status_code == 404
    assert client.get("/org/acme-robotics/").status_code == 200
    event = AuditEvent.objects.get(action="org.renamed")
    assert event.org_id == tenant.org.pk and event.actor_user == tenant.admin
    assert event.details == {
        "from": "acme",
        "to": "Acme Robotics",
        "old_slug": "acme",
        "new_slug": "acme-robotics",
        "old_addresses": "answer 404",
    }


def test_a_rename_to_the_same_name_changes_nothing(tenant: Tenant) -> None:
    response = client_for(tenant.admin).post("/org/acme/settings/", {"name": "acme"})
    assert response.status_code == 302
    assert not AuditEvent.objects.filter(action="org.renamed").exists()


def test_a_rename_refused_shows_why_beside_the_field(tenant: Tenant) -> None:
    response = client_for(tenant.admin).post("/org/acme/settings/", {"name": "Globex"})
    assert response.status_code == 400 and "Another organization has this name." in response.content.decode()
    assert Organization.objects.get(pk=tenant.org.pk).name == "acme"


@pytest.mark.parametrize("who", ["manager", "viewer"])
def test_lesser_roles_may_not_rename(tenant: Tenant, who: str) -> None:
    user = getattr(tenant, who)
    client = client_for(user)
    assert client.get("/org/acme/settings/").status_code == 403
    assert client.post("/org/acme/settings/", {"name": "Hijacked"}).status_code == 403
    assert b"/org/acme/settings/" not in client.get("/org/acme/").content
    with pytest.raises(PermissionDenied):
        tenancy.rename_organization(user, tenant.org, "Hijacked")
    assert Organization.objects.get(pk=tenant.org.pk).name == "acme"


def test_an_outsider_and_a_removed_member_get_404(tenant: Tenant) -> None:
    # the outsider is admin of globex, not of acme
    assert client_for(tenant.outsider).post("/org/acme/settings/", {"name": "Mine"}).status_code == 404
    # an admin removed from the org
    other_admin = User.objects.create_user("ada", "ada@example.com", "pw-ada")
    tenancy.set_membership("test", tenant.org, other_admin, Role.ADMIN)
    client = client_for(other_admin)
    assert client.get("/org/acme/settings/").status_code == 200
    tenancy.remove_member(tenant.admin, Membership.objects.get(org=tenant.org, user=other_admin))
    assert client.post("/org/acme/settings/", {"name": "Mine"}).status_code == 404
    with pytest.raises(PermissionDenied):
        tenancy.rename_organization(other_admin, tenant.org, "Mine")
    assert Organization.objects.get(pk=tenant.org.pk).name == "acme"


def test_the_service_refuses_a_name_another_org_would_share_an_address_with(tenant: Tenant) -> None:
    with pytest.raises(ValidationError) as refused:
        tenancy.rename_organization(tenant.admin, tenant.org, "GLOBEX!")
    assert "name" in refused.value.message_dict
