"""Prepare the embedded hub for a first try and say how to log in.

Run by `make run` after migrations. The admin password is printed only by the
start that created it; it is also kept in DATA_DIR/admin_password (mode 600)
for as long as it is the admin's password, and the file is removed once
somebody changes it, so neither the banner nor the file ever shows a password
that fails at login.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.core.management.base import BaseCommand

from nerveshub.bootstrap import bootstrap

SET_ONE = "python manage.py changepassword admin"


class Command(BaseCommand):
    help = "Create the demo organization and admin on first start, then print the admin URL and login."

    def handle(self, *args: Any, **options: Any) -> None:
        result = bootstrap("demo", "demo", "admin")
        password_file = settings.DATA_DIR / "admin_password"
        if result.admin_password is not None:
            password_file.write_text(result.admin_password + "\n")
            password_file.chmod(0o600)
            password_hint = result.admin_password
        elif password_file.exists() and _still_valid(result.admin_username, password_file.read_text().strip()):
            password_hint = f"the one printed at the first start (kept in {password_file}); to change it: {SET_ONE}"
        else:
            password_file.unlink(missing_ok=True)
            password_hint = f"not shown (set before this start); to set a new one: {SET_ONE}"
        self.stdout.write(
            "\n".join(
                [
                    "",
                    f"NervesHub admin:  {settings.PUBLIC_URL}/admin/",
                    f"  username:       {result.admin_username}",
                    f"  password:       {password_hint}",
                    "Devices (shared secret, nerves_hub_link):",
                    f"  host:           {settings.PUBLIC_URL.replace('http', 'ws', 1)}",
                    f"  product_key:    {result.product_key}",
                    f"  product_secret: {result.product_secret}",
                    f"Organization pages: {settings.PUBLIC_URL}/ (the same login)",
                    "Firmware is accepted only for the product its meta-product names: build it",
                    "for product 'demo', or add a product with your firmware's name at",
                    f"  {settings.PUBLIC_URL}/org/demo/products/",
                    "",
                ]
            )
        )


def _still_valid(username: str, password: str) -> bool:
    user = User.objects.filter(username=username).first()
    return user is not None and bool(password) and user.check_password(password)
