"""Device-sent structures made storable: PostgreSQL's jsonb and SQLite's JSON
have no NaN or Infinity, which a msgpack float (or a lenient JSON parser) can
carry. Stored as null instead, so a report is kept rather than refused."""

from __future__ import annotations

import math
from typing import Any


def finite(value: Any) -> Any:
    """`value` with every non-finite float replaced by None (dicts and lists
    walked; keys made strings, as JSON has no other kind)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(key): finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite(item) for item in value]
    return value
