"""Two-factor sign-in through the pages: turning it on (scan, confirm, recovery
codes once), the sign-in's second step (no signed-in session before the code),
wrong codes throttled, recovery codes used once, turning it off, the admin's
check, and API tokens unaffected."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from io import StringIO

import pytest
from django.contrib.auth.models import User
from django.core.cache import caches
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client
from django_otp.oath import TOTP
from django_otp.plugins.otp_static.models import StaticToken
from django_otp.plugins.otp_totp.models import TOTPDevice
from pytest_django.fixtures import Settings

from nerveshub.tenancy import services as tenancy
from nerveshub.tenancy import twofactor
from nerveshub.tenancy.models import APIToken, AuditEvent
from nerveshub.web.access import org_slug
from tests.conftest import Tenant
from tests.support.totp import secret_bytes, totp, wrong_code
from tests.web.conftest import client_for

pytestmark = pytest.mark.django_db

SETTINGS = "/accounts/settings/two-factor/"


@pytest.fixture(autouse=True)
def fresh_counts() -> Iterator[None]:
    # The sign-in counters live in the cache, which outlives a test.
    caches["default"].clear()
    yield
    caches["default"].clear()


def _enable(user: User) -> tuple[str, list[str]]:
    """Turn two-factor on for `user` through the service; the shown secret and
    the recovery codes. The step used is forgotten so that the tests may sign
    in with the current code again."""
    device = twofactor.start_totp_setup(user)
    secret = twofactor.totp_secret(device)
    codes = twofactor.confirm_totp_setup(user, totp(secret))
    TOTPDevice.objects.filter(pk=device.pk).update(last_t=-1)
    return secret, codes


def _password_step(client: Client, name: str = "victor", password: str = "pw-victor", next_url: str = "") -> None:
    url = "/accounts/login/" + (f"?next={next_url}" if next_url else "")
    response = client.post(url, {"username": name, "password": password, "next": next_url})
    assert response.status_code == 302 and response["Location"] == "/accounts/login/code/"


def test_the_test_totp_matches_django_otp() -> None:
    secret = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
    for at in (0, 59, 1_111_111_109, 2_000_000_000):
        reference = TOTP(secret_bytes(secret))
        reference.time = at
        assert totp(secret, at) == f"{reference.token():06d}"
    # RFC 6238's SHA-1 vector: secret "12345678901234567890", T = 59 s, 8 digits.
    rfc = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"
    assert totp(rfc, 59, digits=8) == "94287082"


def test_it_turns_on_after_a_right_code_and_shows_recovery_codes_once(tenant: Tenant) -> None:
    client = client_for(tenant.viewer)
    # given: the page offers to set it up
    assert "is <strong>off</strong>" in client.get(SETTINGS).content.decode()
    # when: the person starts, the page shows a QR code (inline SVG) and the secret
    assert client.post(SETTINGS, {"action": "start"}).status_code == 302
    page = client.get(SETTINGS).content.decode()
    assert '<div class="qr" id="totp-qr"><svg' in page
    secret = re.search(r'id="totp-secret">([A-Z2-7 ]+)<', page)
    assert secret is not None
    # then: a wrong code leaves it off, beside the field
    response = client.post(SETTINGS, {"action": "confirm", "code": wrong_code(secret.group(1))})
    assert response.status_code == 400 and "This code is not right" in response.content.decode()
    assert not twofactor.is_enabled(tenant.viewer)
    # when: the right one (waiting out django-otp's one-second backoff)
    time.sleep(1.1)
    response = client.post(SETTINGS, {"action": "confirm", "code": totp(secret.group(1))})
    # then: on, and ten recovery codes shown this once
    assert response.status_code == 200 and twofactor.is_enabled(tenant.viewer)
    codes = re.findall(r"<li><code>([a-z2-7]+)</code></li>", response.content.decode())
    assert len(codes) == 10
    again = client.get(SETTINGS).content.decode()
    assert "is <strong>on</strong>" in again and codes[0] not in again
    assert AuditEvent.objects.filter(action="user.two_factor_enabled", actor_user=tenant.viewer).count() == 1


def test_the_sign_in_asks_the_code_and_signs_in_only_then(tenant: Tenant) -> None:
    secret, _ = _enable(tenant.viewer)
    client = Client()
    # when: the password is right
    _password_step(client)
    # then: the session is not signed in: no org page, no token, no account page
    slug = org_slug(tenant.org)
    assert client.get(f"/org/{slug}/")["Location"].startswith("/accounts/login/")
    assert client.post("/accounts/tokens/", {"note": "x"}).status_code == 302
    assert not APIToken.objects.filter(user=tenant.viewer).exists()
    assert client.get("/admin/").status_code == 302
    # when: a wrong code
    response = client.post("/accounts/login/code/", {"code": wrong_code(secret)})
    # then: refused, still not signed in
    assert response.status_code == 400 and "This code is not right" in response.content.decode()
    assert client.get(f"/org/{slug}/").status_code == 302
    # when: the right code, after django-otp's backoff
    time.sleep(1.1)
    response = client.post("/accounts/login/code/", {"code": totp(secret)})
    # then
    assert response.status_code == 302
    assert client.get(f"/org/{slug}/").status_code == 200


def test_the_code_page_without_a_password_step_sends_back_to_sign_in(tenant: Tenant) -> None:
    response = Client().post("/accounts/login/code/", {"code": "123456"})
    assert response.status_code == 302 and response["Location"] == "/accounts/login/"


def test_a_half_way_sign_in_expires(tenant: Tenant, monkeypatch: pytest.MonkeyPatch) -> None:
    secret, _ = _enable(tenant.viewer)
    client = Client()
    _password_step(client)
    session = client.session
    state = session["two_factor_pending"]
    state["since"] -= 301
    session["two_factor_pending"] = state
    session.save()
    response = client.post("/accounts/login/code/", {"code": totp(secret)})
    assert response.status_code == 302 and response["Location"] == "/accounts/login/"
    assert client.get("/accounts/settings/").status_code == 302


def test_it_keeps_where_the_person_was_going(tenant: Tenant) -> None:
    secret, _ = _enable(tenant.viewer)
    client = Client()
    _password_step(client, next_url="/accounts/tokens/")
    response = client.post("/accounts/login/code/", {"code": totp(secret)})
    assert response.status_code == 302 and response["Location"] == "/accounts/tokens/"


def test_wrong_codes_count_toward_the_sign_in_lock(tenant: Tenant, settings: Settings) -> None:
    # given: django-otp's own backoff off, to see the hub's lock alone
    settings.LOGIN_FAILURE_LIMIT = 3
    settings.OTP_TOTP_THROTTLE_FACTOR = 0
    secret, _ = _enable(tenant.viewer)
    client = Client()
    _password_step(client)
    # when: three wrong codes
    statuses = [client.post("/accounts/login/code/", {"code": wrong_code(secret)}).status_code for _ in range(3)]
    # then: the third locks; even the right code is refused now
    assert statuses == [400, 400, 429]
    response = client.post("/accounts/login/code/", {"code": totp(secret)})
    assert response.status_code == 429 and "Too many failed sign-ins" in response.content.decode()
    assert client.get("/accounts/settings/").status_code == 302
    assert AuditEvent.objects.filter(action="login.locked_out").exists()


def test_the_right_password_does_not_reset_the_count_of_wrong_codes(tenant: Tenant, settings: Settings) -> None:
    settings.LOGIN_FAILURE_LIMIT = 3
    settings.OTP_TOTP_THROTTLE_FACTOR = 0
    secret, _ = _enable(tenant.viewer)
    client = Client()
    for _ in range(2):
        _password_step(client)
        assert client.post("/accounts/login/code/", {"code": wrong_code(secret)}).status_code == 400
    _password_step(client)
    assert client.post("/accounts/login/code/", {"code": wrong_code(secret)}).status_code == 429


def test_django_otp_makes_a_quick_second_try_wait(tenant: Tenant) -> None:
    secret, _ = _enable(tenant.viewer)
    client = Client()
    _password_step(client)
    client.post("/accounts/login/code/", {"code": wrong_code(secret)})
    response = client.post("/accounts/login/code/", {"code": totp(secret)})
    assert response.status_code == 429 and "wait" in response.content.decode()


def test_a_recovery_code_signs_in_once(tenant: Tenant) -> None:
    _, codes = _enable(tenant.viewer)
    client = Client()
    _password_step(client)
    # when: a recovery code, typed in capitals with a space
    typed = codes[0][:4].upper() + " " + codes[0][4:].upper()
    response = client.post("/accounts/login/code/", {"code": typed})
    # then: signed in, the code used up, and audited
    assert response.status_code == 302
    assert client.get("/accounts/settings/").status_code == 200
    assert not StaticToken.objects.filter(token=codes[0]).exists()
    event = AuditEvent.objects.get(action="user.two_factor_recovery_code_used")
    assert event.details == {"recovery_codes_left": 9}
    # when: the same code again, in a new sign-in
    other = Client()
    _password_step(other)
    time.sleep(1.1)  # not django-otp's backoff that refuses
    response = other.post("/accounts/login/code/", {"code": codes[0]})
    assert response.status_code == 400
    assert other.get("/accounts/settings/").status_code == 302


def test_turning_it_off_needs_the_password_and_a_code(tenant: Tenant) -> None:
    secret, _ = _enable(tenant.viewer)
    client = client_for(tenant.viewer)
    # when: the wrong password
    response = client.post(SETTINGS, {"action": "disable", "password": "nope", "code": totp(secret)})
    # then: still on, the error beside the password
    assert response.status_code == 400 and "This is not your current password" in response.content.decode()
    assert twofactor.is_enabled(tenant.viewer)
    # when: a wrong code
    response = client.post(SETTINGS, {"action": "disable", "password": "pw-victor", "code": wrong_code(secret)})
    assert response.status_code == 400 and twofactor.is_enabled(tenant.viewer)
    # when: both right
    time.sleep(1.1)
    response = client.post(SETTINGS, {"action": "disable", "password": "pw-victor", "code": totp(secret)})
    # then: off, the recovery codes gone, audited; signing in asks no code
    assert response.status_code == 302 and not twofactor.is_enabled(tenant.viewer)
    assert not StaticToken.objects.filter(device__user=tenant.viewer).exists()
    assert AuditEvent.objects.filter(action="user.two_factor_disabled").count() == 1
    assert Client().post("/accounts/login/", {"username": "victor", "password": "pw-victor"})["Location"] == "/"


def test_the_settings_page_needs_a_signed_in_person() -> None:
    assert Client().get(SETTINGS)["Location"].startswith("/accounts/login/")
    assert Client().post(SETTINGS, {"action": "start"})["Location"].startswith("/accounts/login/")


def test_it_cannot_be_set_up_twice(tenant: Tenant) -> None:
    _enable(tenant.viewer)
    client = client_for(tenant.viewer)
    client.post(SETTINGS, {"action": "start"})
    assert TOTPDevice.objects.filter(user=tenant.viewer).count() == 1


def test_the_admin_needs_the_second_factor_of_those_who_use_one(tenant: Tenant) -> None:
    tenant.admin.is_superuser = True
    tenant.admin.save()
    secret, _ = _enable(tenant.admin)
    # given: a session signed in without the code (one from before it was on)
    unverified = client_for(tenant.admin)
    # then: the admin refuses it
    assert unverified.get("/admin/").status_code == 302
    # and: the admin's own login form refuses the password alone
    response = Client().post("/admin/login/", {"username": "alice", "password": "pw-alice"})
    assert response.status_code == 200 and "two-factor authentication" in response.content.decode()
    # when: signed in on the hub's page with the code
    verified = Client()
    _password_step(verified, name="alice", password="pw-alice", next_url="/admin/")
    response = verified.post("/accounts/login/code/", {"code": totp(secret)})
    # then
    assert response["Location"] == "/admin/"
    assert verified.get("/admin/").status_code == 200
    # and: someone without two-factor still uses the admin as before
    tenant.manager.is_superuser = True
    tenant.manager.save()
    assert client_for(tenant.manager).get("/admin/").status_code == 200


def test_api_tokens_keep_working_and_a_password_alone_gets_none(tenant: Tenant) -> None:
    issued = tenancy.create_api_token(tenant.viewer, tenant.viewer, "CI")
    _enable(tenant.viewer)
    # then: the token still opens the API
    response = Client().get("/api/v1/users/me", HTTP_AUTHORIZATION=f"token {issued.clear}")
    assert response.status_code == 200
    # and: the NervesHub tools' password sign-in mints no token
    response = Client().post(
        "/api/users/login", {"email": "victor", "password": "pw-victor"}, content_type="application/json"
    )
    # 401: NervesHub answers a refusal so (nerveshub/nhapi/api.py), with the reason.
    assert response.status_code == 401 and "two-factor" in response.json()["errors"]["detail"]
    assert APIToken.objects.filter(user=tenant.viewer).count() == 1


def test_an_operator_resets_a_lost_authenticator(tenant: Tenant) -> None:
    _enable(tenant.viewer)
    out = StringIO()
    call_command("reset_two_factor", "victor@example.com", stdout=out)
    assert "is off for victor" in out.getvalue() and not twofactor.is_enabled(tenant.viewer)
    assert AuditEvent.objects.get(action="user.two_factor_reset").actor == "command:reset_two_factor"
    with pytest.raises(CommandError):
        call_command("reset_two_factor", "nobody")


def test_signing_in_half_way_as_someone_else_ends_the_previous_session(tenant: Tenant) -> None:
    _enable(tenant.viewer)
    client = client_for(tenant.manager)
    _password_step(client)
    assert client.get("/accounts/settings/").status_code == 302


def test_new_recovery_codes_replace_the_old_ones_on_the_password_and_a_code(tenant: Tenant) -> None:
    secret, old_codes = _enable(tenant.viewer)
    client = client_for(tenant.viewer)
    page = client.get(SETTINGS).content.decode()
    assert 'id="codes-form"' in page
    # when: the wrong password, then a wrong code
    response = client.post(SETTINGS, {"action": "new-codes", "codes-password": "nope", "codes-code": totp(secret)})
    assert response.status_code == 400 and "This is not your current password" in response.content.decode()
    response = client.post(
        SETTINGS, {"action": "new-codes", "codes-password": "pw-victor", "codes-code": wrong_code(secret)}
    )
    assert response.status_code == 400
    assert set(StaticToken.objects.filter(device__user=tenant.viewer).values_list("token", flat=True)) == set(old_codes)
    # when: both right
    time.sleep(1.1)
    response = client.post(SETTINGS, {"action": "new-codes", "codes-password": "pw-victor", "codes-code": totp(secret)})
    # then: ten new codes shown once, the old ones gone, audited, two-factor still on
    assert response.status_code == 200
    new_codes = re.findall(r"<li><code>([a-z2-7]+)</code></li>", response.content.decode())
    assert len(new_codes) == 10 and not set(new_codes) & set(old_codes)
    stored = set(StaticToken.objects.filter(device__user=tenant.viewer).values_list("token", flat=True))
    assert stored == set(new_codes)
    assert twofactor.is_enabled(tenant.viewer)
    assert AuditEvent.objects.filter(action="user.two_factor_recovery_codes_replaced").count() == 1
    # and an old code no longer signs in, a new one does
    other = Client()
    _password_step(other)
    assert other.post("/accounts/login/code/", {"code": old_codes[1]}).status_code == 400
    time.sleep(1.1)
    assert other.post("/accounts/login/code/", {"code": new_codes[0]}).status_code == 302


def test_new_recovery_codes_need_two_factor_on(tenant: Tenant) -> None:
    client = client_for(tenant.viewer)
    response = client.post(SETTINGS, {"action": "new-codes", "codes-password": "pw-victor", "codes-code": "123456"})
    assert response.status_code == 400 and not StaticToken.objects.filter(device__user=tenant.viewer).exists()
