"""Refusing a write with every reason at once: a service's own rules and the
model's field rules end up in one ValidationError (field -> messages), which
each adapter shows its way (form errors, a 422)."""

from __future__ import annotations

from collections.abc import Collection

from django.core.exceptions import ValidationError
from django.db import models


def refuse_unless_valid(
    obj: models.Model, errors: dict[str, list[str]], *, exclude: Collection[str] | None = None
) -> None:
    """Raise ValidationError with `errors` (the caller's rules) and whatever
    `obj.full_clean(exclude)` finds, unless both are empty."""
    merged = {name: list(messages) for name, messages in errors.items()}
    try:
        obj.full_clean(exclude=exclude)
    except ValidationError as exc:
        for name, messages in exc.message_dict.items():
            merged.setdefault(name, []).extend(messages)
    if merged:
        raise ValidationError(merged)
