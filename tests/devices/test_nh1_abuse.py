"""NH1 from an attacker's side: someone who holds a product key (it ships in
every device's firmware) but not its secret, or a device that signs garbage.

The hub must not derive keys for whatever x-nh-alg the caller names, must stop
answering a client or a key that keeps failing, and must refuse identifiers its
rules refuse with a reason (401), never a 503 the device would retry for ever.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
import time
from collections.abc import Callable

import pytest
import websockets
from pytest_django.fixtures import Settings
from websockets.asyncio.client import connect

from devicelink import nh1
from devicelink.auth import (
    REASON_ALG,
    REASON_IDENTIFIER,
    REASON_INVALID,
    REASON_THROTTLED,
    authenticate_shared_secret,
)
from devicelink.errors import AuthError
from devices.models import Device
from tests.devices.conftest import Credentials, run
from tests.support.hub import HubLauncher
from tests.support.nhl_client import _b64url, _etf_int, nh1_headers


async def _upgrade(url: str, headers: list[tuple[str, str]]) -> tuple[int, str]:
    try:
        ws = await connect(f"{url}/device-socket/websocket?vsn=2.0.0", additional_headers=headers, open_timeout=20)
    except websockets.InvalidStatus as exc:
        return exc.response.status_code, exc.response.headers.get("nh-connection-error-reason", "")
    await ws.close()
    return 101, ""


def _forged(key: str, identifier: str, signed_at: int, alg: str, derived: bytes) -> list[tuple[str, str]]:
    """Headers signed with a derived key the attacker guessed, not derived."""
    ident = identifier.encode()
    payload = b"\x83\x68\x03\x6d" + struct.pack(">I", len(ident)) + ident + _etf_int(signed_at * 1000) + _etf_int(86400)
    signing_input = "SFMyNTY." + _b64url(payload)
    mac = hmac.new(derived, signing_input.encode(), hashlib.sha256).digest()
    return [
        ("x-nh-alg", alg),
        ("x-nh-key", key),
        ("x-nh-time", str(signed_at)),
        ("x-nh-signature", signing_input + "." + _b64url(mac)),
    ]


def _as_dict(headers: list[tuple[str, str]]) -> dict[str, str]:
    return dict(headers)


# --- the range of x-nh-alg ----------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    "alg",
    [
        "NH1-HMAC-sha512-100000-128",  # ~90-250 ms of PBKDF2 per attempt, accepted before
        "NH1-HMAC-sha512-1000000000-128",
        "NH1-HMAC-sha256-10001-32",  # one past NH1_MAX_ITERATIONS
        "NH1-HMAC-sha256-1000-65",  # one past NH1_MAX_KEY_LENGTH
        "NH1-HMAC-sha1-1000-32",  # not in NH1_ALLOWED_DIGESTS
        "NH1-HMAC-sha256-" + "9" * 5000 + "-32",  # int() would raise past 4300 digits
    ],
)
def test_it_refuses_an_expensive_alg_before_deriving_anything(creds: Credentials, alg: str) -> None:
    # given: the product key, a garbage signature (the attacker has no secret)
    headers = {"x-nh-alg": alg, "x-nh-key": creds.product_key, "x-nh-time": str(int(time.time()))}
    headers["x-nh-signature"] = "SFMyNTY.g2gDbQAAAAF4YQFiAAFRgA.AAAA"
    derivations = nh1.derive_key.cache_info().misses
    # when
    with pytest.raises(AuthError) as refused:
        authenticate_shared_secret(headers)
    # then: 401 with a reason, and PBKDF2 never ran (a cache miss is a derivation)
    assert refused.value.status == 401
    assert refused.value.reason.startswith(REASON_ALG)
    assert nh1.derive_key.cache_info().misses == derivations


def test_it_answers_an_expensive_alg_faster_than_one_derivation_of_it(
    live_hub: HubLauncher, creds: Credentials
) -> None:
    # given: what one NH1-HMAC-sha512-100000-128 derivation costs on this machine
    alg = "NH1-HMAC-sha512-100000-128"
    started = time.perf_counter()
    hashlib.pbkdf2_hmac("sha512", b"secret", b"salt" * 30, 100_000, 128)
    derivation = time.perf_counter() - started
    hub = live_hub({"NH1_FAILURES_PER_ADDRESS": "0"})
    attempts = 10
    now = int(time.time())
    # A new x-nh-time each time: the same headers twice would be served from
    # the derivation cache, as a device's quick retry is.
    headers = [
        [("x-nh-alg", alg), *nh1_headers(creds.product_key, "not-the-secret", "dev-x", now - n, "sha512", 1, 128)[1:]]
        for n in range(attempts)
    ]
    run(_upgrade(hub.ws_url, nh1_headers(creds.product_key, creds.product_secret, "dev-warm", now)))

    async def scenario() -> list[tuple[int, str]]:
        return [await _upgrade(hub.ws_url, h) for h in headers]

    # when
    started = time.perf_counter()
    results = run(scenario())
    elapsed = time.perf_counter() - started
    # then: each refusal costs far less than the derivation it would have run
    assert all(status == 401 and reason.startswith(REASON_ALG) for status, reason in results), results
    assert elapsed < attempts * derivation / 2, (elapsed, derivation)


def test_it_still_accepts_what_nerves_hub_link_sends(live_hub: HubLauncher, creds: Credentials) -> None:
    # given: the client's defaults, and the top of the accepted range
    hub = live_hub()
    now = int(time.time())
    key, secret = creds.product_key, creds.product_secret
    cases = [
        nh1_headers(key, secret, "dev-defaults", now),
        nh1_headers(key, secret, "dev-sha512", now, "sha512", 10_000, 64),
        nh1_headers(key, secret, "dev-sha384", now, "sha384", 1000, 48),
        nh1_headers(key, secret, "dev-upper", now, alg="NH1-HMAC-SHA256-1000-32"),
    ]

    async def scenario() -> list[tuple[int, str]]:
        return [await _upgrade(hub.ws_url, h) for h in cases]

    # when
    results = run(scenario())
    # then
    assert [status for status, _ in results] == [101, 101, 101, 101], results
    assert Device.objects.filter(identifier__in=["dev-defaults", "dev-sha512", "dev-sha384", "dev-upper"]).count() == 4


@pytest.mark.django_db
def test_it_refuses_a_derived_key_short_enough_to_guess(creds: Credentials) -> None:
    # given: with x-nh-alg asking for a 1-byte key, the HMAC key is one of 256
    # values: an attacker without the secret signs with each in turn
    now = int(time.time())
    alg = "NH1-HMAC-sha256-1000-1"
    # when
    accepted = []
    for guess in range(256):
        try:
            accepted.append(
                authenticate_shared_secret(_as_dict(_forged(creds.product_key, "dev-forged", now, alg, bytes([guess]))))
            )
        except AuthError as refused:
            assert refused.status in (401, 429)
    # then
    assert accepted == []
    assert not Device.objects.filter(identifier="dev-forged").exists()


# --- failed attempts are counted ---------------------------------------------------------


def test_it_throttles_a_client_that_keeps_failing(live_hub: HubLauncher, creds: Credentials) -> None:
    # given: a limit of 5 failures per client
    hub = live_hub({"NH1_FAILURES_PER_ADDRESS": "5", "NH1_FAILURES_PER_KEY": "0"})
    now = int(time.time())
    wrong = nh1_headers(creds.product_key, "not-the-secret", "dev-guess", now)
    good = nh1_headers(creds.product_key, creds.product_secret, "dev-honest", now)

    async def scenario() -> tuple[list[tuple[int, str]], tuple[int, str]]:
        return [await _upgrade(hub.ws_url, wrong) for _ in range(6)], await _upgrade(hub.ws_url, good)

    # when
    failures, then_good = run(scenario())
    # then: five 401s, then 429 for everything from that address, the right secret included
    assert [s for s, _ in failures] == [401] * 5 + [429]
    assert failures[-1][1] == REASON_THROTTLED
    assert then_good == (429, REASON_THROTTLED)
    assert not Device.objects.filter(identifier="dev-honest").exists()


def test_it_counts_clients_behind_the_trusted_proxy_apart(live_hub: HubLauncher, creds: Credentials) -> None:
    # given: nginx (127.0.0.1, trusted) forwards an attacker and an honest device
    hub = live_hub({"TRUSTED_PROXIES": "127.0.0.1", "NH1_FAILURES_PER_ADDRESS": "3", "NH1_FAILURES_PER_KEY": "0"})
    now = int(time.time())
    # what the attacker writes into X-Forwarded-For itself is on the left: ignored
    attacker = [("x-forwarded-for", "203.0.113.50, 198.51.100.7")]
    honest = [("x-forwarded-for", "192.0.2.10")]
    wrong = nh1_headers(creds.product_key, "not-the-secret", "dev-guess", now)
    good = nh1_headers(creds.product_key, creds.product_secret, "dev-behind-proxy", now)
    spoofing = [("x-forwarded-for", "203.0.113.50, 198.51.100.7, 198.51.100.7")]

    async def scenario() -> tuple[list[tuple[int, str]], tuple[int, str], tuple[int, str]]:
        failures = [await _upgrade(hub.ws_url, attacker + wrong) for _ in range(4)]
        return failures, await _upgrade(hub.ws_url, honest + good), await _upgrade(hub.ws_url, spoofing + good)

    # when
    failures, honest_result, attacker_again = run(scenario())
    # then
    assert [s for s, _ in failures] == [401, 401, 401, 429]
    assert honest_result[0] == 101
    assert attacker_again[0] == 429


def test_it_throttles_a_key_that_fails_from_many_clients(
    live_hub: HubLauncher, creds: Credentials, device_key: Callable[[str], tuple[Device, str, str]]
) -> None:
    # given: a guesser spread over many addresses (behind the trusted proxy)
    hub = live_hub({"TRUSTED_PROXIES": "127.0.0.1", "NH1_FAILURES_PER_ADDRESS": "2", "NH1_FAILURES_PER_KEY": "4"})
    now = int(time.time())
    wrong = nh1_headers(creds.product_key, "not-the-secret", "dev-guess", now)
    good = nh1_headers(creds.product_key, creds.product_secret, "dev-fleet", now)
    _, dkey, dsecret = device_key("dev-own-key")
    other_key = nh1_headers(dkey, dsecret, "dev-own-key", now)

    async def scenario() -> tuple[list[tuple[int, str]], tuple[int, str], tuple[int, str]]:
        failures = [await _upgrade(hub.ws_url, [("x-forwarded-for", f"198.51.100.{n}"), *wrong]) for n in range(5)]
        fresh = [("x-forwarded-for", "192.0.2.77")]
        return failures, await _upgrade(hub.ws_url, fresh + good), await _upgrade(hub.ws_url, fresh + other_key)

    # when
    failures, same_key, another_key = run(scenario())
    # then: the key is held after 4 failures, whoever asks; other keys are not
    assert [s for s, _ in failures] == [401, 401, 401, 401, 429]
    assert same_key == (429, REASON_THROTTLED)
    assert another_key[0] == 101


def test_it_does_not_count_a_device_whose_clock_is_wrong(live_hub: HubLauncher, creds: Credentials) -> None:
    # given: a device that holds the secret but signs 10 minutes in the past
    hub = live_hub({"NH1_FAILURES_PER_ADDRESS": "2", "NH1_FAILURES_PER_KEY": "2"})
    stale = nh1_headers(creds.product_key, creds.product_secret, "dev-clock", int(time.time()) - 600)

    async def scenario() -> tuple[list[tuple[int, str]], tuple[int, str]]:
        tries = [await _upgrade(hub.ws_url, stale) for _ in range(4)]
        fixed = nh1_headers(creds.product_key, creds.product_secret, "dev-clock", int(time.time()))
        return tries, await _upgrade(hub.ws_url, fixed)

    # when
    tries, fixed = run(scenario())
    # then
    assert [s for s, _ in tries] == [401] * 4
    assert fixed[0] == 101


@pytest.mark.services
def test_it_shares_the_counters_between_server_processes(live_hub: HubLauncher, creds: Credentials) -> None:
    # given: two hub processes on one Redis, a limit of 4 per client
    env = {"NH1_FAILURES_PER_ADDRESS": "4", "NH1_FAILURES_PER_KEY": "0"}
    first, second = live_hub(env), live_hub(env)
    wrong = nh1_headers(creds.product_key, "not-the-secret", "dev-guess", int(time.time()))

    async def scenario() -> list[tuple[int, str]]:
        return [await _upgrade(hub.ws_url, wrong) for hub in (first, second, first, second, first, second)]

    # when
    results = run(scenario())
    # then
    assert [s for s, _ in results] == [401, 401, 401, 401, 429, 429]


# --- identifiers a product key registers ---------------------------------------------------


BAD_IDENTIFIERS = {
    "NUL": "dev\x00one",
    "control": "dev\x07bell",
    "escape sequence": "dev\x1b[2Jclear",
    "right-to-left override": "dev\u202egnp.exe",
    "zero-width space": "dev\u200bone",
    "line separator": "dev\u2028one",
    "white space": "dev one",
    "5,000 characters": "d" * 5000,
    "201 characters": "d" * 201,
}


def test_it_refuses_identifiers_the_rules_refuse_with_a_reason(live_hub: HubLauncher, creds: Credentials) -> None:
    # given
    hub = live_hub({"NH1_FAILURES_PER_ADDRESS": "3"})
    now = int(time.time())
    key, secret = creds.product_key, creds.product_secret

    async def scenario() -> dict[str, tuple[int, str]]:
        return {
            name: await _upgrade(hub.ws_url, nh1_headers(key, secret, identifier, now))
            for name, identifier in BAD_IDENTIFIERS.items()
        }

    # when
    results = run(scenario())
    # then: a definitive 401 naming the rule (not 503, not counted as a guess),
    # and no device row
    for name, (status, reason) in results.items():
        assert status == 401, name
        assert reason.startswith(REASON_IDENTIFIER) and reason != REASON_INVALID, name
    assert Device.objects.count() == 0
    # the longest accepted identifier still registers
    assert run(_upgrade(hub.ws_url, nh1_headers(key, secret, "d" * 200, now)))[0] == 101


def test_it_counts_an_ipv6_host_by_its_64_and_believes_only_trusted_proxies(settings: Settings) -> None:
    from nerveshub.lib.clientaddr import client_address

    # an attacker rotating through the addresses of its /64 is one client
    assert client_address("2001:db8:1:2::1") == client_address("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert client_address("::ffff:198.51.100.7") == "198.51.100.7"
    # X-Forwarded-For from an untrusted peer is ignored
    settings.TRUSTED_PROXIES = []
    assert client_address("198.51.100.7", "192.0.2.1") == "198.51.100.7"
    # from a trusted proxy, the hop it appended counts, not what the client wrote
    from ipaddress import ip_network

    settings.TRUSTED_PROXIES = [ip_network("10.0.0.0/8")]
    assert client_address("10.0.0.2", "192.0.2.1, 198.51.100.7") == "198.51.100.7"
    assert client_address("10.0.0.2", "192.0.2.1, 198.51.100.7, 10.0.0.3") == "198.51.100.7"
    assert client_address("unix:/run/hub.sock") is None
