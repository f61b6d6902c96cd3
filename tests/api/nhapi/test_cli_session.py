"""Browser-approved sign-in: the tool starts a session and polls it, the person
approves on the session's page while signed in, the tool receives a token once."""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from urllib.parse import urlparse

import pytest
from django.test import Client
from django.utils import timezone

from nerveshub.tenancy.models import AuditEvent
from nerveshub.web.models import CliSession
from tests.api.nhapi.conftest import Tool
from tests.conftest import Tenant

pytestmark = pytest.mark.django_db


def _start(tool: Tool) -> dict[str, Any]:
    answer = tool.post("/auth/cli_session", {"note": "laptop"})
    assert answer.status_code == 201, answer.content
    return dict(answer.json()["data"])


def _browser(tenant: Tenant) -> Client:
    browser = Client()
    browser.force_login(tenant.admin)
    return browser


def test_an_approved_session_hands_over_a_token_once(tenant: Tenant) -> None:
    # given
    tool = Tool(Client(), None)
    started = _start(tool)
    page = urlparse(started["url"]).path
    # when
    waiting = tool.get("/auth/cli_session/" + started["token"])
    shown = _browser(tenant).get(page)
    approved = _browser(tenant).post(page, {"action": "approve"})
    ready = tool.get("/auth/cli_session/" + started["token"])
    again = tool.get("/auth/cli_session/" + started["token"])
    # then
    assert waiting.json() == {"data": {"status": "waiting", "user_token": None}}
    assert shown.status_code == 200 and started["confirmation_code"] in shown.content.decode()
    assert approved.status_code == 302
    token = ready.json()["data"]["user_token"]
    assert ready.json()["data"]["status"] == "ready" and token.startswith("nhu_")
    assert Tool(Client(), token).get("/users/me").json()["data"]["username"] == "alice"
    assert again.status_code == 404
    assert AuditEvent.objects.filter(action="cli_session.approved", actor_user=tenant.admin).count() == 1


def test_a_session_needs_a_signed_in_person_and_can_be_refused(tenant: Tenant) -> None:
    tool = Tool(Client(), None)
    started = _start(tool)
    page = urlparse(started["url"]).path
    anonymous = Client().post(page, {"action": "approve"})
    refused = _browser(tenant).post(page, {"action": "deny"})
    assert anonymous.status_code == 302 and "/accounts/login/" in anonymous["location"]
    assert refused.status_code == 302
    assert tool.get("/auth/cli_session/" + started["token"]).status_code == 404
    assert _browser(tenant).get(page).status_code == 404


def test_expired_and_unknown_sessions_are_404(tenant: Tenant) -> None:
    tool = Tool(Client(), None)
    started = _start(tool)
    CliSession.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    assert tool.get("/auth/cli_session/" + started["token"]).status_code == 404
    assert _browser(tenant).post(urlparse(started["url"]).path, {"action": "approve"}).status_code == 404
    assert tool.get("/auth/cli_session/nhcs_guess").status_code == 404
    assert not CliSession.objects.filter(approved_at__isnull=False).exists()


def test_starting_and_polling_are_rate_limited(tenant: Tenant, settings: Any) -> None:
    settings.CLI_SESSION_START_LIMIT = 2
    settings.CLI_SESSION_POLL_LIMIT = 3
    tool = Tool(Client(), None)
    started = [tool.post("/auth/cli_session", {}) for _ in range(3)]
    token = started[0].json()["data"]["token"]
    polls = [tool.get("/auth/cli_session/" + token) for _ in range(4)]
    assert [a.status_code for a in started] == [201, 201, 429]
    assert [a.status_code for a in polls] == [200, 200, 200, 429]
    assert "try again" in polls[-1].json()["errors"]["detail"]
