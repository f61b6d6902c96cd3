"""Prepare the embedded hub for a first try and say how to log in.

Run by `make run` after migrations. The generated admin password is kept in
DATA_DIR/admin_password (mode 600) so later starts can print it again.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand

from nerveshub.bootstrap import bootstrap


class Command(BaseCommand):
    help = "Create the demo organization and admin on first start, then print the admin URL and login."

    def handle(self, *args: Any, **options: Any) -> None:
        result = bootstrap("demo", "demo", "admin")
        password_file = settings.DATA_DIR / "admin_password"
        if result.admin_password is not None:
            password_file.write_text(result.admin_password + "\n")
            password_file.chmod(0o600)
        if password_file.exists():
            password_hint = password_file.read_text().strip()
        else:
            password_hint = "(set it with: python manage.py changepassword admin)"
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
                    "",
                ]
            )
        )
