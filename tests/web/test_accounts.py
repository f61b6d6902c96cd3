from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from nerveshub.tenancy import services as tenancy
from nerveshub.tenancy.models import APIToken, AuditEvent, Membership, Role
from nerveshub.web import services
from nerveshub.web.access import org_slug
from nerveshub.web.models import Invitation
from tests.conftest import Tenant
from tests.web.conftest import client_for

pytestmark = pytest.mark.django_db


def test_it_logs_in_and_out(tenant: Tenant) -> None:
    client = Client()
    # given: an anonymous visitor is sent to the login page
    response = client.get(f"/org/{org_slug(tenant.org)}/")
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")
    # when
    response = client.post("/accounts/login/", {"username": "victor", "password": "pw-victor"})
    # then: one org, so home goes straight to its dashboard
    assert response.status_code == 302
    assert client.get("/", follow=True).redirect_chain[-1][0] == f"/org/{org_slug(tenant.org)}/"
    assert client.post("/accounts/logout/").status_code == 302
    assert client.get("/").status_code == 302


def test_it_refuses_a_wrong_password(tenant: Tenant) -> None:
    response = Client().post("/accounts/login/", {"username": "victor", "password": "nope"})
    assert response.status_code == 200
    assert b"correct username and password" in response.content


def test_it_resets_a_password_by_email_on_the_hubs_own_pages(tenant: Tenant, mailoutbox: list[Any]) -> None:
    client = Client()
    form = client.get("/accounts/password/reset/").content.decode()
    assert "Reset your password" in form and "Django administration" not in form
    sent = client.post("/accounts/password/reset/", {"email": "victor@example.com"}, follow=True).content.decode()
    assert "Django administration" not in sent
    assert len(mailoutbox) == 1
    link = re.search(r"http://testserver(/accounts/password/reset/\S+/)", mailoutbox[0].body)
    assert link is not None
    response = client.get(link.group(1), follow=True)
    assert "Choose a new password" in response.content.decode()
    form_url = response.redirect_chain[-1][0]
    response = client.post(form_url, {"new_password1": "a-new-long-pass-42", "new_password2": "a-new-long-pass-42"})
    assert response.status_code == 302
    assert Client().login(username="victor", password="a-new-long-pass-42")


def test_the_switcher_lists_every_org_of_the_user(tenant: Tenant, other_tenant: Tenant) -> None:
    tenancy.set_membership("test", other_tenant.org, tenant.viewer, Role.VIEW)
    response = client_for(tenant.viewer).get("/")
    assert response.status_code == 200
    assert b"/org/acme/" in response.content and b"/org/globex/" in response.content


def test_it_creates_shows_once_and_revokes_api_tokens(tenant: Tenant) -> None:
    client = client_for(tenant.viewer)
    response = client.post("/accounts/tokens/", {"note": "CI"})
    clear = re.search(rb"(nhu_[A-Za-z0-9_-]+)", response.content)
    assert clear is not None
    assert tenancy.authenticate_api_token(clear.group(1).decode()) is not None
    # shown once: the list shows the prefix only
    assert clear.group(1) not in client.get("/accounts/tokens/").content
    token = APIToken.objects.get(user=tenant.viewer)
    assert client.post(f"/accounts/tokens/{token.pk}/revoke/").status_code == 302
    assert tenancy.authenticate_api_token(clear.group(1).decode()) is None
    assert AuditEvent.objects.filter(action="api_token.revoked").exists()


def test_it_refuses_to_revoke_another_users_token(tenant: Tenant) -> None:
    issued = tenancy.create_api_token("test", tenant.admin, "theirs")
    response = client_for(tenant.viewer).post(f"/accounts/tokens/{issued.token.pk}/revoke/")
    assert response.status_code == 404
    assert APIToken.objects.get(pk=issued.token.pk).revoked_at is None


def _invite(tenant: Tenant, role: str = "manage") -> str:
    response = client_for(tenant.admin).post(
        f"/org/{org_slug(tenant.org)}/members/", {"role": role, "email": "new@example.com"}
    )
    assert response.status_code == 200
    link = re.search(rb"http://testserver(/invitations/nhi_[A-Za-z0-9_:-]+/)", response.content)
    assert link is not None
    return link.group(1).decode()


def test_an_invited_person_signs_up_and_joins_once(tenant: Tenant) -> None:
    # given
    link = _invite(tenant)
    newcomer = Client()
    # when
    response = newcomer.post(
        link,
        {"username": "nina", "email": "nina@example.com", "password1": "Long-pass-9876", "password2": "Long-pass-9876"},
    )
    # then
    assert response.status_code == 302
    nina = User.objects.get(username="nina")
    assert Membership.objects.get(org=tenant.org, user=nina).role == Role.MANAGE
    assert AuditEvent.objects.filter(action="invitation.accepted", org=tenant.org).count() == 1
    # single use: the same link refuses a second person
    other = User.objects.create_user("olga", password="x")
    assert client_for(other).post(link).status_code == 404
    assert not Membership.objects.filter(user=other).exists()


