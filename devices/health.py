"""Device health: reports kept as history, the healthy / warning / unhealthy
status people see in lists, and the series the device page charts.

A `health:report` (docs/device-protocol.md §8) carries `metrics` (numbers:
cpu_usage_percent, cpu_temp, mem_used_percent, disk_used_percentage,
load_1min, … and whatever else the firmware adds) and `alarms` (a map of alarm
name to description). The latest report stays on the device row; every report
adds a HealthReport row with its numbers and alarm names.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F, Window
from django.db.models.functions import RowNumber
from django.utils import timezone

from devices.models import Device, HealthReport
from nerveshub.lib.jsonsafe import finite

HEALTHY, WARNING, UNHEALTHY, UNKNOWN = "healthy", "warning", "unhealthy", "unknown"

# Metrics charted first, in this order, with their labels; any other numeric
# metric follows under its own name.
STANDARD_METRICS = {
    "cpu_usage_percent": "CPU usage (%)",
    "cpu_temp": "CPU temperature (°C)",
    "mem_used_percent": "Memory used (%)",
    "disk_used_percentage": "Disk used (%)",
    "load_1min": "Load (1 min)",
    "load_5min": "Load (5 min)",
    "load_15min": "Load (15 min)",
}

# A report with more metrics than this keeps the first ones: a device cannot
# grow the table without bound through one report.
MAX_METRICS = 64
MAX_ALARMS = 32
MAX_NAME = 100


@dataclass(frozen=True)
class Status:
    level: str
    reasons: list[str] = field(default_factory=list)


def _numbers(metrics: object) -> dict[str, float]:
    if not isinstance(metrics, Mapping):
        return {}
    kept: dict[str, float] = {}
    for name, value in metrics.items():
        if len(kept) >= MAX_METRICS:
            break
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        number = float(value)
        if math.isfinite(number) and isinstance(name, str) and name and len(name) <= MAX_NAME:
            kept[name] = number
    return kept


def _alarm_names(alarms: object) -> list[str]:
    if isinstance(alarms, Mapping):
        names: Iterable[object] = alarms.keys()
    elif isinstance(alarms, list):
        names = alarms
    else:
        return []
    return [str(name)[:MAX_NAME] for name in names][:MAX_ALARMS]


def record_health(device_id: int, report: dict[str, object]) -> None:
    """Store a device's health report: the latest on the device, its numbers
    and alarms in the history."""
    now = timezone.now()
    report = finite(report)
    with transaction.atomic():
        changed = Device.objects.filter(pk=device_id).update(health=report, health_reported_at=now)
        if changed:
            HealthReport.objects.create(
                device_id=device_id,
                reported_at=now,
                metrics=_numbers(report.get("metrics")),
                alarms=_alarm_names(report.get("alarms")),
            )


def status_of(health: object, thresholds: Mapping[str, tuple[float, float]] | None = None) -> Status:
    """healthy / warning / unhealthy from a report's metrics against (warning,
    unhealthy) thresholds, HEALTH_THRESHOLDS by default; an alarm is a warning.
    A device that never reported is unknown."""
    if not isinstance(health, Mapping):
        return Status(UNKNOWN)
    limits = thresholds if thresholds is not None else settings.HEALTH_THRESHOLDS
    metrics = _numbers(health.get("metrics"))
    level, reasons = HEALTHY, []
    for name, (warn, bad) in limits.items():
        value = metrics.get(name)
        if value is None:
            continue
        if value >= bad:
            level = UNHEALTHY
            reasons.append(f"{STANDARD_METRICS.get(name, name)} {value:g} ≥ {bad:g}")
        elif value >= warn:
            level = level if level == UNHEALTHY else WARNING
            reasons.append(f"{STANDARD_METRICS.get(name, name)} {value:g} ≥ {warn:g}")
    alarms = _alarm_names(health.get("alarms"))
    if alarms:
        level = level if level == UNHEALTHY else WARNING
        reasons.append("alarms: " + ", ".join(alarms))
    return Status(level, reasons)


def device_status(device: Device) -> Status:
    """The device's status against its product's thresholds. The product must
    be loaded with the device (select_related): a list pays no query per row."""
    return status_of(device.health, thresholds_for(device.product.health_thresholds))


# A product names at most this many metrics of its own.
MAX_THRESHOLDS = 32


def threshold_errors(value: object) -> dict[str, list[str]]:
    """What is wrong with a product's thresholds, {metric: [warning,
    unhealthy]}, by field (empty: nothing). Both limits are finite numbers and
    the warning is not above the unhealthy one."""
    field_name = "health_thresholds"
    if not isinstance(value, Mapping):
        return {field_name: ["Thresholds are a map of metric name to [warning, unhealthy]."]}
    if len(value) > MAX_THRESHOLDS:
        return {field_name: [f"At most {MAX_THRESHOLDS} metrics."]}
    problems = []
    for name, limits in value.items():
        label = STANDARD_METRICS.get(name, name) if isinstance(name, str) else repr(name)
        if not isinstance(name, str) or not name or len(name) > MAX_NAME:
            problems.append(f"{label}: a metric name is 1 to {MAX_NAME} characters.")
        elif (
            not isinstance(limits, list | tuple)
            or len(limits) != 2
            or not all(isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) for x in limits)
        ):
            problems.append(f"{label}: give a warning and an unhealthy limit, both numbers.")
        elif limits[0] > limits[1]:
            problems.append(f"{label}: the warning limit ({limits[0]:g}) is above the unhealthy one ({limits[1]:g}).")
    return {field_name: problems} if problems else {}


def thresholds_for(overrides: object) -> dict[str, tuple[float, float]]:
    """HEALTH_THRESHOLDS with a product's own limits in place of the defaults
    for the metrics it names. Entries the rule would refuse are skipped, so a
    row written around the service never breaks a page."""
    limits: dict[str, tuple[float, float]] = dict(settings.HEALTH_THRESHOLDS)
    if isinstance(overrides, Mapping):
        for name, pair in overrides.items():
            if not threshold_errors({name: pair}):
                limits[name] = (float(pair[0]), float(pair[1]))
    return limits


@dataclass(frozen=True)
class Series:
    name: str
    label: str
    points: list[tuple[float, float]]  # (unix time, value), oldest first

    @property
    def last(self) -> float:
        return self.points[-1][1]


def history(device: Device, limit: int = 200) -> tuple[list[Series], list[HealthReport]]:
    """The device's last `limit` reports as one series per metric (standard
    ones first), and the reports that carried alarms (newest first)."""
    reports = list(device.health_reports.order_by("-reported_at")[:limit])
    reports.reverse()
    values: dict[str, list[tuple[float, float]]] = {}
    for report in reports:
        for name, value in _numbers(report.metrics).items():
            values.setdefault(name, []).append((report.reported_at.timestamp(), value))
    order = [name for name in STANDARD_METRICS if name in values] + sorted(set(values) - set(STANDARD_METRICS))
    series = [Series(name, STANDARD_METRICS.get(name, name), values[name]) for name in order]
    alarmed = [report for report in reversed(reports) if report.alarms]
    return series, alarmed


def prune_health_history(now: Any = None) -> int:
    """Delete reports older than HEALTH_HISTORY_DAYS and, per device, all but
    the newest HEALTH_HISTORY_PER_DEVICE. Returns how many went."""
    cutoff = (now or timezone.now()) - timedelta(days=settings.HEALTH_HISTORY_DAYS)
    deleted, _ = HealthReport.objects.filter(reported_at__lt=cutoff).delete()
    ranked = HealthReport.objects.annotate(
        rank=Window(RowNumber(), partition_by=[F("device_id")], order_by=F("reported_at").desc())
    ).filter(rank__gt=settings.HEALTH_HISTORY_PER_DEVICE)
    surplus = list(ranked.values_list("pk", flat=True)[:10_000])
    if surplus:
        more, _ = HealthReport.objects.filter(pk__in=surplus).delete()
        deleted += more
    return deleted
