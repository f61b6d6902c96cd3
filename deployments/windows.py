"""Maintenance windows: when a deployment (or one of its stages) may start
updates (docs/rollout.md, "Maintenance windows").

A window is written as one line, `<days> <HH:MM>-<HH:MM> <IANA zone>`:

    mon-fri 01:00-05:00 Europe/Berlin
    sat,sun 22:00-02:00 America/New_York
    daily 00:00-24:00 UTC

Days are three-letter names, comma-separated, with ranges (`mon-fri`,
`fri-mon` wraps) or `daily`. The range is local wall-clock time in the zone;
an end before the start crosses midnight, and the day named is the day the
window opens (`fri 22:00-02:00` is open until Saturday 02:00). Wall-clock
time is what is compared, so a window keeps its local hours across DST
changes: on the night clocks go forward a window inside the skipped hour does
not open that night, and on the night they go back a window over the
repeated hour is open through both of its passes.

The module is pure (no database): rollout.py asks it whether a moment is
inside a deployment's windows, and the forms, the API and the preview ask it
to explain why not and when the next window opens.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from django.core.exceptions import ValidationError

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
SYNTAX = "<days> <HH:MM>-<HH:MM> <time zone>, e.g. mon-fri 01:00-05:00 Europe/Berlin"
# A zone name as the IANA database spells them; anything else (paths, dots)
# never reaches zoneinfo's file lookup.
_ZONE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_+\-]*(/[A-Za-z0-9_+\-]+){0,2}$")
_CLOCK = re.compile(r"^(\d{1,2}):(\d{2})$")
MAX_WINDOWS = 20
MAX_LINE = 200


class WindowError(ValueError):
    """Why a window's text is not a window."""


@dataclass(frozen=True)
class Window:
    days: frozenset[int]  # 0 = Monday, as datetime.weekday()
    start: int  # minutes after local midnight
    end: int  # minutes after local midnight, 1..1440; <= start crosses midnight
    zone: ZoneInfo

    @property
    def crosses_midnight(self) -> bool:
        return self.end <= self.start

    def is_open(self, moment: datetime) -> bool:
        local = moment.astimezone(self.zone)
        minute = local.hour * 60 + local.minute
        day = local.weekday()
        if not self.crosses_midnight:
            return day in self.days and self.start <= minute < self.end
        return (day in self.days and minute >= self.start) or ((day - 1) % 7 in self.days and minute < self.end)

    def openings_from(self, moment: datetime) -> list[datetime]:
        """Instants on or after `moment` (within eight days) when this window
        may open: its start on each of its days, both readings of a start in
        a repeated hour, and a DST change that lands inside the window (a
        start in a skipped hour opens with the change)."""
        local_day = moment.astimezone(self.zone).date()
        found: list[datetime] = []
        for offset in range(-1, 9):
            day = local_day + timedelta(days=offset)
            if day.weekday() not in self.days:
                continue
            for fold in (0, 1):
                opening = _instant(day, self.start, fold, self.zone)
                if opening >= moment:
                    found.append(opening)
        found.extend(t for t in _transitions(self.zone, moment, moment + timedelta(days=9)) if t >= moment)
        return found


