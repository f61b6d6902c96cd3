"""python manage.py bootstrap --org ORG --product PRODUCT

Prints one JSON object: org, product, product_key, product_secret,
admin_username, and admin_password when the admin user was created by this call.
"""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from nerveshub.bootstrap import bootstrap


class Command(BaseCommand):
    help = "Create or reuse an organization, its admin user, a product and a product shared secret."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--org", required=True, help="Organization name")
        parser.add_argument("--product", required=True, help="Product name")
        parser.add_argument("--admin", default="admin", help="Admin username (default: admin)")

    def handle(self, *args: Any, **options: Any) -> None:
        result = bootstrap(options["org"], options["product"], options["admin"])
        self.stdout.write(json.dumps(result.as_dict()))
