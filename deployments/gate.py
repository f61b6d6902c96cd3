"""The canary-versus-control health gate (docs/rollout.md, "The health gate").

While a rollout runs, the devices it has already put on the new firmware (the
canary cohort) are compared with the deployment's devices still on their old
firmware (the control cohort), on five signals:

* reconnects per device-hour (reconnects since the device's window opened,
  hours since then): Poisson rates, exact conditional binomial test (normal
  approximation above 2,000 events);
* auto-reverts (devices that reverted at least once), validation failures
  (booted the firmware, never validated it), health alarms (at least one report
  with an alarm): one-sided two-proportion z-tests;
* the deployment's health metric (each device's mean over its reports): a
  one-sided Welch z-test on the device means.

"Worse by more than the margin": for shares, the canary's exceeds the
control's by more than `gate_margin_percent` percentage points; for the
reconnect rate and the metric, by more than that percent of the control's
value. Each test asks whether that holds at significance ALPHA, and a cohort is
judged on a signal only with at least `gate_min_devices` devices (for the
metric: devices that reported it). When any signal is worse, the deployment is
paused with both cohorts' figures in the reason.

A device's window opens when the gate first sees it (control), and again when
it boots the new firmware (it becomes canary and its counters start from zero),
so a canary is judged on its life on the new firmware only. The counters live
on one GateCounter row per (deployment, device): joins and attempt outcomes add
to them as they happen, health reports are folded in from the history by id
since the last evaluation, and an evaluation reads the rows of one deployment.
The statistics are plain functions, which bench/rollout_sim.py runs too.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db import connection, transaction
from django.db.models import Count, DurationField, Exists, ExpressionWrapper, F, FloatField, OuterRef, Q, Sum, Value
from django.utils import timezone

from deployments.models import Deployment, DeviceUpdate, GateCounter, UpdateStatus
from devices.models import Device, HealthReport
from nerveshub.tenancy.services import audit

# Per test. Five signals judged every INTERVAL over a rollout are many looks;
# a small alpha plus the margin keeps healthy rollouts from pausing (the false
# pause rate bench/rollout_sim.py measures, docs/benchmarks.md).
ALPHA = 0.001
INTERVAL = timedelta(seconds=15)
# Exact binomial tails above this many events cost more than they tell.
EXACT_LIMIT = 2000

_FAILED = (UpdateStatus.FAILED, UpdateStatus.EXPIRED)
# How the hub words an attempt that ended with the device back on its old
# firmware after running the new one (deployments.services, deployments.soak).
_REVERT_WORDS = ("auto-revert", "back on its old firmware after completing")


# --- Statistics ---------------------------------------------------------------------


def _upper_tail(z: float) -> float:
    return 0.5 * math.erfc(z / math.sqrt(2))


def proportion_excess_p(x1: int, n1: int, x2: int, n2: int, margin: float) -> float:
    """p-value of "share x1/n1 exceeds x2/n2 by more than `margin`" (one-sided
    z-test, unpooled standard error). Without variance (all or none in both
    cohorts) the answer is certain: 0 when the excess is there, else 1."""
    if n1 <= 0 or n2 <= 0:
        return 1.0
    p1, p2 = x1 / n1, x2 / n2
    excess = p1 - p2 - margin
    se = math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
    if se == 0:
        return 0.0 if excess > 0 else 1.0
    return _upper_tail(excess / se)


def rate_excess_p(k1: int, t1: float, k2: int, t2: float, ratio: float) -> float:
    """p-value of "rate k1/t1 exceeds `ratio` times k2/t2": given k1 + k2
    events, k1 is binomial with p0 = ratio·t1 / (ratio·t1 + t2) at the
    boundary; the upper tail P(X ≥ k1), exact up to EXACT_LIMIT events."""
    n = k1 + k2
    if n == 0 or t1 <= 0 or t2 <= 0:
        return 1.0
    p0 = ratio * t1 / (ratio * t1 + t2)
    if p0 >= 1:
        return 1.0
    if n > EXACT_LIMIT:
        sd = math.sqrt(n * p0 * (1 - p0))
        return _upper_tail((k1 - 0.5 - n * p0) / sd) if sd else (0.0 if k1 > n * p0 else 1.0)
    log_p, log_q = math.log(p0), math.log1p(-p0)
    terms = [
        math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * log_p + (n - k) * log_q
        for k in range(k1, n + 1)
    ]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


def mean_excess_p(m1: float, v1: float, n1: int, m2: float, v2: float, n2: int, margin: float) -> float:
    """p-value of "mean m1 exceeds m2 by more than `margin`" (one-sided Welch
    z-test on the device means; v are sample variances)."""
    if n1 < 2 or n2 < 2:
        return 1.0
    excess = m1 - m2 - margin
    se = math.sqrt(v1 / n1 + v2 / n2)
    if se == 0:
        return 0.0 if excess > 0 else 1.0
    return _upper_tail(excess / se)


@dataclass
class Cohort:
    devices: int = 0
    device_hours: float = 0.0
    reconnects: int = 0
    auto_reverted: int = 0
    validation_failed: int = 0
    alarmed: int = 0
    metric_devices: int = 0
    metric_mean: float = 0.0
    metric_var: float = 0.0

    @property
    def reconnect_rate(self) -> float:
        return self.reconnects / self.device_hours if self.device_hours else 0.0


@dataclass
class Finding:
    signal: str
    canary: str
    control: str
    p_value: float
    worse: bool


@dataclass
class Rules:
    margin_percent: float = 5
    min_devices: int = 20
    metric: str = ""
    higher_is_worse: bool = True
    alpha: float = ALPHA


def _share(x: int, n: int) -> str:
    return f"{x}/{n} ({100 * x / n:.1f}%)" if n else "0/0"


def compare(canary: Cohort, control: Cohort, rules: Rules) -> list[Finding]:
    """Each signal both cohorts have enough devices for, judged."""
    if canary.devices < rules.min_devices or control.devices < rules.min_devices:
        return []
    margin = rules.margin_percent / 100
    findings = []
    p = rate_excess_p(canary.reconnects, canary.device_hours, control.reconnects, control.device_hours, 1 + margin)
    findings.append(
        Finding(
            "reconnects per device-hour",
            f"{canary.reconnect_rate:.3f} ({canary.reconnects} in {canary.device_hours:.1f} h)",
            f"{control.reconnect_rate:.3f} ({control.reconnects} in {control.device_hours:.1f} h)",
            p,
            p < rules.alpha,
        )
    )
    for name, x1, x2 in (
        ("auto-reverts", canary.auto_reverted, control.auto_reverted),
        ("validation failures", canary.validation_failed, control.validation_failed),
        ("health alarms", canary.alarmed, control.alarmed),
    ):
        p = proportion_excess_p(x1, canary.devices, x2, control.devices, margin)
        findings.append(Finding(name, _share(x1, canary.devices), _share(x2, control.devices), p, p < rules.alpha))
    if rules.metric and canary.metric_devices >= rules.min_devices and control.metric_devices >= rules.min_devices:
        sign = 1 if rules.higher_is_worse else -1
        p = mean_excess_p(
            sign * canary.metric_mean,
            canary.metric_var,
            canary.metric_devices,
            sign * control.metric_mean,
            control.metric_var,
            control.metric_devices,
            margin * abs(control.metric_mean),
        )
        findings.append(
            Finding(
                f"{rules.metric} ({'higher' if rules.higher_is_worse else 'lower'} is worse)",
                f"mean {canary.metric_mean:.3g} over {canary.metric_devices} devices",
                f"mean {control.metric_mean:.3g} over {control.metric_devices} devices",
                p,
                p < rules.alpha,
            )
        )
    return findings


def reason_for(findings: list[Finding], rules: Rules) -> str:
    worse = [f for f in findings if f.worse]
    if not worse:
        return ""
    parts = [f"{f.signal}: canary {f.canary} vs control {f.control} (p={f.p_value:.2g})" for f in worse]
    return f"health gate (margin {rules.margin_percent:g}, alpha {rules.alpha:g}): " + "; ".join(parts)


# --- Counters ------------------------------------------------------------------------


def note_reconnect(device_id: int) -> None:
    """A device joined: one more reconnect in its open window (no row: no gate)."""
    GateCounter.objects.filter(device_id=device_id).update(reconnects=F("reconnects") + 1)


def _make_canary(deployment_id: int, device_id: int, now: datetime) -> None:
    # The window restarts: the canary is judged on the new firmware only.
    changed = GateCounter.objects.filter(deployment_id=deployment_id, device_id=device_id, canary=False).update(
        canary=True, since=now, reconnects=0, alarm_reports=0, metric_n=0, metric_sum=0.0
    )
    if not changed:
        GateCounter.objects.bulk_create(
            [GateCounter(deployment_id=deployment_id, device_id=device_id, canary=True, since=now)],
            ignore_conflicts=True,
        )


def note_attempt(update: DeviceUpdate) -> None:
    """An attempt of a gated deployment changed state: a device on the new
    firmware joins the canary; a revert or a validation failure counts."""
    deployment = update.deployment
    if deployment is None or not deployment.gate_enabled:
        return
    now = timezone.now()
    if update.status in (UpdateStatus.SOAKING, UpdateStatus.SUCCEEDED):
        _make_canary(deployment.pk, update.device_id, now)
        return
    if update.status not in _FAILED:
        return
    reverted = any(word in update.reason for word in _REVERT_WORDS)
    unvalidated = update.booted_at is not None and update.soak_until is None
    if not (reverted or unvalidated):
        return  # not a verdict on the running firmware (the breaker judges it)
    _make_canary(deployment.pk, update.device_id, now)
    GateCounter.objects.filter(deployment_id=deployment.pk, device_id=update.device_id).update(
        auto_reverts=F("auto_reverts") + int(reverted),
        validation_failures=F("validation_failures") + int(unvalidated),
    )


def reset(deployment_id: int) -> None:
    """Start the gate's counting afresh (an operator resumed the deployment,
    judging what it saw acceptable): every window opens now, and devices on
    the target firmware are the canary again at the next evaluation."""
    GateCounter.objects.filter(deployment_id=deployment_id).delete()
    Deployment.objects.filter(pk=deployment_id).update(gate_report={}, gate_checked_at=None)


def _enroll(deployment: Deployment, now: datetime) -> int:
    """Give every device of the deployment a counter (control, or canary when
    it runs the target already). One anti-join; returns how many were added."""
    counted = GateCounter.objects.filter(deployment_id=deployment.pk, device_id=OuterRef("pk"))
    missing = (
        Device.objects.filter(deployment=deployment, deleted_at__isnull=True)
        .exclude(Exists(counted))
        .values_list("pk", "firmware_uuid")
    )
    rows = [
        GateCounter(deployment=deployment, device_id=pk, canary=uuid == deployment.firmware.uuid, since=now)
        for pk, uuid in missing
    ]
    GateCounter.objects.bulk_create(rows, ignore_conflicts=True, batch_size=2000)
    return len(rows)


# Health reports newer than the mark, in each device's window, summed per
# device and added to its counter in one statement. An evaluation period with
# an alarm counts once: the share judged is of devices that raised one at all.
# Raw SQL because the ORM's correlated form (one subquery per counter) cost
# 35 s for 10,000 devices where this costs a fraction of a second
# (docs/benchmarks.md).
_FOLD_SQL = """
UPDATE {counter} SET
    alarm_reports = alarm_reports + new.alarmed,
    metric_n = metric_n + new.n,
    metric_sum = metric_sum + new.total
