"""Support scripts: a manager runs a product's saved Elixir snippet on a device
and sees what it printed and returned.

The device evaluates `scripts/run` {ref, text, timeout} and answers with a
`scripts/run` push carrying the same ref (docs/device-protocol.md §5.3). Devices before
device API 2.1.0 cannot do this; the hub says so instead of typing into their
console.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.utils import timezone

from devices import publish
from devices.models import Device, ScriptRun, ScriptRunStatus, SupportScript
from nerveshub.lib.semver import parse_semver
from nerveshub.tenancy.services import Actor, audit

logger = logging.getLogger(__name__)

SCRIPTS_API = (2, 1, 0)
# The ref the reference server uses for code run on every join; answers to it are
# telemetry, not a run anybody waits for.
CONNECTING_CODE_REF = "connecting_code"


class ScriptRefused(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _new_ref() -> str:
    # Hex: the ref is a path segment of the API's result route, where a "/"
    # would split it, and an argument of the CLI, where a leading "-" (one
    # URL-safe base64 ref in 64) reads as an option. The device echoes it as it is.
    return secrets.token_hex(4)


# Ad-hoc text is held to what a saved script may hold (a TextField has no
# limit of its own); the device's answer is bounded separately.
TEXT_MAX = 100_000
DEFAULT_TIMEOUT_MS = 10_000


def run_script(actor: Actor, device: Device, script: SupportScript) -> ScriptRun:
    """Send the script to the device. Raises ScriptRefused with a sentence for
    the operator when the device cannot run it now."""
    if script.product_id != device.product_id:
        raise ScriptRefused(f"{script.name!r} belongs to another product than {device.identifier}.")
    return _start_run(actor, device, script.text, script.timeout_ms, script=script)


def run_text(actor: Actor, device: Device, text: str, timeout_ms: int = DEFAULT_TIMEOUT_MS) -> ScriptRun:
    """Send ad-hoc Elixir `text` (not a saved script) to the device, with the
    same checks, audit and record as run_script. Raises ScriptRefused."""
    if not text.strip():
        raise ScriptRefused("There is no code to run.")
    if len(text) > TEXT_MAX:
        raise ScriptRefused(f"The code is longer than {TEXT_MAX} characters.")
    if not 1 <= timeout_ms <= 600_000:
        raise ScriptRefused("The timeout must be between 1 ms and 10 minutes.")
    return _start_run(actor, device, text, timeout_ms)


def _start_run(
    actor: Actor, device: Device, text: str, timeout_ms: int, *, script: SupportScript | None = None
) -> ScriptRun:
    if device.deleted_at is not None:
        raise ScriptRefused(f"{device.identifier} is deleted.")
    api = parse_semver(device.device_api_version) or (1, 0, 0)
    if api < SCRIPTS_API:
        raise ScriptRefused(
            f"{device.identifier} reports device API {device.device_api_version}; support scripts need "
            "2.1.0 or later (nerves_hub_link 2.5.0+)."
        )
    if not device.online:
        raise ScriptRefused(f"{device.identifier} is offline; scripts are not queued.")
    for _ in range(3):
        try:
            with transaction.atomic():
                run = ScriptRun.objects.create(
                    org_id=device.org_id,
                    device=device,
                    script=script,
                    ref=_new_ref(),
                    text=text,
                    timeout_ms=timeout_ms,
                    requested_by=actor if isinstance(actor, User) else None,
                )
                audit(
                    actor,
                    "device.script_run",
                    device,
                    details={"script": script.name if script is not None else None, "ref": run.ref},
                )
                publish.send_to_device(
                    device.pk, "scripts/run", {"ref": run.ref, "text": run.text, "timeout": run.timeout_ms}
                )
                return run
        except IntegrityError:
            continue  # a ref collision on this device: draw again
    raise ScriptRefused("Could not allocate a script reference; try again.")


def record_script_result(device_id: int, payload: dict[str, Any]) -> ScriptRun | None:
    """The device's answer. Compare-and-set from pending, so a late or repeated
    answer never rewrites a finished run. Returns the run it finished."""
    ref = str(payload.get("ref") or "")
    if not ref:
        return None
    if ref == CONNECTING_CODE_REF:
        logger.info("device %s: connecting code %s", device_id, payload.get("result"))
        return None
    result = str(payload.get("result") or "")
    status = ScriptRunStatus.COMPLETED if result == "completed" else ScriptRunStatus.ERROR
    fields = {
        "status": status,
        "output": str(payload.get("output") or "")[:1_000_000],
        "return_value": str(payload.get("return") or "")[:100_000],
        "reason": str(payload.get("reason") or "")[:2000],
        "finished_at": timezone.now(),
    }
    changed = ScriptRun.objects.filter(device_id=device_id, ref=ref, status=ScriptRunStatus.PENDING).update(**fields)
    if not changed:
        logger.info("device %s: answer to unknown or finished script ref %r ignored", device_id, ref)
        return None
    return ScriptRun.objects.get(device_id=device_id, ref=ref)


def push_connecting_code(device_id: int, *, seen: Device | None = None) -> bool:
    """Run the deployment's and then the device's connecting code on the device
    (docs/reference-behaviour.md §3.3). Devices before 2.1.0 are skipped: typing code into
    a console that is not open yet would be lost. Returns whether code was sent.
    `seen`: the device as just read, with its current deployment."""
    device = seen or Device.objects.select_related("deployment").filter(pk=device_id).first()
    if device is None:
        return False
    parts = [device.deployment.connecting_code if device.deployment else "", device.connecting_code]
    code = "\n".join(part for part in parts if part.strip())
    if not code:
        return False
    if (parse_semver(device.device_api_version) or (1, 0, 0)) < SCRIPTS_API:
        logger.info("device %s: connecting code skipped (device API %s)", device_id, device.device_api_version)
        return False
    with transaction.atomic():
        publish.send_to_device(device_id, "scripts/run", {"text": code, "ref": CONNECTING_CODE_REF})
    return True
