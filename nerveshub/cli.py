"""`nerveshub`: the command line client of the REST API, for CI pipelines.

It needs nothing beyond the standard library (urllib), except `device cert
create`, which signs certificates with `cryptography`. It does not set Django
up: it talks to a hub over HTTP only.

Exit codes: 0 done; 1 the hub refused (its message is printed on stderr) or the
firmware was rejected; 2 usage error (bad arguments, not logged in, unreadable
file); 3 the hub could not be reached.

Configuration, strongest first: --url/--token, NERVESHUB_URL/NERVESHUB_TOKEN,
the file written by `nerveshub login` ($XDG_CONFIG_HOME/nerveshub/config.json,
or --config PATH / NERVESHUB_CONFIG). --org/--product default to
NERVESHUB_ORG/NERVESHUB_PRODUCT.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, NoReturn

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
CHUNK = 256 * 1024
USER_AGENT = "nerveshub-cli/1"


class CliError(Exception):
    """Ends the command with `code`, printing `message` on stderr."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def usage_error(message: str) -> NoReturn:
    raise CliError(message, EXIT_USAGE)


# --- Configuration ------------------------------------------------------------------


def default_config_path() -> Path:
    if os.environ.get("NERVESHUB_CONFIG"):
        return Path(os.environ["NERVESHUB_CONFIG"])
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "nerveshub" / "config.json"


