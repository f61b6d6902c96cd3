"""Stored JSON (audit details, health reports, locations) as people read it:
key/value pairs with dotted paths for nested values, never Python's or JSON's
own text."""

from __future__ import annotations

from typing import Any

from django import template
from django.utils.safestring import SafeString

from nerveshub.web import charts

register = template.Library()

# A report with thousands of keys (a device may send what it likes) is cut
# rather than rendered whole.
MAX_PAIRS = 200


def _scalar(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.2f}".rstrip("0").rstrip(".") if value == value else "NaN"
    return str(value)


def flatten(value: Any, prefix: str = "") -> list[tuple[str, str]]:
    """[(path, text)] for every leaf: dict keys joined with dots, lists of plain
    values joined with commas, lists of objects numbered."""
    pairs: list[tuple[str, str]] = []

    def walk(node: Any, path: str) -> None:
        if len(pairs) >= MAX_PAIRS:
            return
        if isinstance(node, dict):
            if not node and path:
                pairs.append((path, "—"))
            for key, child in node.items():
                walk(child, f"{path}.{key}" if path else str(key))
        elif isinstance(node, list):
            if all(not isinstance(item, dict | list) for item in node):
                pairs.append((path, ", ".join(_scalar(item) for item in node) or "—"))
            else:
                for index, item in enumerate(node, start=1):
                    walk(item, f"{path}[{index}]")
        else:
            pairs.append((path or "value", _scalar(node)))

    walk(value, prefix)
    if len(pairs) >= MAX_PAIRS:
        pairs = [*pairs[:MAX_PAIRS], ("…", "more values not shown")]
    return pairs


@register.filter
def as_pairs(value: Any) -> list[tuple[str, str]]:
    return flatten(value)


@register.filter
def line_chart(points: list[tuple[float, float]]) -> SafeString:
    return charts.line_chart(points)
