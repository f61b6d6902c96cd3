"""Maintenance-window arithmetic (deployments/windows.py): days, ranges over
midnight, zones, and the nights the clocks change."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.core.exceptions import ValidationError

from deployments import windows


def utc(year: int, month: int, day: int, hour: int, minute: int) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("mon-fri 01:00-05:00 Mars/Olympus", "unknown time zone 'Mars/Olympus'"),
        ("mon-fri 01:00-05:00 ../../etc/passwd", "is not an IANA time zone name"),
        ("mon-fri 01:00-05:00 localtime", "unknown time zone 'localtime'"),
        ("mon-fri 01:00-05:00 right/UTC", "unknown time zone 'right/UTC'"),
        ("mon" + ",mon" * 100 + " 01:00-05:00 UTC", "at most 200 characters"),
        ("01:00-05:00 Europe/Berlin", "no days given"),
        ("mon,,fri 01:00-05:00 UTC", "empty day"),
        ("funday 01:00-05:00 UTC", "unknown day 'funday'"),
        ("mon 03:00-03:00 UTC", "is empty"),
        ("mon 25:00-03:00 UTC", "is not a time of day"),
        ("mon 01:00-24:30 UTC", "is not a time of day"),
        ("mon 1am-5am UTC", "is not a time such as 01:00"),
        ("mon 01:00 UTC", "is not a time range"),
        ("", "give days, a time range and a time zone"),
    ],
)
def test_it_says_why_a_window_is_not_one(text: str, reason: str) -> None:
    with pytest.raises(windows.WindowError, match=reason):
        windows.parse(text)


def test_it_reads_days_ranges_and_names_and_writes_them_back() -> None:
    assert windows.format_window(windows.parse("MON-FRI 01:00-05:00 Europe/Berlin")) == (
        "mon-fri 01:00-05:00 Europe/Berlin"
    )
    assert windows.format_window(windows.parse("fri-mon 22:00-02:00 UTC")) == "mon,fri-sun 22:00-02:00 UTC"
    assert windows.format_window(windows.parse("sunday,wed 00:00-24:00 UTC")) == "wed,sun 00:00-24:00 UTC"
    assert windows.format_window(windows.parse("daily 00:00-24:00 Asia/Kolkata")) == "daily 00:00-24:00 Asia/Kolkata"


def test_the_model_validator_names_each_bad_window() -> None:
    with pytest.raises(ValidationError) as caught:
        windows.validate_windows(["mon 01:00-02:00 UTC", "tue 01:00-01:00 UTC", "x 01:00-02:00 Nowhere/Land"])
    assert len(caught.value.messages) == 2
    assert "'tue 01:00-01:00 UTC'" in caught.value.messages[0]
    with pytest.raises(ValidationError):
        windows.validate_windows("mon 01:00-02:00 UTC")


def test_no_window_means_any_time() -> None:
    assert windows.is_open([], utc(2026, 12, 7, 13, 0))
    assert windows.closed_reason([], utc(2026, 12, 7, 13, 0)) == ""


def test_a_range_over_midnight_belongs_to_the_day_it_opens() -> None:
    lines = ["fri 22:00-02:00 UTC"]
    # 2026-12-11 is a Friday
    assert not windows.is_open(lines, utc(2026, 12, 11, 21, 59))
    assert windows.is_open(lines, utc(2026, 12, 11, 22, 0))
    assert windows.is_open(lines, utc(2026, 12, 12, 1, 59))  # Saturday morning
    assert not windows.is_open(lines, utc(2026, 12, 12, 2, 0))
    assert not windows.is_open(lines, utc(2026, 12, 12, 23, 0))  # Saturday night: not a window day
    assert not windows.is_open(lines, utc(2026, 12, 11, 1, 0))  # Friday early: Thursday's night
    assert windows.next_opening(lines, utc(2026, 12, 12, 2, 0)) == utc(2026, 12, 18, 22, 0)


def test_a_window_keeps_its_local_hours_across_the_year() -> None:
    lines = ["mon-fri 01:00-05:00 Europe/Berlin"]
    # winter (CET, UTC+1): opens at 00:00 UTC; summer (CEST, UTC+2): 23:00 UTC the day before
    assert windows.next_opening(lines, utc(2026, 12, 7, 13, 0)) == utc(2026, 12, 8, 0, 0)
    assert windows.next_opening(lines, utc(2026, 7, 6, 13, 0)) == utc(2026, 7, 6, 23, 0)
    assert windows.is_open(lines, utc(2026, 7, 6, 23, 30))
    assert not windows.is_open(lines, utc(2026, 12, 7, 23, 30))


def test_on_the_night_clocks_go_forward_a_window_in_the_skipped_hour_opens_with_the_change() -> None:
    # Berlin, 2026-03-29: 02:00 CET becomes 03:00 CEST at 01:00 UTC
    saturday = utc(2026, 3, 28, 12, 0)
    assert windows.next_opening(["sun 02:00-04:00 Europe/Berlin"], saturday) == utc(2026, 3, 29, 1, 0)
    # a window inside the skipped hour does not happen that night at all
    assert windows.next_opening(["sun 02:00-03:00 Europe/Berlin"], saturday) == utc(2026, 4, 5, 0, 0)
    assert not windows.is_open(["sun 02:00-03:00 Europe/Berlin"], utc(2026, 3, 29, 1, 30))
    # and one over the change lasts an hour less in UTC: 01:00-05:00 local is 00:00-03:00 UTC
    lines = ["sun 01:00-05:00 Europe/Berlin"]
    assert windows.is_open(lines, utc(2026, 3, 29, 2, 59))
    assert not windows.is_open(lines, utc(2026, 3, 29, 3, 0))


def test_on_the_night_clocks_go_back_a_window_over_the_repeated_hour_is_open_twice() -> None:
    # Berlin, 2026-10-25: 03:00 CEST becomes 02:00 CET at 01:00 UTC
    lines = ["sun 02:00-03:00 Europe/Berlin"]
    assert windows.next_opening(lines, utc(2026, 10, 24, 12, 0)) == utc(2026, 10, 25, 0, 0)
    open_minutes = sum(
        windows.is_open(lines, utc(2026, 10, 24, 22, 0) + timedelta(minutes=m)) for m in range(0, 6 * 60, 5)
    )
    assert open_minutes * 5 == 120


def test_zones_with_odd_offsets_and_the_southern_summer() -> None:
    # India is UTC+5:30 all year; Sydney is on summer time (UTC+11) in December
    assert windows.next_opening(["daily 02:00-03:00 Asia/Kolkata"], utc(2026, 12, 7, 13, 0)) == utc(2026, 12, 7, 20, 30)
    assert windows.next_opening(["daily 02:00-03:00 Australia/Sydney"], utc(2026, 12, 7, 13, 0)) == utc(
        2026, 12, 7, 15, 0
    )
    assert windows.next_opening(["daily 02:00-03:00 Australia/Sydney"], utc(2026, 7, 7, 13, 0)) == utc(
        2026, 7, 7, 16, 0
    )


def test_several_windows_open_at_the_earliest() -> None:
    lines = ["sat,sun 10:00-12:00 UTC", "mon-fri 01:00-05:00 America/New_York"]
    # Monday 2026-12-07 13:00 UTC: next is New York Tuesday 01:00 EST = 06:00 UTC
    assert windows.next_opening(lines, utc(2026, 12, 7, 13, 0)) == utc(2026, 12, 8, 6, 0)
    assert windows.is_open(lines, utc(2026, 12, 12, 11, 0))


def test_the_reason_names_the_local_and_the_utc_time_of_the_next_window() -> None:
    reason = windows.closed_reason(["mon-fri 01:00-05:00 Europe/Berlin"], utc(2026, 12, 7, 13, 0))
    assert reason == (
        "outside the maintenance window; next window opens Tue 2026-12-08 01:00 CET (2026-12-08 00:00 UTC)"
    )


def test_a_stage_window_replaces_the_deployments() -> None:
    assert windows.effective(["mon 01:00-02:00 UTC"], ["tue 01:00-02:00 UTC"]) == ["tue 01:00-02:00 UTC"]
    assert windows.effective(["mon 01:00-02:00 UTC"], []) == ["mon 01:00-02:00 UTC"]
    assert windows.effective(["mon 01:00-02:00 UTC"], None) == ["mon 01:00-02:00 UTC"]
