"""One look: the hub's pages and its admin carry the hub's name and icon."""

from __future__ import annotations

import pytest
from django.test import Client

from tests.conftest import Tenant
from tests.web.conftest import client_for

pytestmark = pytest.mark.django_db


def test_pages_and_admin_carry_the_hubs_name_and_icon(tenant: Tenant) -> None:
    # given
    operator = client_for(tenant.admin)
    # when
    pages = [operator.get("/org/acme/").content.decode(), operator.get("/admin/").content.decode()]
    pages.append(Client().get("/accounts/login/").content.decode())
    # then
    for page in pages:
        assert 'rel="icon" href="/static/web/favicon.svg"' in page
        assert "Django administration" not in page and "Django site admin" not in page
