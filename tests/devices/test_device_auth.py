"""Shared-secret authentication from the device's side: every refusal is an
HTTP 401 (or 503) before the websocket exists, with a Date header and a reason."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from email.utils import parsedate_to_datetime
from typing import TypeVar

import pytest
import websockets
from websockets.asyncio.client import connect

from devicelink.auth import (
    REASON_ALG,
    REASON_EXPIRED,
    REASON_FUTURE,
    REASON_INVALID,
    REASON_NO_CREDENTIALS,
    REASON_PLATFORM,
)
from devices import services
from devices.models import Device, DeviceSharedSecret
from tests.devices.conftest import Credentials, run
from tests.support.hub import HubLauncher
from tests.support.nhl_client import nh1_headers


async def _upgrade(url: str, headers: list[tuple[str, str]]) -> tuple[int, dict[str, str]]:
    try:
        ws = await connect(f"{url}/device-socket/websocket?vsn=2.0.0", additional_headers=headers, open_timeout=10)
    except websockets.InvalidStatus as exc:
        return exc.response.status_code, {k.lower(): v for k, v in exc.response.headers.raw_items()}
    await ws.close()
    return 101, {}


def test_it_refuses_bad_credentials_with_401_and_a_reason(
    live_hub: HubLauncher, creds: Credentials, device_key: Callable[[str], tuple[Device, str, str]]
) -> None:
    # given
    hub = live_hub()
    now = int(time.time())
    key, secret = creds.product_key, creds.product_secret
    _, dkey, dsecret = device_key("dev-keyed")
    _, dead_key, dead_secret = device_key("dev-deactivated")
    services.deactivate_secrets("test", list(DeviceSharedSecret.objects.filter(key=dead_key)))
    deleted, del_key, del_secret = device_key("dev-deleted")
    services.soft_delete("test", Device.objects.filter(pk=deleted.pk))
    good = nh1_headers(key, secret, "dev-new", now)
    cases = {
        "wrong signature": [*good[:3], ("x-nh-signature", good[3][1][:-4] + "AAAA")],
        "wrong secret": nh1_headers(key, "not-the-secret", "dev-new", now),
        "expired": nh1_headers(key, secret, "dev-new", now - 181),
        "future": nh1_headers(key, secret, "dev-new", now + 30),
        "unknown key": nh1_headers("nhp_nope", secret, "dev-new", now),
        "unknown device key": nh1_headers("nhd_nope", secret, "dev-new", now),
        "deactivated key": nh1_headers(dead_key, dead_secret, "dev-deactivated", now),
        "deleted device": nh1_headers(del_key, del_secret, "dev-deleted", now),
        "device key for another identifier": nh1_headers(dkey, dsecret, "dev-other", now),
        "wrong alg string": nh1_headers(key, secret, "dev-new", now, alg="NH2-HMAC-sha256-1000-32"),
        "unknown digest": nh1_headers(key, secret, "dev-new", now, alg="NH1-HMAC-md5-1000-32"),
        "missing time": [h for h in good if h[0] != "x-nh-time"],
        "missing signature": good[:3],
        "tampered time": [good[0], good[1], ("x-nh-time", str(now + 1)), good[3]],
        "garbage token": [*good[:3], ("x-nh-signature", "SFMyNTY.!!!.???")],
        "only proxy headers": [("x-forwarded-for", "10.0.0.1")],
    }
    expected_reason = {"expired": REASON_EXPIRED, "future": REASON_FUTURE}

    async def scenario() -> dict[str, tuple[int, dict[str, str]]]:
        return {name: await _upgrade(hub.ws_url, headers) for name, headers in cases.items()}

    # when
    results = run(scenario())
    # then
    for name, (status, headers) in results.items():
        assert status == 401, name
        if name in ("wrong alg string", "unknown digest"):
            assert headers["nh-connection-error-reason"].startswith(REASON_ALG), name
        else:
            assert headers["nh-connection-error-reason"] == expected_reason.get(name, REASON_INVALID), name
        assert abs(parsedate_to_datetime(headers["date"]).timestamp() - time.time()) < 30, name
    assert not Device.objects.filter(identifier__in=["dev-new", "dev-other"]).exists()


def test_it_explains_when_no_credentials_were_given(live_hub: HubLauncher, creds: Credentials) -> None:
    # given
    hub = live_hub()
    # when
    status, headers = run(_upgrade(hub.ws_url, []))
    # then
    assert status == 401
    assert headers["nh-connection-error-reason"] == REASON_NO_CREDENTIALS


def test_it_accepts_a_device_key_and_a_little_clock_skew(
    live_hub: HubLauncher, creds: Credentials, device_key: Callable[[str], tuple[Device, str, str]]
) -> None:
    # given
    hub = live_hub()
    _, key, secret = device_key("dev-skew")
    now = int(time.time())
    # when
    results = run(
        _gather(
            _upgrade(hub.ws_url, nh1_headers(key, secret, "dev-skew", now + 3)),
            _upgrade(hub.ws_url, nh1_headers(key, secret, "dev-skew", now - 170)),
            _upgrade(hub.ws_url, nh1_headers(creds.product_key, creds.product_secret, "dev-skew", now)),
        )
    )
    # then: device key, 3 s ahead, 170 s old, and the product key for its own device
    assert [status for status, _ in results] == [101, 101, 101]


T = TypeVar("T")


async def _gather(*coroutines: Awaitable[T]) -> list[T]:
    return [await c for c in coroutines]


def test_it_refuses_an_identifier_of_another_product(live_hub: HubLauncher, creds: Credentials) -> None:
    # given: the identifier exists in another product of the same org
    from nerveshub.tenancy import services as tenancy

    other, _ = tenancy.get_or_create_product("test", creds.tenant.org, "other")
    services.create_device("test", other, "dev-taken")
    hub = live_hub()
    # when
    status, _headers = run(
        _upgrade(hub.ws_url, nh1_headers(creds.product_key, creds.product_secret, "dev-taken", int(time.time())))
    )
    # then
    assert status == 401
    assert Device.objects.get(identifier="dev-taken").product_id == other.pk


def test_it_refuses_shared_secrets_when_disabled(live_hub: HubLauncher, creds: Credentials) -> None:
    # given
    hub = live_hub({"DEVICE_SHARED_SECRETS_ENABLED": "false"})
    headers = nh1_headers(creds.product_key, creds.product_secret, "dev-off", int(time.time()))
    # when
    status, _ = run(_upgrade(hub.ws_url, headers))
    # then
    assert status == 401


@pytest.mark.services
def test_it_answers_503_when_the_database_is_unreachable(live_hub: HubLauncher, creds: Credentials) -> None:
    # given: a server whose database does not answer
    hub = live_hub({"DATABASE_URL": "postgres://postgres@127.0.0.1:1/nowhere"})
    headers = nh1_headers(creds.product_key, creds.product_secret, "dev-503", int(time.time()))
    # when
    status, response_headers = run(_upgrade(hub.ws_url, headers))
    # then
    assert status == 503
    assert response_headers["nh-connection-error-reason"] == REASON_PLATFORM
