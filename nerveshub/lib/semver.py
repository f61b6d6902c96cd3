"""Version strings as devices report them (`device_api_version`, `console_version`)."""

from __future__ import annotations


def parse_semver(value: str) -> tuple[int, int, int] | None:
    """MAJOR.MINOR.PATCH, ignoring pre-release and build suffixes; None when the
    string is not one."""
    core = value.split("+", 1)[0].split("-", 1)[0]
    parts = core.split(".")
    if len(parts) != 3 or not all(p.isascii() and p.isdigit() for p in parts):
        return None
    return int(parts[0]), int(parts[1]), int(parts[2])
