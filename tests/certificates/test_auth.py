"""devicelink.certauth.device_from_scope: which peers may forward a certificate,
and the TRUSTED_PROXIES setting it relies on."""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network, ip_network
from urllib.parse import quote

import pytest
from django.core.exceptions import ImproperlyConfigured
from pytest_django.fixtures import Settings

from certificates import pki
from certificates.pki import Issued
from devicelink.certauth import device_from_scope
from devicelink.errors import AuthError
from nerveshub.lib.env import envnetworks
from tests.certificates.proof import register_ca
from tests.conftest import Tenant

PROXY = [ip_network("10.0.0.0/24"), ip_network("::1/128")]


def _scope(client: str, cert: bytes | None, *, escaped: bool = True) -> dict[str, object]:
    headers = [(b"host", b"devices.example.com")]
    if cert is not None:
        headers.append((b"x-ssl-client-cert", quote(cert.decode()).encode() if escaped else cert))
    return {"type": "websocket", "client": [client, 50000], "headers": headers}


@pytest.fixture
def known_leaf(tenant: Tenant, device_ca: Issued) -> Issued:
    register_ca(tenant.admin, tenant.org, device_ca, jitp_product=tenant.product)
    return pki.sign_device(device_ca, "SN-AUTH")


def test_it_returns_none_without_a_certificate_header(db: None, settings: Settings) -> None:
    settings.TRUSTED_PROXIES = PROXY
    assert device_from_scope(_scope("10.0.0.7", None)) is None
    assert device_from_scope(_scope("192.0.2.1", None)) is None


def test_it_authenticates_a_certificate_forwarded_by_a_trusted_proxy(known_leaf: Issued, settings: Settings) -> None:
    # given
    settings.TRUSTED_PROXIES = PROXY
    # when
    device = device_from_scope(_scope("10.0.0.7", known_leaf.cert_pem))
    # then
    assert device is not None
    assert device.identifier == "SN-AUTH"


def test_it_accepts_an_ipv6_proxy_and_a_plain_pem_header(known_leaf: Issued, settings: Settings) -> None:
    settings.TRUSTED_PROXIES = PROXY
    device = device_from_scope(_scope("::1", known_leaf.cert_pem.replace(b"\n", b"\n\t"), escaped=False))
    assert device is not None


@pytest.mark.parametrize("proxies", [[], PROXY], ids=["no-trusted-proxies", "outside-the-list"])
def test_it_refuses_the_header_from_an_untrusted_peer(
    known_leaf: Issued, settings: Settings, proxies: list[IPv4Network | IPv6Network]
) -> None:
    # given
    settings.TRUSTED_PROXIES = proxies
    # when / then
    with pytest.raises(AuthError) as refused:
        device_from_scope(_scope("192.0.2.1", known_leaf.cert_pem))
    assert refused.value.status == 401
    assert "TRUSTED_PROXIES" in refused.value.detail


def test_it_turns_a_refused_certificate_into_an_auth_error(
    tenant: Tenant, device_ca: Issued, other_ca: Issued, settings: Settings
) -> None:
    settings.TRUSTED_PROXIES = PROXY
    with pytest.raises(AuthError) as refused:
        device_from_scope(_scope("10.0.0.7", pki.sign_device(other_ca, "SN-X").cert_pem))
    assert (refused.value.status, refused.value.reason) == (401, "certificate refused")
    assert "unknown CA" in refused.value.detail


def test_it_reads_trusted_proxies_from_the_environment() -> None:
    # when
    networks = envnetworks("TRUSTED_PROXIES", environ={"TRUSTED_PROXIES": "127.0.0.1, 10.1.0.0/16,::1"})
    # then
    assert networks == [ip_network("127.0.0.1/32"), ip_network("10.1.0.0/16"), ip_network("::1/128")]
    assert envnetworks("TRUSTED_PROXIES", environ={}) == []


def test_it_refuses_a_bad_network_in_trusted_proxies() -> None:
    with pytest.raises(ImproperlyConfigured, match=r"TRUSTED_PROXIES: '10\.0\.0\.0/33'"):
        envnetworks("TRUSTED_PROXIES", environ={"TRUSTED_PROXIES": "127.0.0.1,10.0.0.0/33"})