FROM (
    SELECT h.device_id AS device_id,
        MAX(CASE WHEN {alarms} > 0 THEN 1 ELSE 0 END) AS alarmed,
        SUM(CASE WHEN {value} IS NULL THEN 0 ELSE 1 END) AS n,
        COALESCE(SUM({value}), 0) AS total
    FROM {report} h
    JOIN {counter} c ON c.device_id = h.device_id AND c.deployment_id = %(deployment)s
    WHERE h.id > %(mark)s AND h.id <= %(top)s AND h.reported_at >= c.since
    GROUP BY h.device_id
) AS new
WHERE {counter}.deployment_id = %(deployment)s AND {counter}.device_id = new.device_id
"""


def _fold_sql() -> str:
    if connection.vendor == "postgresql":
        alarms, value = "jsonb_array_length(h.alarms)", "(h.metrics ->> %(metric)s)::float"
    else:
        alarms, value = "json_array_length(h.alarms)", "json_extract(h.metrics, %(path)s)"
    return _FOLD_SQL.format(
        counter=GateCounter._meta.db_table, report=HealthReport._meta.db_table, alarms=alarms, value=value
    )


def _fold_health(deployment: Deployment) -> int:
    """Add the health reports stored since the last evaluation (ids above the
    deployment's mark) to its devices' counters. Returns how many changed."""
    top = HealthReport.objects.order_by("-pk").values_list("pk", flat=True).first() or 0
    mark = deployment.gate_health_mark
    if top <= mark:
        return 0
    metric = deployment.gate_metric
    params: dict[str, int | str] = {
        "deployment": deployment.pk,
        "mark": mark,
        "top": top,
        # No metric: a key no report has (a metric name may not hold '"').
        "metric": metric or '"',
        "path": f'$."{metric}"' if metric else '$."""',
    }
    with connection.cursor() as cursor:
        cursor.execute(_fold_sql(), params)
        changed = int(cursor.rowcount)
    Deployment.objects.filter(pk=deployment.pk).update(gate_health_mark=top)
    return changed


