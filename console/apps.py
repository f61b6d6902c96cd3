from django.apps import AppConfig


class ConsoleConfig(AppConfig):
    name = "console"
    verbose_name = "Remote console"

    def ready(self) -> None:
        # Imported only now: the models are not loaded when apps.py is.
        from nerveshub.tenancy.models import Role
        from nerveshub.tenancy.redaction import restrict_details

        # Typed lines are shell input: passwords typed at a prompt that does not
        # echo, tokens pasted into a command. Only the org's admins read them in
        # the audit log (docs/console.md); the other roles see that a
        # line was typed, not what.
        restrict_details("console.input", ("text",), Role.ADMIN)