def _instant(day: date, minute: int, fold: int, zone: ZoneInfo) -> datetime:
    wall = datetime.combine(day, time(minute // 60, minute % 60), tzinfo=zone).replace(fold=fold)
    return wall.astimezone(UTC)


def _transitions(zone: ZoneInfo, start: datetime, end: datetime) -> list[datetime]:
    """The instants in [start, end) at which the zone's UTC offset changes,
    to the second (found hour by hour, then by halving)."""
    found = []
    step = timedelta(hours=1)
    here = start.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    offset = here.astimezone(zone).utcoffset()
    while here < end:
        following = here + step
        next_offset = following.astimezone(zone).utcoffset()
        if next_offset != offset:
            low, high = here, following
            while high - low > timedelta(seconds=1):
                middle = low + (high - low) / 2
                if middle.astimezone(zone).utcoffset() == offset:
                    low = middle
                else:
                    high = middle
            found.append(high.replace(microsecond=0))
            offset = next_offset
        here = following
    return found


@cache
def _known_zones() -> frozenset[str]:
    # The system's IANA database (or the tzdata package): names such as
    # "localtime" or "posixrules", which are files but not zones, are not in it.
    # "localtime" is the host's own zone where the database links it: a
    # window must not change with the machine it runs on.
    return frozenset(available_timezones()) - {"localtime", "posixrules", "Factory"}


def _zone(name: str) -> ZoneInfo:
    if not _ZONE_NAME.match(name):
        raise WindowError(f"{name!r} is not an IANA time zone name such as Europe/Berlin")
    if name not in _known_zones():
        raise WindowError(f"unknown time zone {name!r} (use an IANA name such as Europe/Berlin)")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise WindowError(f"unknown time zone {name!r} (use an IANA name such as Europe/Berlin)") from None


_FULL_DAY_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def _day(name: str) -> int:
    """0-6 for a day's short or full name, -1 for anything else."""
    if name in DAY_NAMES:
        return DAY_NAMES.index(name)
    if name in _FULL_DAY_NAMES:
        return _FULL_DAY_NAMES.index(name)
    return -1


def _days(text: str) -> frozenset[int]:
    if text in ("daily", "*", "every"):
        return frozenset(range(7))
    days: set[int] = set()
    for part in text.split(","):
        if not part:
            raise WindowError(f"empty day in {text!r}")
        first, dash, last = part.partition("-")
        start = _day(first)
        if start < 0:
            raise WindowError(f"unknown day {first!r} (use mon, tue, wed, thu, fri, sat, sun or daily)")
        if not dash:
            days.add(start)
            continue
        stop = _day(last)
        if stop < 0:
            raise WindowError(f"unknown day {last!r} (use mon, tue, wed, thu, fri, sat, sun or daily)")
        days.update((start + i) % 7 for i in range((stop - start) % 7 + 1))
    return frozenset(days)


def _clock(text: str, *, end: bool) -> int:
    match = _CLOCK.match(text)
    if match is None:
        raise WindowError(f"{text!r} is not a time such as 01:00")
    hours, minutes = int(match[1]), int(match[2])
    if minutes > 59 or hours > 24 or (hours == 24 and (minutes or not end)):
        raise WindowError(f"{text!r} is not a time of day (00:00 to 24:00)")
    return hours * 60 + minutes


def parse(text: object) -> Window:
    """A window from its one-line form; WindowError says what is wrong."""
    if not isinstance(text, str):
        raise WindowError(f"a window is a line of text: {SYNTAX}")
    if len(text) > MAX_LINE:
        raise WindowError(f"a window is at most {MAX_LINE} characters: {SYNTAX}")
    parts = text.strip().lower().split()
    if len(parts) != 3:
        if len(parts) == 2 and "-" in parts[0] and ":" in parts[0]:
            raise WindowError(f"no days given: {SYNTAX}")
        raise WindowError(f"give days, a time range and a time zone: {SYNTAX}")
    days_text, range_text, _ = parts
    zone_name = text.strip().split()[2]  # zone names are case-sensitive
    days = _days(days_text)
    if not days:
        raise WindowError("no days given")
    first, dash, last = range_text.partition("-")
    if not dash:
        raise WindowError(f"{range_text!r} is not a time range such as 01:00-05:00")
    start, end = _clock(first, end=False), _clock(last, end=True)
    if start == end:
        raise WindowError(f"the range {range_text} is empty (start and end are the same time)")
    return Window(days=days, start=start, end=end, zone=_zone(zone_name))


def format_window(window: Window) -> str:
    """The canonical line of a window (what the forms show)."""
    days = "daily" if len(window.days) == 7 else _day_runs(sorted(window.days))
    return f"{days} {_hhmm(window.start)}-{_hhmm(window.end)} {window.zone.key}"


def _hhmm(minute: int) -> str:
    return f"{minute // 60:02}:{minute % 60:02}"


def _day_runs(days: list[int]) -> str:
    runs: list[list[int]] = []
    for day in days:
        if runs and runs[-1][-1] == day - 1:
            runs[-1].append(day)
        else:
            runs.append([day])
    return ",".join(DAY_NAMES[run[0]] if len(run) == 1 else f"{DAY_NAMES[run[0]]}-{DAY_NAMES[run[-1]]}" for run in runs)


def validate_windows(value: object) -> None:
    """The model fields' validator: every message names the window and why."""
    if not isinstance(value, list):
        raise ValidationError(f"Windows are a list of lines: {SYNTAX}.")
    if len(value) > MAX_WINDOWS:
        raise ValidationError(f"At most {MAX_WINDOWS} windows.")
    problems = []
    for line in value:
        try:
            parse(line)
        except WindowError as exc:
            problems.append(f"Window {str(line)[:80]!r}: {exc}.")
    if problems:
        raise ValidationError(problems)


def parse_all(lines: Iterable[str]) -> list[Window]:
    # Stored windows were validated on save; one that no longer parses (a zone
    # the system's database dropped) is left out rather than stopping rollouts.
    windows = []
    for line in lines:
        try:
            windows.append(parse(line))
        except WindowError:
            continue
    return windows


def is_open(lines: Sequence[str], moment: datetime) -> bool:
    """Whether `moment` is inside one of the windows (no windows: always)."""
    if not lines:
        return True
    return any(window.is_open(moment) for window in parse_all(lines))


def next_opening(lines: Sequence[str], moment: datetime) -> datetime | None:
    """The first instant after `moment` at which one of the windows is open
    (None: never within eight days, or no valid window)."""
    windows = parse_all(lines)
    candidates = sorted({t for window in windows for t in window.openings_from(moment)})
    for candidate in candidates:
        if any(window.is_open(candidate) for window in windows):
            return candidate
    return None


def effective(deployment_windows: Sequence[str], stage_windows: Sequence[str] | None) -> Sequence[str]:
    """A stage's own windows replace the deployment's while that stage runs."""
    return stage_windows if stage_windows else deployment_windows


def closed_reason(lines: Sequence[str], moment: datetime) -> str:
    """ "" when updates may start at `moment`, else why not and when they may."""
    if is_open(lines, moment):
        return ""
    opening = next_opening(lines, moment)
    if opening is None:
        return "outside the maintenance window"
    windows = parse_all(lines)
    zone = next((w.zone for w in windows if w.is_open(opening)), windows[0].zone)
    local = opening.astimezone(zone)
    return (
        f"outside the maintenance window; next window opens {local:%a %Y-%m-%d %H:%M} {local.tzname()} "
        f"({opening:%Y-%m-%d %H:%M} UTC)"
    )
