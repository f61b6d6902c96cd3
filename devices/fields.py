"""A tag list that can be filtered the same way on PostgreSQL and SQLite.

Tags are a JSON array of strings on the device row (no join table: a device page
and the socket read them with the row). `tags__has_tag="x"` and
`tags__has_all_tags=["x", "y"]` compile to `@>` on PostgreSQL (served by the GIN
index on devices) and to json_each() on SQLite.
"""

from __future__ import annotations

import json
from typing import Any

from django.db import models
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models.lookups import Lookup
from django.db.models.sql.compiler import SQLCompiler


class TagsField(models.JSONField):
    pass


class _TagLookup(Lookup):
    prepare_rhs = False

    def _tags(self) -> list[str]:
        value = self.rhs
        return [value] if isinstance(value, str) else list(value)

    def get_db_prep_lookup(self, value: Any, connection: BaseDatabaseWrapper) -> Any:
        return ("%s", [value])

    def as_postgresql(self, compiler: SQLCompiler, connection: BaseDatabaseWrapper) -> tuple[str, Any]:
        lhs, lhs_params = self.process_lhs(compiler, connection)
        return f"{lhs} @> %s::jsonb", (*lhs_params, json.dumps(self._tags()))

    def as_sql(self, compiler: SQLCompiler, connection: BaseDatabaseWrapper) -> tuple[str, Any]:
        lhs, lhs_params = self.process_lhs(compiler, connection)
        tags = self._tags()
        if not tags:
            return "1=1", ()
        # lhs is the column expression Django compiled; only the tags are data, and they are parameters.
        parts = [f"EXISTS (SELECT 1 FROM json_each({lhs}) WHERE json_each.value = %s)" for _ in tags]  # noqa: S608
        params: list[Any] = []
        for tag in tags:
            params += [*lhs_params, tag]
        return " AND ".join(parts), tuple(params)


@TagsField.register_lookup
class HasTag(_TagLookup):
    lookup_name = "has_tag"


@TagsField.register_lookup
class HasAllTags(_TagLookup):
    lookup_name = "has_all_tags"


def normalise_tags(value: str | list[str]) -> list[str]:
    """Accept "a, b" or ["a", "b"]; drop blanks and duplicates, keep order."""
    items = value.split(",") if isinstance(value, str) else value
    seen: dict[str, None] = {}
    for item in items:
        tag = str(item).strip()
        if tag:
            seen.setdefault(tag, None)
    return list(seen)
