"""python manage.py reset_two_factor NAME

Turns two-factor sign-in off for the account NAME (user name or e-mail
address) whose owner lost both the authenticator app and the recovery codes,
after the operator has made sure who is asking. Audited as
user.two_factor_reset; the person then signs in with the password and may set
it up again.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from nerveshub.tenancy import accounts, twofactor


class Command(BaseCommand):
    help = "Turn two-factor sign-in off for an account that lost its authenticator and recovery codes."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="User name or e-mail address")

    def handle(self, *args: Any, **options: Any) -> None:
        user = accounts.user_for_sign_in(options["name"])
        if user is None:
            raise CommandError(f"no account named {options['name']!r}")
        if twofactor.reset_two_factor("command:reset_two_factor", user):
            self.stdout.write(f"two-factor sign-in is off for {user.get_username()}")
        else:
            self.stdout.write(f"{user.get_username()} had no two-factor sign-in; nothing changed")
