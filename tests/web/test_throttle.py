"""Password guessing against the org sign-in page, the admin login and password
reset, from the attacker's side: a burst of wrong passwords locks the account
(even the right password is then refused), one address guessing across many
accounts is locked, reset requests are limited, and each lock is recorded where
an operator sees it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.cache import caches
from django.test import Client
from django.urls import reverse

from nerveshub.lib.clientaddr import client_address
from nerveshub.tenancy.models import AuditEvent

pytestmark = pytest.mark.django_db

LOGIN = "/accounts/login/"


@pytest.fixture(autouse=True)
def empty_throttle(settings: Any) -> Iterator[None]:
    # The counts outlive a test (Redis in the services run): start and end empty.
    settings.LOGIN_FAILURE_LIMIT = 10
    settings.LOGIN_ADDRESS_FAILURE_LIMIT = 25
    settings.LOGIN_LOCKOUT_SECONDS = 600
    caches["default"].clear()
    yield
    caches["default"].clear()


def _sign_in(client: Client, username: str, password: str, url: str = LOGIN) -> Any:
    return client.post(url, {"username": username, "password": password})


def test_thirty_wrong_passwords_lock_the_account_even_for_the_right_one(tenant: Any) -> None:
    # given
    attacker = Client(REMOTE_ADDR="203.0.113.7")
    # when: 30 guesses in a burst
    answers = [_sign_in(attacker, "alice", f"guess-{i}") for i in range(30)]
    # then: the first ones are plain refusals, from the tenth on the account is locked
    assert all(a.status_code == 200 for a in answers[:9])
    assert all(a.status_code == 429 for a in answers[9:]), [a.status_code for a in answers]
    assert "Too many failed sign-ins for this account" in answers[-1].content.decode()
    assert "Try again in 10 minutes" in answers[-1].content.decode()
    # and the owner, from another address, with the right password, is refused too
    owner = Client(REMOTE_ADDR="198.51.100.20")
    refused = _sign_in(owner, "alice", "pw-alice")
    assert refused.status_code == 429
    assert "_auth_user_id" not in owner.session


def test_the_lock_ends_when_the_window_passes(tenant: Any, settings: Any) -> None:
    # given: a lock that lasts one second
    settings.LOGIN_LOCKOUT_SECONDS = 1
    client = Client(REMOTE_ADDR="203.0.113.8")
    for i in range(10):
        _sign_in(client, "alice", f"guess-{i}")
    assert _sign_in(client, "alice", "pw-alice").status_code == 429
    # when: the window passes
    import time

    time.sleep(1.5)
    # then
    assert _sign_in(client, "alice", "pw-alice").status_code == 302


def test_one_address_guessing_across_accounts_is_locked(tenant: Any) -> None:
    # given: one address tries two passwords on each of many accounts (no
    # account reaches its own limit)
    attacker = Client(REMOTE_ADDR="203.0.113.9")
    names = [f"user{i}" for i in range(15)]
    answers = [_sign_in(attacker, name, f"guess-{j}") for name in names for j in range(2)]
    # then: past 25 failures the address is locked, whatever the account
    assert [a.status_code for a in answers[:24]] == [200] * 24
    assert answers[-1].status_code == 429
    assert "from your address" in answers[-1].content.decode()
    assert _sign_in(attacker, "victor", "pw-victor").status_code == 429
    # and another address still signs in
    assert _sign_in(Client(REMOTE_ADDR="198.51.100.21"), "victor", "pw-victor").status_code == 302


def test_the_admin_login_is_throttled_too(tenant: Any) -> None:
    attacker = Client(REMOTE_ADDR="203.0.113.10")
    for i in range(10):
        _sign_in(attacker, "alice", f"guess-{i}", "/admin/login/")
    refused = _sign_in(attacker, "alice", "pw-alice", "/admin/login/")
    assert "Too many failed sign-ins" in refused.content.decode()
    assert "_auth_user_id" not in attacker.session


def test_a_successful_sign_in_resets_the_account_count(tenant: Any) -> None:
    client = Client(REMOTE_ADDR="198.51.100.22")
    for i in range(9):
        _sign_in(client, "alice", f"typo-{i}")
    assert _sign_in(client, "alice", "pw-alice").status_code == 302
    client.logout()
    for i in range(9):
        assert _sign_in(client, "alice", f"typo-again-{i}").status_code == 200


def test_password_reset_requests_are_limited(tenant: Any, mailoutbox: list[Any]) -> None:
    # given
    attacker = Client(REMOTE_ADDR="203.0.113.11")
    url = reverse("web:password_reset")
    # when: 20 requests for one account
    answers = [attacker.post(url, {"email": "alice@example.com"}) for _ in range(20)]
    # then: five mails, the rest refused with a reason
    assert [a.status_code for a in answers[:5]] == [302] * 5
    assert all(a.status_code == 429 for a in answers[5:])
    assert "Too many password reset requests" in answers[-1].content.decode()
    assert len(mailoutbox) == 5
    # and the same address spraying other e-mail addresses is limited too
    sprayed = [attacker.post(url, {"email": f"x{i}@example.com"}).status_code for i in range(3)]
    assert sprayed == [429, 429, 429]


def test_a_lockout_is_recorded_for_the_operator(tenant: Any) -> None:
    # given
    attacker = Client(REMOTE_ADDR="203.0.113.12")
    for i in range(12):
        _sign_in(attacker, "alice", f"guess-{i}")
    # then: one audit event, naming the account and the address
    events = list(AuditEvent.objects.filter(action="login.locked_out"))
    assert len(events) == 1
    assert events[0].details == {"by": "account", "username": "alice", "address": "203.0.113.12", "seconds": 600}
    assert events[0].actor == "address:203.0.113.12"
    # and an operator sees it in the admin
    operator = User.objects.create_superuser("root", "root@example.com", "pw-root")
    admin = Client()
    admin.force_login(operator)
    page = admin.get("/admin/tenancy/auditevent/?q=login.locked_out")
    assert page.status_code == 200
    assert "login.locked_out" in page.content.decode()


def test_forwarded_addresses_are_believed_only_from_trusted_proxies(settings: Any) -> None:
    from ipaddress import ip_network

    settings.TRUSTED_PROXIES = [ip_network("10.0.0.0/8")]
    # a client's own X-Forwarded-For is ignored
    assert client_address("203.0.113.5", "1.2.3.4") == "203.0.113.5"
    # behind the proxy: the right-most entry the proxy did not add itself
    assert client_address("10.0.0.2", "1.2.3.4, 203.0.113.5") == "203.0.113.5"
    assert client_address("10.0.0.2", "203.0.113.5, 10.0.0.9") == "203.0.113.5"
    assert client_address("10.0.0.2", "garbage") == "10.0.0.2"
    assert client_address("::ffff:203.0.113.5", None) == "203.0.113.5"