def test_a_signed_in_user_accepts_with_one_click(tenant: Tenant, other_tenant: Tenant) -> None:
    link = _invite(tenant, "view")
    response = client_for(tenant.outsider).post(link)
    assert response.status_code == 302
    assert Membership.objects.get(org=tenant.org, user=tenant.outsider).role == Role.VIEW


def test_an_expired_or_revoked_invitation_is_refused(tenant: Tenant) -> None:
    issued = services.create_invitation(tenant.admin, tenant.org, Role.VIEW)
    Invitation.objects.filter(pk=issued.invitation.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert client_for(tenant.outsider).post(f"/invitations/{issued.clear}/").status_code == 404
    issued = services.create_invitation(tenant.admin, tenant.org, Role.VIEW)
    client_for(tenant.admin).post(f"/org/acme/invitations/{issued.invitation.pk}/revoke/")
    assert client_for(tenant.outsider).post(f"/invitations/{issued.clear}/").status_code == 404
    assert client_for(tenant.outsider).get("/invitations/nhi_made-up/").status_code == 404
    # a signed token whose secret has no row, and a tampered signature
    forged = services._SIGNER.sign("nhi_" + "x" * 43)
    assert client_for(tenant.outsider).get(f"/invitations/{forged}/").status_code == 404
    assert client_for(tenant.outsider).get(f"/invitations/{issued.clear[:-2]}xx/").status_code == 404
    assert not Membership.objects.filter(org=tenant.org, user=tenant.outsider).exists()


def test_only_an_admin_invites(tenant: Tenant) -> None:
    response = client_for(tenant.manager).post("/org/acme/members/", {"role": "admin"})
    assert response.status_code == 403
    assert not Invitation.objects.exists()


def test_an_admin_changes_a_role_and_removes_a_member_with_audit(tenant: Tenant) -> None:
    client = client_for(tenant.admin)
    membership = Membership.objects.get(org=tenant.org, user=tenant.viewer)
    assert client.post(f"/org/acme/members/{membership.pk}/role/", {"role": "manage"}).status_code == 302
    membership.refresh_from_db()
    assert membership.role == Role.MANAGE
    assert client.post(f"/org/acme/members/{membership.pk}/remove/").status_code == 302
    assert not Membership.objects.filter(pk=membership.pk).exists()
    actions = set(AuditEvent.objects.filter(org=tenant.org).values_list("action", flat=True))
    assert {"member.role_changed", "member.removed"} <= actions


def test_the_last_admin_stays(tenant: Tenant) -> None:
    client = client_for(tenant.admin)
    own = Membership.objects.get(org=tenant.org, user=tenant.admin)
    client.post(f"/org/acme/members/{own.pk}/role/", {"role": "view"})
    client.post(f"/org/acme/members/{own.pk}/remove/")
    own.refresh_from_db()
    assert own.role == Role.ADMIN


def test_members_changes_are_refused_to_a_manager(tenant: Tenant) -> None:
    client = client_for(tenant.manager)
    membership = Membership.objects.get(org=tenant.org, user=tenant.viewer)
    assert client.post(f"/org/acme/members/{membership.pk}/role/", {"role": "admin"}).status_code == 403
    assert client.post(f"/org/acme/members/{membership.pk}/remove/").status_code == 403
    membership.refresh_from_db()
    assert membership.role == Role.VIEW


def test_an_operator_opens_every_org(tenant: Tenant, other_tenant: Tenant) -> None:
    operator = User.objects.create_superuser("root", "root@example.com", "pw-root")
    client = client_for(operator)
    response = client.get("/")
    assert b"/org/acme/" in response.content and b"/org/globex/" in response.content
    assert client.get("/org/globex/members/").status_code == 200


def test_an_account_made_from_an_invitation_keeps_the_invited_address(tenant: Tenant) -> None:
    # given: an invitation for new@example.com
    link = _invite(tenant)
    # when: the form is posted with another address
    Client().post(
        link,
        {
            "username": "nina",
            "email": "mallory@example.com",
            "password1": "Long-pass-9876",
            "password2": "Long-pass-9876",
        },
    )
    # then: the account has the invited address, and signs in with it
    assert User.objects.get(username="nina").email == "new@example.com"
    assert Client().login(username="new@EXAMPLE.com", password="Long-pass-9876")
    signed_up = AuditEvent.objects.get(action="user.signed_up")
    assert signed_up.details["email"] == "new@example.com"


def test_an_invitation_without_an_address_asks_for_an_unused_one(tenant: Tenant) -> None:
    # given: an open invitation, and an address another account has
    issued = services.create_invitation(tenant.admin, tenant.org, Role.VIEW)
    link = f"/invitations/{issued.clear}/"
    form = {"username": "nina", "password1": "Long-pass-9876", "password2": "Long-pass-9876"}
    # when / then: no address, another account's (in other case), a malformed one
    for email, error in (
        ("", b"This field is required"),
        ("Victor@EXAMPLE.com", b"Another account uses this e-mail address"),
        ("not an address", b"Enter a valid email address"),
    ):
        response = Client().post(link, {**form, "email": email})
        assert response.status_code == 400 and error in response.content, email
    assert not User.objects.filter(username="nina").exists()
    # and a free address makes the account
    assert Client().post(link, {**form, "email": "nina@Example.COM"}).status_code == 302
    assert User.objects.get(username="nina").email == "nina@example.com"


def test_it_signs_in_with_the_address_and_refuses_an_ambiguous_one(tenant: Tenant) -> None:
    # given: victor@example.com is victor's; twin@example.com names two accounts
    # (made by an operator in the admin, which does not hold the rule)
    for name in ("twin1", "twin2"):
        User.objects.create_user(name, email="twin@example.com", password="pw-twin")
    # when / then
    client = Client()
    response = client.post("/accounts/login/", {"username": "Victor@Example.com", "password": "pw-victor"})
    assert response.status_code == 302 and client.get("/").status_code in (200, 302)
    assert int(client.session["_auth_user_id"]) == User.objects.get(username="victor").pk
    assert Client().post("/accounts/login/", {"username": "twin@example.com", "password": "pw-twin"}).status_code == 200
    assert Client().post("/accounts/login/", {"username": "victor@example.com", "password": "nope"}).status_code == 200


def test_a_person_changes_their_address_with_their_password(tenant: Tenant) -> None:
    # given
    client = client_for(tenant.viewer)
    taken = tenant.admin.email
    # when / then: a wrong password, another account's address are refused
    response = client.post(
        "/accounts/settings/", {"change": "email", "email": "v@example.org", "current_password": "x"}
    )
    assert response.status_code == 400 and b"not your current password" in response.content
    response = client.post(
        "/accounts/settings/",
        {"change": "email", "email": taken.upper(), "current_password": "pw-" + tenant.viewer.username},
    )
    assert response.status_code == 400 and b"Another account uses" in response.content
    response = client.post(
        "/accounts/settings/",
        {"change": "email", "email": "v@Example.ORG", "current_password": "pw-" + tenant.viewer.username},
    )
    assert response.status_code == 302
    tenant.viewer.refresh_from_db()
    assert tenant.viewer.email == "v@example.org"
    event = AuditEvent.objects.get(action="user.email_changed")
    assert event.details["to"] == "v@example.org" and event.org is None


def test_a_person_changes_their_password_and_their_other_sessions_end(tenant: Tenant) -> None:
    # given: the person signed in twice
    name = tenant.viewer.username
    here, elsewhere = Client(), Client()
    for client in (here, elsewhere):
        assert client.login(username=name, password="pw-" + name)
    new = "A-long-new-pass-4711"
    # when: a wrong current password, a mismatch, a too-common one, then a good change
    for body, error in (
        ({"current_password": "x", "new_password1": new, "new_password2": new}, b"not your current password"),
        ({"current_password": "pw-" + name, "new_password1": new, "new_password2": new + "x"}, b"didn"),
        ({"current_password": "pw-" + name, "new_password1": "password", "new_password2": "password"}, b"too common"),
    ):
        response = here.post("/accounts/settings/", {"change": "password", **body})
        assert response.status_code == 400 and error in response.content, body
    response = here.post(
        "/accounts/settings/",
        {"change": "password", "current_password": "pw-" + name, "new_password1": new, "new_password2": new},
    )
    # then: this session goes on, the other one is signed out, only the new password works
    assert response.status_code == 302
    assert here.get("/accounts/settings/").status_code == 200
    assert elsewhere.get("/accounts/settings/").status_code == 302
    assert not Client().login(username=name, password="pw-" + name)
    assert Client().login(username=name, password=new)
    assert AuditEvent.objects.filter(action="user.password_changed", actor_user=tenant.viewer).count() == 1


def test_the_settings_page_needs_a_signed_in_person(tenant: Tenant) -> None:
    response = Client().get("/accounts/settings/")
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")
    response = Client().post("/accounts/settings/", {"change": "email", "email": "x@example.org"})
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")
    assert tenant.viewer.email != "x@example.org"