def read_config(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        usage_error(f"cannot read the configuration {path}: {exc}")
    return {k: str(v) for k, v in data.items() if k in ("url", "token")} if isinstance(data, dict) else {}


def write_config(path: Path, url: str, token: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # Created 0600 from the start: the token is never readable by others, not even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump({"url": url, "token": token}, out, indent=2)
        out.write("\n")
    os.chmod(path, 0o600)


# --- HTTP -----------------------------------------------------------------------------


@dataclass
class Hub:
    url: str
    token: str
    timeout: float = 60.0

    def request(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
        data: Any = None
        all_headers = {"Authorization": f"token {self.token}", "Accept": "application/json", "User-Agent": USER_AGENT}
        if isinstance(body, Multipart):
            data = body.chunks()
            all_headers["Content-Type"] = body.content_type
            all_headers["Content-Length"] = str(body.length)
        elif body is not None:
            data = json.dumps(body).encode()
            all_headers["Content-Type"] = "application/json"
        all_headers.update(headers or {})
        # The scheme is checked to be http(s) in _hub(), before any request.
        url = self.url + "/api/v1" + path
        request = urllib.request.Request(url, data=data, headers=all_headers, method=method)  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raise CliError(_error_message(exc.code, exc.read()), EXIT_REFUSED) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise CliError(f"cannot reach {self.url}: {reason}", EXIT_UNREACHABLE) from None
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            # Something other than the hub answered (a proxy's page, a wrong URL).
            raise CliError(f"{url} did not answer with JSON: {raw[:200]!r}", EXIT_REFUSED) from None

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, body if body is not None else {})

    def patch(self, path: str, body: Any) -> Any:
        return self.request("PATCH", path, body)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)


def _error_message(status: int, raw: bytes) -> str:
    try:
        errors = json.loads(raw)["errors"]
    except (ValueError, KeyError, TypeError):
        text = raw.decode(errors="replace").strip()[:300]
        return f"HTTP {status}: {text or 'no details'}"
    parts = []
    for field, messages in errors.items():
        text = "; ".join(str(m) for m in messages) if isinstance(messages, list) else str(messages)
        parts.append(text if field == "detail" else f"{field}: {text}")
    return f"HTTP {status}: {' / '.join(parts)}"


class Multipart:
    """A multipart/form-data body with one file field, sent in chunks: the file is
    never read into memory whole (firmware can be hundreds of megabytes)."""

    def __init__(self, field: str, path: Path) -> None:
        self.path = path
        self.boundary = "nerveshub-" + secrets.token_hex(16)
        filename = path.name.replace('"', "_").replace("\r", "_").replace("\n", "_")
        self.head = (
            f"--{self.boundary}\r\n"
            f'Content-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        self.tail = f"\r\n--{self.boundary}--\r\n".encode()
        self.size = path.stat().st_size

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    @property
    def length(self) -> int:
        return len(self.head) + self.size + len(self.tail)

    def chunks(self) -> Iterator[bytes]:
        yield self.head
        with self.path.open("rb") as source:
            while chunk := source.read(CHUNK):
                yield chunk
        yield self.tail


# --- Output -----------------------------------------------------------------------------


@dataclass
class Output:
    as_json: bool
    stream: IO[str]

    def emit(self, data: Any, human: Callable[[Any], str]) -> None:
        text = json.dumps(data, indent=2, sort_keys=True) if self.as_json else human(data)
        if text:
            print(text, file=self.stream)


def _table(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    if not rows:
        return "(none)"
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "-"
    if isinstance(value, dict):
        return " ".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def _fields(data: dict[str, Any], names: Sequence[str]) -> str:
    return "\n".join(f"{n}: {_cell(data.get(n))}" for n in names)


# --- Commands ---------------------------------------------------------------------------


def _q(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def _product_path(args: argparse.Namespace) -> str:
    return f"/orgs/{_q(_need(args, 'org'))}/products/{_q(_need(args, 'product'))}"


def _need(args: argparse.Namespace, name: str) -> str:
    value = getattr(args, name, None) or os.environ.get(f"NERVESHUB_{name.upper()}")
    if not value:
        usage_error(f"--{name} is required (or set NERVESHUB_{name.upper()})")
    return str(value)


def _read_file(path: str) -> str:
    try:
        return Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        usage_error(f"cannot read {path}: {exc}")


def cmd_login(args: argparse.Namespace, hub: Hub, out: Output) -> int:
    me = hub.get("/users/me")
    write_config(args.config_path, hub.url, hub.token)
    out.emit(me, lambda d: f"logged in to {hub.url} as {d['username']} (saved to {args.config_path})")
    return EXIT_OK


def cmd_whoami(args: argparse.Namespace, hub: Hub, out: Output) -> int:
    out.emit(hub.get("/users/me"), lambda d: f"{d['username']} on {hub.url}")
    return EXIT_OK


FIRMWARE_COLUMNS = ("id", "uuid", "version", "status", "platform", "architecture", "signing_key", "created_at")
FIRMWARE_FIELDS = (*FIRMWARE_COLUMNS, "rejected_reason", "size", "sha256")


def cmd_firmware_publish(args: argparse.Namespace, hub: Hub, out: Output) -> int:
    path = Path(args.file)
    if not path.is_file():
        usage_error(f"{path}: no such file")
    base = _product_path(args) + "/firmwares"
    firmware = hub.request("POST", base, Multipart("firmware", path))
    if args.wait:
        deadline = time.monotonic() + args.timeout
        while firmware["status"] == "pending":
            if time.monotonic() > deadline:
                raise CliError(f"firmware {firmware['id']} still pending after {args.timeout:g} s", EXIT_REFUSED)
            time.sleep(args.interval)
            firmware = hub.get(f"{base}/{firmware['id']}")
    out.emit(firmware, lambda d: _fields(d, FIRMWARE_FIELDS))
    if firmware["status"] == "rejected":
        print(f"firmware rejected: {firmware['rejected_reason']}", file=sys.stderr)
        return EXIT_REFUSED
    return EXIT_OK


def cmd_firmware_list(args: argparse.Namespace, hub: Hub, out: Output) -> int:
    out.emit(hub.get(_product_path(args) + "/firmwares"), lambda d: _table(d, FIRMWARE_COLUMNS))
    return EXIT_OK


def cmd_firmware_get(args: argparse.Namespace, hub: Hub, out: Output) -> int:
    out.emit(hub.get(f"{_product_path(args)}/firmwares/{_q(args.ref)}"), lambda d: _fields(d, FIRMWARE_FIELDS))
    return EXIT_OK


def cmd_firmware_delete(args: argparse.Namespace, hub: Hub, out: Output) -> int:
    hub.delete(f"{_product_path(args)}/firmwares/{_q(args.ref)}")
    out.emit({"deleted": args.ref}, lambda d: f"deleted firmware {d['deleted']}")
    return EXIT_OK


def cmd_key_add(args: argparse.Namespace, hub: Hub, out: Output) -> int:
    key = _read_file(args.file).strip()
    created = hub.post(f"/orgs/{_q(_need(args, 'org'))}/keys", {"name": args.name, "key": key})
    out.emit(created, lambda d: f"added key {d['name']}")
    return EXIT_OK


def cmd_key_list(args: argparse.Namespace, hub: Hub, out: Output) -> int:
    out.emit(hub.get(f"/orgs/{_q(_need(args, 'org'))}/keys"), lambda d: _table(d, ("name", "key", "created_at")))
    return EXIT_OK


DEVICE_COLUMNS = ("identifier", "tags", "connection_status", "firmware_version", "deployment", "last_seen_at")


def cmd_device_create(args: argparse.Namespace, hub: Hub, out: Output) -> int:
    body = {"identifier": args.identifier, "description": args.description or "", "tags": _split_tags(args.tag)}
    created = hub.post(_product_path(args) + "/devices", body)
    out.emit(created, lambda d: f"created device {d['identifier']}")
    return EXIT_OK


def cmd_device_list(args: argparse.Namespace, hub: Hub, out: Output) -> int:
    query = {k: v for k, v in {"tag": args.tag, "search": args.search}.items() if v}
    devices: list[dict[str, Any]] = []
    page = 1
    while True:
        params = urllib.parse.urlencode({**query, "page": page, "page_size": 500})
        body = hub.get(f"{_product_path(args)}/devices?{params}")
        devices += body["devices"]
        if len(devices) >= body["total"] or not body["devices"]:
            break
        page += 1
    out.emit(devices, lambda d: _table(d, DEVICE_COLUMNS))
    return EXIT_OK


def cmd_device_get(args: argparse.Namespace, hub: Hub, out: Output) -> int:
    device = hub.get(f"{_product_path(args)}/devices/{_q(args.identifier)}")
    out.emit(device, lambda d: _fields(d, (*DEVICE_COLUMNS, "description", "firmware_uuid", "updates_enabled")))
    return EXIT_OK


def cmd_device_tag(args: argparse.Namespace, hub: Hub, out: Output) -> int:
    changed = hub.patch(f"{_product_path(args)}/devices/{_q(args.identifier)}", {"tags": _split_tags(args.tags)})
    out.emit(changed, lambda d: f"{d['identifier']}: {_cell(d['tags'])}")
    return EXIT_OK


def cmd_device_delete(args: argparse.Namespace, hub: Hub, out: Output) -> int:
    hub.delete(f"{_product_path(args)}/devices/{_q(args.identifier)}")
    out.emit({"deleted": args.identifier}, lambda d: f"deleted device {d['deleted']}")
    return EXIT_OK


def cmd_device_update(args: argparse.Namespace, hub: Hub, out: Output) -> int:
    path = f"{_product_path(args)}/devices/{_q(args.identifier)}/update"
    update = hub.post(path, {"firmware": args.firmware})
    out.emit(update, lambda d: f"update {d['id']}: {args.identifier} → {d['version']} ({d['firmware']}), {d['status']}")
    return EXIT_OK


def cmd_device_move(args: argparse.Namespace, hub: Hub, out: Output) -> int:
    moved = hub.post(f"{_product_path(args)}/devices/{_q(args.identifier)}/move", {"product": args.to})
    out.emit(moved, lambda d: f"moved {d['identifier']} to {args.to}")
    return EXIT_OK


SCRIPT_FIELDS = ("ref", "script", "status", "reason", "created_at", "finished_at", "return_value", "output")


def _script_run_exit(run: dict[str, Any]) -> int:
    return EXIT_REFUSED if run["status"] == "error" else EXIT_OK


def cmd_device_script_run(args: argparse.Namespace, hub: Hub, out: Output) -> int:
    given = [v for v in (args.script, args.text, args.file) if v is not None]
    if len(given) != 1:
        usage_error("give one of --script NAME, --text CODE or --file PATH")
    body: dict[str, Any] = {"script": args.script} if args.script is not None else {}
    if args.script is None:
        body["text"] = args.text if args.text is not None else _read_file(args.file)
        if args.timeout_ms is not None:
            body["timeout_ms"] = args.timeout_ms
    base = f"{_product_path(args)}/devices/{_q(args.identifier)}/scripts"
    run = hub.post(base, body)
    if args.wait:
        deadline = time.monotonic() + args.timeout
        while run["status"] == "pending":
            if time.monotonic() > deadline:
                raise CliError(f"no answer to script run {run['ref']} after {args.timeout:g} s", EXIT_REFUSED)
            time.sleep(args.interval)
            run = hub.get(f"{base}/{_q(run['ref'])}")
        out.emit(run, lambda d: _fields(d, SCRIPT_FIELDS))
        return _script_run_exit(run)
    out.emit(
        run, lambda d: f"sent: script run {d['ref']} (read it with `device script get {args.identifier} {d['ref']}`)"
    )
    return EXIT_OK


def cmd_device_script_get(args: argparse.Namespace, hub: Hub, out: Output) -> int:
    run = hub.get(f"{_product_path(args)}/devices/{_q(args.identifier)}/scripts/{_q(args.ref)}")
    out.emit(run, lambda d: _fields(d, SCRIPT_FIELDS))
    return _script_run_exit(run)


def _members_path(args: argparse.Namespace) -> str:
    return f"/orgs/{_q(_need(args, 'org'))}/members"


def cmd_member_list(args: argparse.Namespace, hub: Hub, out: Output) -> int:
    out.emit(hub.get(_members_path(args)), lambda d: _table(d, ("username", "email", "role")))
    return EXIT_OK


def cmd_member_add(args: argparse.Namespace, hub: Hub, out: Output) -> int:
    if args.invite:
        invited = hub.post(f"/orgs/{_q(_need(args, 'org'))}/invitations", {"email": args.user, "role": args.role})
        out.emit(invited, lambda d: f"invited {d['email']} as {d['role']}; hand them this link: {d['invite_url']}")
        return EXIT_OK
    added = hub.post(_members_path(args), {"user": args.user, "role": args.role})
    out.emit(added, lambda d: f"added {d['username']} as {d['role']}")
    return EXIT_OK


def cmd_member_remove(args: argparse.Namespace, hub: Hub, out: Output) -> int:
    hub.delete(f"{_members_path(args)}/{_q(args.user)}")
    out.emit({"removed": args.user}, lambda d: f"removed {d['removed']}")
    return EXIT_OK


def cmd_member_role(args: argparse.Namespace, hub: Hub, out: Output) -> int:
    changed = hub.patch(f"{_members_path(args)}/{_q(args.user)}", {"role": args.role})
    out.emit(changed, lambda d: f"{d['username']} is now {d['role']}")
    return EXIT_OK


def cmd_device_cert_create(args: argparse.Namespace, hub: Hub, out: Output) -> int:
    """Make a key pair and a certificate for the device, signed by a local CA,
    write both, and register the certificate with the hub."""
    # Imported here: only this command needs `cryptography`.
    from certificates import pki

    try:
        ca = pki.load_issued(Path(args.ca_cert).read_bytes(), Path(args.ca_key).read_bytes())
    except (OSError, ValueError, TypeError) as exc:
        usage_error(f"cannot load the CA: {exc}")
    cert_path = Path(args.out_cert or f"{args.identifier}-cert.pem")
    key_path = Path(args.out_key or f"{args.identifier}-key.pem")
    for existing in (p for p in (cert_path, key_path) if p.exists() and not args.force):
        usage_error(f"{existing} exists (use --force to overwrite)")
    issued = pki.sign_device(ca, args.identifier, days=args.days)
    path = f"{_product_path(args)}/devices/{_q(args.identifier)}/certificates"
    registered = hub.post(path, {"pem": issued.cert_pem.decode()})
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as key_out:
        key_out.write(issued.key_pem)
    cert_path.write_bytes(issued.cert_pem)
    result = {**registered, "cert_file": str(cert_path), "key_file": str(key_path)}
    out.emit(result, lambda d: f"registered certificate {d['serial']} for {args.identifier}: {cert_path}, {key_path}")
    return EXIT_OK


def cmd_device_cert_list(args: argparse.Namespace, hub: Hub, out: Output) -> int:
    certs = hub.get(f"{_product_path(args)}/devices/{_q(args.identifier)}/certificates")
    out.emit(certs, lambda d: _table(d, ("serial", "subject", "not_after", "revoked_at", "last_used_at")))
    return EXIT_OK


def cmd_device_cert_revoke(args: argparse.Namespace, hub: Hub, out: Output) -> int:
    path = f"{_product_path(args)}/devices/{_q(args.identifier)}/certificates/{_q(args.serial)}/revoke"
    out.emit(hub.post(path), lambda d: f"revoked certificate {d['serial']}")
    return EXIT_OK


def _verification_pem(args: argparse.Namespace, hub: Hub, org: str, ca_pem: str | None) -> str:
    """The proof of possession to send: the file given, or one made here with
    the CA's key (which never leaves this machine) for the org's current code."""
    if args.verification_file and args.ca_key:
        usage_error("give either --verification-file or --ca-key, not both")
    if args.verification_file:
        return _read_file(args.verification_file)
    if not args.ca_key:
        usage_error("proof of possession is required: give --ca-key (the CA's private key) or --verification-file")
    # Imported here: only this command needs `cryptography`.
    from certificates import pki

    code = hub.get(f"/orgs/{_q(org)}/ca_certificates/verification_code")["code"]
    try:
        ca = pki.load_issued((ca_pem or "").encode(), Path(args.ca_key).read_bytes())
    except (OSError, ValueError, TypeError) as exc:
        usage_error(f"cannot load the CA: {exc}")
    return pki.sign_verification(ca, str(code)).cert_pem.decode()


def cmd_ca_add(args: argparse.Namespace, hub: Hub, out: Output) -> int:
    org = _need(args, "org")
    pem = _read_file(args.file)
    body: dict[str, Any] = {"pem": pem, "description": args.description or ""}
    if args.jitp_tag and not args.jitp_product:
        usage_error("--jitp-tag needs --jitp-product")
    body["verification_pem"] = _verification_pem(args, hub, org, pem)
    if args.jitp_product:
        body["jitp"] = {"product": args.jitp_product, "tags": _split_tags(args.jitp_tag)}
    created = hub.post(f"/orgs/{_q(org)}/ca_certificates", body)
    out.emit(created, lambda d: f"registered CA {d['subject']} (ski {d['ski']})")
    return EXIT_OK


def cmd_ca_verify(args: argparse.Namespace, hub: Hub, out: Output) -> int:
    org = _need(args, "org")
    path = f"/orgs/{_q(org)}/ca_certificates/{_q(args.ski)}"
    ca_pem = str(hub.get(path)["pem"]) if args.ca_key else None
    verified = hub.post(path + "/verify", {"verification_pem": _verification_pem(args, hub, org, ca_pem)})
    out.emit(verified, lambda d: f"verified CA {d['subject']} (ski {d['ski']})")
    return EXIT_OK


def cmd_ca_list(args: argparse.Namespace, hub: Hub, out: Output) -> int:
    cas = hub.get(f"/orgs/{_q(_need(args, 'org'))}/ca_certificates")
    out.emit(cas, lambda d: _table(d, ("ski", "subject", "verified", "not_after", "jitp", "last_used_at")))
    return EXIT_OK


def cmd_ca_code(args: argparse.Namespace, hub: Hub, out: Output) -> int:
    code = hub.get(f"/orgs/{_q(_need(args, 'org'))}/ca_certificates/verification_code")
    out.emit(code, lambda d: str(d["code"]))
    return EXIT_OK


DEPLOYMENT_COLUMNS = ("name", "firmware_version", "firmware_uuid", "is_active", "paused", "conditions", "delta_updates")


def _deployment_body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if args.firmware is not None:
        body["firmware"] = args.firmware
    if args.version is not None or args.tag is not None:
        body["conditions"] = {"version": args.version or "", "tags": _split_tags(args.tag)}
    if args.concurrent_updates is not None:
        body["concurrent_updates"] = args.concurrent_updates
    if args.delta_updates is not None:
        body["delta_updates"] = args.delta_updates == "on"
    if args.no_windows and args.window:
        usage_error("give --window or --no-windows, not both")
    if args.window is not None or args.no_windows:
        # The hub checks each line (days, range, zone) and answers why not.
        body["windows"] = [] if args.no_windows else list(args.window)
    if args.preflight is not None:
        body["preflight"] = args.preflight
    return body


def cmd_deployment_create(args: argparse.Namespace, hub: Hub, out: Output) -> int:
    body = {"name": args.name, **_deployment_body(args)}
    created = hub.post(_product_path(args) + "/deployments", body)
    out.emit(created, lambda d: f"created deployment {d['name']} (inactive) for firmware {d['firmware_version']}")
    return EXIT_OK


def cmd_deployment_update(args: argparse.Namespace, hub: Hub, out: Output) -> int:
    body = _deployment_body(args)
    if not body:
        usage_error(
            "nothing to change: give --firmware, --version, --tag, --concurrent-updates, --delta-updates, "
            "--window, --no-windows or --preflight"
        )
    path = f"{_product_path(args)}/deployments/{_q(args.name)}"
    if (args.version is None) != (args.tag is None):
        # The API replaces the conditions as a whole; keep the half not given.
        current = hub.get(path)["conditions"]
        body["conditions"] = {
            "version": current["version"] if args.version is None else args.version,
            "tags": current["tags"] if args.tag is None else _split_tags(args.tag),
        }
    changed = hub.patch(path, body)
    out.emit(changed, lambda d: _fields(d, DEPLOYMENT_COLUMNS))
    return EXIT_OK


def cmd_deployment_list(args: argparse.Namespace, hub: Hub, out: Output) -> int:
    out.emit(hub.get(_product_path(args) + "/deployments"), lambda d: _table(d, DEPLOYMENT_COLUMNS))
    return EXIT_OK


def _deployment_action(verb: str) -> Callable[[argparse.Namespace, Hub, Output], int]:
    def run(args: argparse.Namespace, hub: Hub, out: Output) -> int:
        changed = hub.post(f"{_product_path(args)}/deployments/{_q(args.name)}/{verb}")

        def human(d: dict[str, Any]) -> str:
            line = f"{d['name']}: active={d['is_active']} paused={d['paused']}"
            notes = [n for n in (d.get("preflight_warning"), d.get("window_note")) if n]
            return "\n".join([line, *(f"warning: {n}" for n in notes)])

        out.emit(changed, human)
        return EXIT_OK

    return run


def cmd_deployment_revert(args: argparse.Namespace, hub: Hub, out: Output) -> int:
    result = hub.post(f"{_product_path(args)}/deployments/{_q(args.name)}/revert")

    def human(d: dict[str, Any]) -> str:
        names = ", ".join(r["name"] for r in d["deployments"])
        left = f"; {d['left']} without a known previous firmware stay" if d["left"] else ""
        return f"{d['reverts']}: reverting {d['devices']} device(s) through {names}{left}"

    out.emit(result, human)
    return EXIT_OK


def _gate_lines(d: dict[str, Any], with_reason: bool) -> list[str]:
    """The health gate as the hub last judged it (the API's `gate` field)."""
    if not d.get("gate_enabled"):
        return ["gate: off"]
    report = d.get("gate") or {}
    state = report.get("state", "waiting")
    canary = (report.get("canary") or {}).get("devices", 0)
    control = (report.get("control") or {}).get("devices", 0)
    if not report:
        head = "gate: watching, no verdict yet"
    elif state == "waiting":
        head = (
            f"gate: watching, waiting for {report.get('min_devices')} device(s) per cohort "
            f"(canary {canary}, control {control})"
        )
    else:
        head = f"gate: {state} (canary {canary} device(s), control {control} device(s))"
    lines = [head]
    if with_reason and d["paused"] and d["paused_reason"].startswith("health gate"):
        lines.append(f"  reason: {d['paused_reason']}")
    for f in report.get("findings", ()):
        mark = " WORSE" if f.get("worse") else ""
        lines.append(f"  {f['signal']}: canary {f['canary']} vs control {f['control']} (p={f['p_value']:.2g}){mark}")
    return lines


def _safety_lines(d: dict[str, Any], with_reason: bool = True) -> list[str]:
    lines = [f"soak: {d['soak_minutes']} min" if d.get("soak_minutes") else "soak: none", *_gate_lines(d, with_reason)]
    if d.get("reverts"):
        lines.append(f"reverts: {d['reverts']}")
    lines.append(f"preflight: {d.get('preflight', 'warn')}")
    return lines + [f"warning: {n}" for n in (d.get("window_note"), d.get("preflight_warning")) if n]


def cmd_deployment_status(args: argparse.Namespace, hub: Hub, out: Output) -> int:
    path = f"{_product_path(args)}/deployments/{_q(args.name)}"
    status = hub.get(path + "/status")
    # The safety settings and the gate's verdict are on the deployment itself.
    status["deployment"] = hub.get(path)

    def human(d: dict[str, Any]) -> str:
        counts = " ".join(f"{k}={v}" for k, v in sorted(d["counts"].items()))
        paused = f" paused ({d['paused_reason']})" if d["paused"] else ""
        head = f"{d['name']}: {'active' if d['is_active'] else 'inactive'}{paused}"
        return "\n".join([head, counts, *_safety_lines({**d["deployment"], **d}, with_reason=False)])

    out.emit(status, human)
    return EXIT_OK


def cmd_deployment_get(args: argparse.Namespace, hub: Hub, out: Output) -> int:
    deployment = hub.get(f"{_product_path(args)}/deployments/{_q(args.name)}")
    out.emit(deployment, lambda d: "\n".join([_fields(d, DEPLOYMENT_COLUMNS), *_safety_lines(d)]))
    return EXIT_OK


def _split_tags(values: Sequence[str] | None) -> list[str]:
    return [t.strip() for value in values or () for t in value.split(",") if t.strip()]


# --- Argument parsing ---------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        raise CliError(f"{self.prog}: {message}", EXIT_USAGE)


def _common() -> argparse.ArgumentParser:
    # Accepted before or after the command; SUPPRESS keeps a value given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=argparse.SUPPRESS, help="hub URL (NERVESHUB_URL)")
    common.add_argument("--token", default=argparse.SUPPRESS, help="API token nhu_… (NERVESHUB_TOKEN)")
    common.add_argument("--config", default=argparse.SUPPRESS, help="configuration file (NERVESHUB_CONFIG)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
    return common


def _scoped(product: bool) -> argparse.ArgumentParser:
    scoped = argparse.ArgumentParser(add_help=False)
    scoped.add_argument("--org", help="organization (NERVESHUB_ORG)")
    if product:
        scoped.add_argument("--product", help="product (NERVESHUB_PRODUCT)")
    return scoped


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    org, product = _scoped(False), _scoped(True)
    parser = _Parser(
        prog="nerveshub", description=__doc__, parents=[common], formatter_class=argparse.RawTextHelpFormatter
    )
    groups = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def command(sub: Any, name: str, handler: Callable[..., int], help: str, *parents: Any) -> Any:
        p = sub.add_parser(name, help=help, description=help, parents=[common, *parents])
        p.set_defaults(handler=handler)
        return p

    login = command(groups, "login", cmd_login, "check a URL and token and save them for later commands")
    login.set_defaults(saves_login=True)
    command(groups, "whoami", cmd_whoami, "show the user the token belongs to")

    fw = groups.add_parser("firmware", help="publish and list firmware").add_subparsers(dest="action", required=True)
    publish = command(fw, "publish", cmd_firmware_publish, "upload a signed .fw file", product)
    publish.add_argument("file")
    publish.add_argument("--wait", action="store_true", help="wait until the hub has validated or rejected it")
    publish.add_argument("--timeout", type=float, default=600.0, help="seconds to wait at most (default 600)")
    publish.add_argument("--interval", type=float, default=1.0, help=argparse.SUPPRESS)
    command(fw, "list", cmd_firmware_list, "list the product's firmware", product)
    command(fw, "get", cmd_firmware_get, "show one firmware (uuid or upload id)", product).add_argument("ref")
    command(fw, "delete", cmd_firmware_delete, "delete a firmware no deployment uses", product).add_argument("ref")

    key = groups.add_parser("key", help="firmware signing keys").add_subparsers(dest="action", required=True)
    key_add = command(key, "add", cmd_key_add, "register a fwup public key", org)
    key_add.add_argument("name")
    key_add.add_argument("--file", required=True, help="fwup-key.pub")
    command(key, "list", cmd_key_list, "list the organization's keys", org)

    dev = groups.add_parser("device", help="devices and their certificates").add_subparsers(
        dest="action", required=True
    )
    create = command(dev, "create", cmd_device_create, "register a device", product)
    create.add_argument("identifier")
    create.add_argument("--description")
    create.add_argument("--tag", action="append", help="tag (repeat, or comma-separated)")
    device_list = command(dev, "list", cmd_device_list, "list devices", product)
    device_list.add_argument("--tag", help="only devices with this tag")
    device_list.add_argument("--search", help="identifier prefix")
    command(dev, "get", cmd_device_get, "show one device", product).add_argument("identifier")
    tag = command(dev, "tag", cmd_device_tag, "replace a device's tags", product)
    tag.add_argument("identifier")
    tag.add_argument("tags", nargs="*", help="the new tags (none: remove all)")
    command(dev, "delete", cmd_device_delete, "delete a device", product).add_argument("identifier")
    update = command(dev, "update", cmd_device_update, "push a firmware to one connected device now", product)
    update.add_argument("identifier")
    update.add_argument("--firmware", required=True, help="uuid of a valid firmware of the product")
    move = command(dev, "move", cmd_device_move, "move a device to another product of the organization", product)
    move.add_argument("identifier")
    move.add_argument("--to", required=True, metavar="PRODUCT", help="the product to move it to")

    script = dev.add_parser("script", help="support scripts").add_subparsers(dest="script_action", required=True)
    script_run = command(script, "run", cmd_device_script_run, "run a saved script or code on a device", product)
    script_run.add_argument("identifier")
    script_run.add_argument("--script", help="the name of a saved support script")
    script_run.add_argument("--text", help="Elixir code to run")
    script_run.add_argument("--file", help="a file of Elixir code to run")
    script_run.add_argument("--timeout-ms", type=int, help="how long the device lets the code run")
    script_run.add_argument("--wait", action="store_true", help="wait for the device's answer and show it")
    script_run.add_argument("--timeout", type=float, default=60.0, help="seconds to wait at most (default 60)")
    script_run.add_argument("--interval", type=float, default=0.5, help=argparse.SUPPRESS)
    script_get = command(script, "get", cmd_device_script_get, "show a script run's status and answer", product)
    script_get.add_argument("identifier")
    script_get.add_argument("ref", help="the run's ref (printed by `script run`)")

    cert_parser = dev.add_parser("cert", help="device certificates")
    cert = cert_parser.add_subparsers(dest="cert_action", required=True)
    cert_create = command(cert, "create", cmd_device_cert_create, "sign a device certificate and register it", product)
    cert_create.add_argument("identifier")
    cert_create.add_argument("--ca-cert", required=True, help="the signing CA's certificate (PEM)")
    cert_create.add_argument("--ca-key", required=True, help="the signing CA's private key (PEM, EC)")
    cert_create.add_argument("--out-cert", help="default: IDENTIFIER-cert.pem")
    cert_create.add_argument("--out-key", help="default: IDENTIFIER-key.pem")
    cert_create.add_argument("--days", type=int, default=3650)
    cert_create.add_argument("--force", action="store_true", help="overwrite existing files")
    command(cert, "list", cmd_device_cert_list, "list a device's certificates", product).add_argument("identifier")
    revoke = command(cert, "revoke", cmd_device_cert_revoke, "revoke a device certificate", product)
    revoke.add_argument("identifier")
    revoke.add_argument("serial")

    ca = groups.add_parser("ca", help="Device CA certificates").add_subparsers(dest="action", required=True)
    ca_add = command(ca, "add", cmd_ca_add, "register a Device CA certificate (admin)", org)
    ca_add.add_argument("--file", required=True, help="the CA certificate (PEM)")
    ca_add.add_argument("--description")
    ca_add.add_argument("--jitp-product", help="create unknown devices the CA signed in this product")
    ca_add.add_argument("--jitp-tag", action="append", help="tags of devices created that way")
    ca_verify = command(ca, "verify", cmd_ca_verify, "verify a CA registered without proof of possession (admin)", org)
    ca_verify.add_argument("ski", help="the CA's subject key identifier (see `ca list`)")
    for proved in (ca_add, ca_verify):
        proved.add_argument(
            "--ca-key", help="the CA's private key (PEM, EC): the proof of possession is made and signed here"
        )
        proved.add_argument(
            "--verification-file", help="or a proof made elsewhere: signed by the CA, CN = `ca verification-code`"
        )
    command(ca, "list", cmd_ca_list, "list the organization's CAs", org)
    command(ca, "verification-code", cmd_ca_code, "a code for the CN of a proof-of-possession certificate", org)

    member = groups.add_parser("member", help="organization members (admin)").add_subparsers(
        dest="action", required=True
    )
    command(member, "list", cmd_member_list, "list the organization's members and their roles", org)
    member_add = command(member, "add", cmd_member_add, "add an existing user, or invite someone", org)
    member_add.add_argument("user", help="user name or e-mail address (with --invite: e-mail address)")
    member_add.add_argument("--role", required=True, choices=("admin", "manage", "view"))
    member_add.add_argument("--invite", action="store_true", help="make an invitation link instead")
    command(member, "remove", cmd_member_remove, "remove a member", org).add_argument("user")
    member_role = command(member, "role", cmd_member_role, "change a member's role", org)
    member_role.add_argument("user")
    member_role.add_argument("role", choices=("admin", "manage", "view"))

    dep = groups.add_parser("deployment", help="deployments").add_subparsers(dest="action", required=True)
    for name, handler, text in (
        ("create", cmd_deployment_create, "create an (inactive) deployment"),
        ("update", cmd_deployment_update, "change a deployment's firmware or conditions"),
    ):
        p = command(dep, name, handler, text, product)
        p.add_argument("name")
        p.add_argument("--firmware", required=name == "create", help="uuid of a valid firmware")
        p.add_argument("--version", help="version requirement of the devices, e.g. '>= 1.0.0'")
        p.add_argument("--tag", action="append", help="devices must have this tag (repeat, or comma-separated)")
        p.add_argument("--concurrent-updates", type=int)
        p.add_argument("--delta-updates", choices=("on", "off"), help="send deltas when every condition holds")
        p.add_argument(
            "--window",
            action="append",
            help='maintenance window "DAYS HH:MM-HH:MM ZONE", e.g. "mon-fri 01:00-05:00 Europe/Berlin" '
            "(repeat for several; replaces the deployment's windows)",
        )
        p.add_argument("--no-windows", action="store_true", help="remove the windows: updates start at any time")
        p.add_argument(
            "--preflight",
            choices=("warn", "refuse"),
            help="when devices would refuse the firmware: activate with a warning, or refuse to activate",
        )
    command(dep, "list", cmd_deployment_list, "list deployments", product)
    for verb in ("activate", "deactivate", "pause", "resume"):
        command(dep, verb, _deployment_action(verb), f"{verb} a deployment", product).add_argument("name")
    command(dep, "status", cmd_deployment_status, "show a deployment's progress", product).add_argument("name")
    command(dep, "get", cmd_deployment_get, "show a deployment and its safety settings", product).add_argument("name")
    command(
        dep,
        "revert",
        cmd_deployment_revert,
        "send the devices a paused rollout updated back to their firmware",
        product,
    ).add_argument("name")
    return parser


def _hub(args: argparse.Namespace) -> Hub:
    config = read_config(args.config_path)
    if getattr(args, "saves_login", False):
        url, token = getattr(args, "url", None), getattr(args, "token", None)
        url = url or os.environ.get("NERVESHUB_URL")
        token = token or os.environ.get("NERVESHUB_TOKEN")
    else:
        url = getattr(args, "url", None) or os.environ.get("NERVESHUB_URL") or config.get("url")
        token = getattr(args, "token", None) or os.environ.get("NERVESHUB_TOKEN") or config.get("token")
    if not url or not token:
        usage_error("not logged in: run `nerveshub login --url URL --token TOKEN` or set NERVESHUB_URL/NERVESHUB_TOKEN")
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        usage_error(f"the hub URL must be http(s)://host[:port], got {url!r}")
    return Hub(url=url.rstrip("/"), token=token.strip())


def main(argv: Sequence[str] | None = None, stdout: IO[str] | None = None) -> int:
    out_stream = stdout or sys.stdout
    try:
        args = build_parser().parse_args(argv)
        args.config_path = Path(getattr(args, "config", None) or default_config_path())
        hub = _hub(args)
        return int(args.handler(args, hub, Output(as_json=getattr(args, "json", False), stream=out_stream)))
    except CliError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
