"""Certificate authentication of a device socket behind a TLS-terminating proxy.

The hub never sees the TLS handshake: daphne cannot ask for a client certificate
and hands none to the application. nginx (deploy/nginx/nerveshub.conf) asks for
one with `ssl_verify_client optional_no_ca`, checks that the client holds the
key, and forwards the leaf certificate URL-escaped in `X-SSL-Client-Cert`. The
hub checks everything else (issuer, signature, validity, revocation) itself,
and believes that header only from the addresses in settings.TRUSTED_PROXIES.

`devicelink.auth.authenticate_certificate_request` calls `device_from_scope`
on a device database thread, first in the authenticator chain.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from ipaddress import ip_address
from typing import Any

from django.conf import settings

from certificates.services import CertificateRefused, authenticate_peer_certificate
from devicelink.errors import AuthError
from devices.models import Device

logger = logging.getLogger(__name__)

CERT_HEADER = b"x-ssl-client-cert"
# Coarse on purpose: the specific reason is logged, never told to the peer.
REASON_REFUSED = "certificate refused"


def peer_is_trusted_proxy(scope: Mapping[str, Any]) -> bool:
    client = scope.get("client")
    if not client or not settings.TRUSTED_PROXIES:
        return False
    try:
        address = ip_address(str(client[0]))
    except ValueError:  # a unix socket path, or garbage
        return False
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in settings.TRUSTED_PROXIES)


def forwarded_certificate(scope: Mapping[str, Any]) -> bytes | None:
    """The certificate header's value, or None when absent or empty (nginx sends
    no header when the device presented no certificate)."""
    for name, value in scope.get("headers", ()):
        if name.lower() == CERT_HEADER:
            return bytes(value) if value.strip() else None
    return None


def device_from_scope(scope: Mapping[str, Any]) -> Device | None:
    """The device whose client certificate the trusted proxy forwarded; None when
    no certificate was forwarded; AuthError(401) when the certificate is refused
    or the header comes from an address that is not a trusted proxy."""
    value = forwarded_certificate(scope)
    if value is None:
        return None
    client = scope.get("client")
    if not peer_is_trusted_proxy(scope):
        logger.warning("client certificate header from untrusted address %s refused", client[0] if client else "?")
        raise AuthError(401, REASON_REFUSED, "client certificate header from an address not in TRUSTED_PROXIES")
    try:
        return authenticate_peer_certificate(value)
    except CertificateRefused as exc:
        logger.info("device certificate refused: %s", exc.reason)
        raise AuthError(exc.status, REASON_REFUSED, exc.reason) from None
