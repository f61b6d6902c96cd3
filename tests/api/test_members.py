"""/api/v1 members and invitations: the admin's operations, the last admin
kept, and refusals for an outsider, a lesser role and a removed member."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User

from nerveshub.tenancy.models import AuditEvent, Membership, Role
from tests.api.conftest import ApiClient, api_for
from tests.conftest import Tenant

pytestmark = pytest.mark.django_db

MEMBERS = "/orgs/acme/members"


def test_it_lists_adds_changes_and_removes_members(tenant: Tenant, as_admin: ApiClient) -> None:
    # given
    User.objects.create_user("newcomer", "new@example.com", "pw")
    # when
    added = as_admin.post(MEMBERS, {"user": "new@example.com", "role": "view"})
    changed = as_admin.patch(MEMBERS + "/newcomer", {"role": "manage"})
    listed = as_admin.get(MEMBERS)
    removed = as_admin.delete(MEMBERS + "/newcomer")
    # then
    assert added.status_code == 201 and added.json() == {
        "username": "newcomer",
        "email": "new@example.com",
        "role": "view",
    }
    assert changed.status_code == 200 and changed.json()["role"] == "manage"
    assert {"username": "newcomer", "email": "new@example.com", "role": "manage"} in listed.json()
    assert removed.status_code == 204
    assert not Membership.objects.filter(user__username="newcomer").exists()
    actions = list(AuditEvent.objects.filter(actor_user=tenant.admin).values_list("action", flat=True))
    assert {"member.added", "member.role_changed", "member.removed"} <= set(actions)


def test_it_invites_by_e_mail_address(tenant: Tenant, as_admin: ApiClient) -> None:
    answer = as_admin.post("/orgs/acme/invitations", {"email": "friend@example.com", "role": "manage"})
    assert answer.status_code == 201
    assert answer.json()["role"] == "manage" and "/invitations/" in answer.json()["invite_url"]
    assert as_admin.post("/orgs/acme/invitations", {"email": "not an address", "role": "view"}).status_code == 422


def test_it_refuses_what_cannot_be_done(tenant: Tenant, as_admin: ApiClient) -> None:
    assert as_admin.post(MEMBERS, {"user": "nobody", "role": "view"}).status_code == 404
    assert as_admin.post(MEMBERS, {"user": "victor", "role": "view"}).status_code == 409
    assert as_admin.post(MEMBERS, {"user": "victor", "role": "owner"}).status_code == 422
    assert as_admin.patch(MEMBERS + "/nobody", {"role": "view"}).status_code == 404
    # the last admin can neither be demoted nor removed
    demoted = as_admin.patch(MEMBERS + "/alice", {"role": "view"})
    assert demoted.status_code == 409 and "admin" in demoted.json()["errors"]["detail"]
    assert as_admin.delete(MEMBERS + "/alice").status_code == 409
    assert Membership.objects.get(user=tenant.admin, org=tenant.org).role == Role.ADMIN


def test_a_second_admin_may_be_demoted_then_the_first_is_last_again(tenant: Tenant, as_admin: ApiClient) -> None:
    assert as_admin.patch(MEMBERS + "/victor", {"role": "admin"}).status_code == 200
    assert as_admin.patch(MEMBERS + "/alice", {"role": "manage"}).status_code == 200
    victor = api_for(tenant.viewer)
    assert victor.delete(MEMBERS + "/victor").status_code == 409


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("post", MEMBERS, {"user": "oscar", "role": "admin"}),
        ("patch", MEMBERS + "/victor", {"role": "admin"}),
        ("delete", MEMBERS + "/victor", None),
        ("post", "/orgs/acme/invitations", {"email": "x@example.com", "role": "admin"}),
    ],
)
def test_changes_need_the_admin_role(tenant: Tenant, method: str, path: str, body: dict[str, str] | None) -> None:
    # given: a manager, a viewer, an outsider, and an admin who was removed
    removed_admin = User.objects.create_user("former", "former@example.com", "pw")
    Membership.objects.create(org=tenant.org, user=removed_admin, role=Role.ADMIN)
    removed = api_for(removed_admin)
    Membership.objects.filter(user=removed_admin).delete()
    before = list(Membership.objects.order_by("pk").values_list("user_id", "role"))

    def call(client: ApiClient) -> int:
        if method == "delete":
            return int(client.delete(path).status_code)
        return int(getattr(client, method)(path, body).status_code)

    # when / then
    assert call(api_for(tenant.manager)) == 403
    assert call(api_for(tenant.viewer)) == 403
    assert call(api_for(tenant.outsider)) == 404
    assert call(removed) == 404
    assert list(Membership.objects.order_by("pk").values_list("user_id", "role")) == before


def test_members_are_listed_to_viewers_only_of_the_organization(tenant: Tenant) -> None:
    assert api_for(tenant.viewer).get(MEMBERS).status_code == 200
    assert api_for(tenant.outsider).get(MEMBERS).status_code == 404
