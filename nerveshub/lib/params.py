"""Integers from query strings and forms, bounded before they reach a query.

Every integer a client sends in a query string or form (a page number, an id in
a filter, a keyset cursor) is read here: unbounded, "99999999999999999999" passes
`isdigit()` and `int()` and then fails in the database (SQLite cannot bind it,
PostgreSQL refuses it past bigint), which answered 500. The API declares its
integer query parameters with `api_int` (out of range is a 422 naming the field);
the organization pages read theirs with `parse_int` and ignore what is not one,
saying so.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

# The largest value of a bigint column (ids).
BIGINT_MAX = 2**63 - 1
# Page numbers: far past any real list, and (page - 1) * page size stays a bigint.
MAX_PAGE = 2**31 - 1


def parse_int(value: object, *, minimum: int = 1, maximum: int = BIGINT_MAX) -> int | None:
    """The integer `value` spells, or None when it spells none in
    [minimum, maximum]. Only ASCII digits count: "²" and "٣" pass `isdigit()`
    (and "٣" passes `int()`), "1e400", "+1" and " 1" are not ids either."""
    if not isinstance(value, str) or not (value.isascii() and value.isdigit()):
        return None
    if len(value.lstrip("0")) > len(str(maximum)):
        return None  # not even converted: the digit string may be huge
    number = int(value)
    return number if minimum <= number <= maximum else None


def api_int(default: int, *, minimum: int = 1, maximum: int = BIGINT_MAX, description: str | None = None) -> Any:
    """A bounded integer query parameter of the API: its range is in the
    OpenAPI document, and a value outside it is refused with 422."""
    return Field(default, ge=minimum, le=min(maximum, BIGINT_MAX), description=description)