def cohorts(deployment_id: int, now: datetime) -> tuple[Cohort, Cohort]:
    """(canary, control) from the deployment's counters: one aggregate over
    its rows, grouped by cohort."""
    mean = ExpressionWrapper(F("metric_sum") / F("metric_n"), output_field=FloatField())
    reported = Q(metric_n__gt=0)
    rows = (
        GateCounter.objects.filter(deployment_id=deployment_id)
        .values("canary")
        .annotate(
            devices=Count("pk"),
            exposure=Sum(ExpressionWrapper(Value(now) - F("since"), output_field=DurationField())),
            reconnects=Sum("reconnects"),
            auto_reverted=Count("pk", filter=Q(auto_reverts__gt=0)),
            validation_failed=Count("pk", filter=Q(validation_failures__gt=0)),
            alarmed=Count("pk", filter=Q(alarm_reports__gt=0)),
            metric_devices=Count("pk", filter=reported),
            metric_total=Sum(mean, filter=reported),
            metric_squares=Sum(mean * mean, filter=reported),
        )
        .order_by()
    )
    found = {True: Cohort(), False: Cohort()}
    for row in rows:
        n = row["metric_devices"]
        total, squares = row["metric_total"] or 0.0, row["metric_squares"] or 0.0
        metric_mean = total / n if n else 0.0
        found[row["canary"]] = Cohort(
            devices=row["devices"],
            device_hours=max(row["exposure"].total_seconds(), 0.0) / 3600 if row["exposure"] else 0.0,
            reconnects=row["reconnects"] or 0,
            auto_reverted=row["auto_reverted"],
            validation_failed=row["validation_failed"],
            alarmed=row["alarmed"],
            metric_devices=n,
            metric_mean=metric_mean,
            metric_var=max(squares - n * metric_mean**2, 0.0) / (n - 1) if n > 1 else 0.0,
        )
    return found[True], found[False]


