"""Every page under /accounts/ (and the invitation pages) is the hub's own, in
its look, never Django's admin look: walked from the URL list, so a new
account page is checked without being named here. Each is fetched by an
anonymous visitor, by a signed-in person, and half-way through a two-factor
sign-in, following redirects."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from django.core import mail
from django.core.cache import caches
from django.test import Client
from django.urls import URLPattern

from nerveshub.tenancy import twofactor
from nerveshub.web import cli_sessions, services
from nerveshub.web.urls import account_patterns
from tests.conftest import Tenant
from tests.support.totp import totp
from tests.web.conftest import client_for

pytestmark = pytest.mark.django_db

HUB_LOOK = '<a class="brand" href="/">NervesHub</a>'


@pytest.fixture(autouse=True)
def fresh_counts() -> Iterator[None]:
    caches["default"].clear()
    yield
    caches["default"].clear()


def _reset_link(client: Client) -> str:
    client.post("/accounts/password/reset/", {"email": "victor@example.com"})
    found = re.search(r"http://testserver(/accounts/password/reset/\S+/)", str(mail.outbox[-1].body))
    assert found is not None
    return found.group(1)


def _account_urls(client: Client) -> list[str]:
    started = cli_sessions.start_cli_session("look", "127.0.0.1")
    urls = []
    for pattern in account_patterns:
        assert isinstance(pattern, URLPattern)
        route = str(pattern.pattern)
        route = route.replace("<uidb64>/<token>/", _reset_link(client).removeprefix("/accounts/password/reset/"))
        route = route.replace("<str:public_id>", started.session.public_id).replace("<int:pk>", "1")
        assert "<" not in route, f"add a sample argument for {route}"
        urls.append("/accounts/" + route)
    # Signing out last: the signed-in visitor stays signed in for the others.
    urls += ["/accounts/no-such-page/", "/invitations/no-such-token/"]
    return sorted(urls, key=lambda url: url == "/accounts/logout/")


def _visitors(tenant: Tenant) -> dict[str, Client]:
    signed_in = client_for(tenant.admin)
    device = twofactor.start_totp_setup(tenant.viewer)
    twofactor.confirm_totp_setup(tenant.viewer, totp(twofactor.totp_secret(device)))
    half_way = Client()
    assert half_way.post("/accounts/login/", {"username": "victor", "password": "pw-victor"}).status_code == 302
    return {"anonymous": Client(), "signed in": signed_in, "half-way through two-factor": half_way}


def test_no_account_page_is_in_the_admins_look(tenant: Tenant) -> None:
    invitation = services.create_invitation(tenant.admin, tenant.org, "view")
    checked = 0
    for who, client in _visitors(tenant).items():
        for url in [f"/invitations/{invitation.clear}/", *_account_urls(Client())]:
            for method in ("get", "post"):
                response = getattr(client, method)(url, follow=True)
                if who == "signed in" and url != "/accounts/logout/":
                    assert response.wsgi_request.user.is_authenticated, url
                if response.status_code == 405:
                    continue  # no page: Django's empty "method not allowed"
                page = response.content.decode()
                assert "Django administration" not in page, (who, method, url)
                if response["Content-Type"].startswith("text/html"):
                    assert HUB_LOOK in page, (who, method, url, response.status_code)
                checked += 1
    assert checked > 40


def test_error_pages_are_in_the_hubs_look(tenant: Tenant) -> None:
    response = client_for(tenant.viewer).get("/org/acme/settings/")
    assert response.status_code == 403 and HUB_LOOK in response.content.decode()
    assert "needs the Admin role" in response.content.decode()
    response = client_for(tenant.outsider).get("/org/acme/")
    assert response.status_code == 404 and HUB_LOOK in response.content.decode()
