"""How the device link refuses a device's upgrade; shared by the authenticators
(devicelink/auth.py, devicelink/certauth.py) and the socket."""

from __future__ import annotations


class AuthError(Exception):
    """Refuse the upgrade with this HTTP status and nh-connection-error-reason."""

    def __init__(self, status: int, reason: str, detail: str = "") -> None:
        super().__init__(detail or reason)
        self.status = status
        self.reason = reason
        self.detail = detail or reason