# --- Evaluation ----------------------------------------------------------------------


@dataclass
class Evaluation:
    state: str  # off, waiting (too few devices), watching, paused
    canary: Cohort = field(default_factory=Cohort)
    control: Cohort = field(default_factory=Cohort)
    findings: list[Finding] = field(default_factory=list)
    reason: str = ""


def rules_of(deployment: Deployment) -> Rules:
    return Rules(
        margin_percent=deployment.gate_margin_percent,
        min_devices=deployment.gate_min_devices,
        metric=deployment.gate_metric,
        higher_is_worse=deployment.gate_metric_higher_is_worse,
    )


def evaluate(deployment: Deployment, now: datetime | None = None, *, force: bool = False) -> Evaluation | None:
    """Judge the cohorts of a running, gated deployment, at most once per
    INTERVAL (a compare-and-set on gate_checked_at claims the evaluation), and
    pause it when the canary is worse. Returns None when it was not due."""
    now = now or timezone.now()
    if not deployment.gate_enabled or not deployment.is_active or deployment.paused_at is not None:
        return None
    last = deployment.gate_checked_at
    if not force and last is not None and now - last < INTERVAL:
        return None
    if not Deployment.objects.filter(pk=deployment.pk, gate_checked_at=last).update(gate_checked_at=now):
        return None  # another worker evaluates it now
    _enroll(deployment, now)
    _fold_health(deployment)
    rules = rules_of(deployment)
    canary, control = cohorts(deployment.pk, now)
    findings = compare(canary, control, rules)
    reason = reason_for(findings, rules)
    state = "paused" if reason else ("watching" if findings else "waiting")
    result = Evaluation(state, canary, control, findings, reason)
    report: dict[str, Any] = {
        "checked_at": now.isoformat(),
        "state": state,
        "min_devices": rules.min_devices,
        "canary": asdict(canary),
        "control": asdict(control),
        "findings": [asdict(f) for f in findings],
    }
    with transaction.atomic():
        Deployment.objects.filter(pk=deployment.pk).update(gate_report=report)
        if reason:
            paused = Deployment.objects.filter(pk=deployment.pk, paused_at__isnull=True).update(
                paused_at=now, paused_reason=reason
            )
            if paused:
                audit("orchestrator", "deployment.paused_by_gate", deployment, details={"reason": reason})
    return result
