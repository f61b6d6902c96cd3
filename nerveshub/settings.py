"""The one settings module. Everything that differs between deployments is read
from the environment through the strict readers in nerveshub.lib.env; the README
has the table of variables.

Two shapes:

* embedded (default, NERVESHUB_PRODUCTION unset): SQLite in DATA_DIR, an in-memory
  channel layer and Celery tasks run in-process. One server process only.
* production (NERVESHUB_PRODUCTION=true): DATABASE_URL, REDIS_URL and SECRET_KEY
  are required; the embedded fallbacks refuse to start.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import dj_database_url
import django_stubs_ext
from django.core.exceptions import ImproperlyConfigured

from nerveshub.lib.env import envbool, envchoice, envint, envlist, envnetworks, envsecret, envstr

django_stubs_ext.monkeypatch()

BASE_DIR = Path(__file__).resolve().parent.parent

PRODUCTION = envbool("NERVESHUB_PRODUCTION", False)
DATA_DIR = Path(envstr("DATA_DIR", str(BASE_DIR / "data")) or "").resolve()


def _require(name: str, value: Any) -> Any:
    if PRODUCTION and not value:
        raise ImproperlyConfigured(f"{name} is required when NERVESHUB_PRODUCTION=true")
    return value


def _embedded_secret_key() -> str:
    # Embedded mode keeps a generated key beside the SQLite file so sessions
    # survive restarts without the newcomer having to invent one.
    path = DATA_DIR / "secret_key"
    if path.exists():
        return path.read_text().strip()
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(50)
    path.write_text(key)
    path.chmod(0o600)
    return key


SECRET_KEY = _require("SECRET_KEY", envsecret("SECRET_KEY")) or _embedded_secret_key()
# Seals shared secrets at rest (nerveshub.lib.sealed); defaults to one derived from SECRET_KEY.
SECRETS_ENCRYPTION_KEY = envsecret("SECRETS_ENCRYPTION_KEY")
DEBUG = envbool("DEBUG", False)
if PRODUCTION and DEBUG:
    raise ImproperlyConfigured("DEBUG must be false when NERVESHUB_PRODUCTION=true")

# Where `python -m nerveshub.serve` listens; also the default public address.
HOST = envstr("HOST", "127.0.0.1") or "127.0.0.1"
PORT = envint("PORT", 4000, minimum=1, maximum=65535)
_LOOPBACK = ["127.0.0.1", "localhost", "[::1]"]
if PRODUCTION:
    _default_hosts: list[str] = []
elif HOST in ("0.0.0.0", "::"):  # noqa: S104 - embedded mode listening on every interface
    _default_hosts = ["*"]
else:
    _default_hosts = sorted({*_LOOPBACK, HOST})
ALLOWED_HOSTS = envlist("ALLOWED_HOSTS", _default_hosts)
_require("ALLOWED_HOSTS", ALLOWED_HOSTS)

_default_public = f"http://{'127.0.0.1' if HOST in ('0.0.0.0', '::') else HOST}:{PORT}"  # noqa: S104
PUBLIC_URL = (envstr("PUBLIC_URL", _default_public) or "").rstrip("/")
if not PUBLIC_URL.startswith(("http://", "https://")):
    raise ImproperlyConfigured(f"PUBLIC_URL must start with http:// or https://, got {PUBLIC_URL!r}")
CSRF_TRUSTED_ORIGINS = envlist("CSRF_TRUSTED_ORIGINS", [PUBLIC_URL])

INSTALLED_APPS = [
    "daphne",
    # The admin with the hub's second-factor check (nerveshub.admin_site).
    "nerveshub.admin_apps.HubAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "ninja",
    "nerveshub.tenancy",
    "devices",
    "firmware",
    "deployments",
    "certificates",
    "console",
    "webhooks",
    "nerveshub.web",
    # Two-factor sign-in (nerveshub.tenancy.twofactor): authenticator apps
    # (TOTP) and one-time recovery codes (static).
    "django_otp",
    "django_otp.plugins.otp_totp",
    "django_otp.plugins.otp_static",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "nerveshub.lib.csp.ContentSecurityPolicyMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # request.user.is_verified(): whether this session passed the second factor.
    "django_otp.middleware.OTPMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "nerveshub.urls"
ASGI_APPLICATION = "nerveshub.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        # Project-wide overrides of other apps' templates (the admin's look).
        "DIRS": [BASE_DIR / "nerveshub" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -----------------------------------------------------------------
DATABASE_URL = _require("DATABASE_URL", envstr("DATABASE_URL"))
if DATABASE_URL:
    try:
        _db = dj_database_url.parse(DATABASE_URL, conn_max_age=envint("DATABASE_CONN_MAX_AGE", 0, minimum=0))
    except ValueError as exc:
        raise ImproperlyConfigured(f"DATABASE_URL is not a database URL: {exc}") from None
    if not _db.get("ENGINE"):
        raise ImproperlyConfigured("DATABASE_URL names an unsupported database")
else:
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    _db = {"ENGINE": "django.db.backends.sqlite3", "NAME": str(DATA_DIR / "nerveshub.sqlite3")}
if _db["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets the device sockets' writes and the admin's reads overlap; the busy
    # timeout makes a writer wait for another instead of failing at once. A
    # transaction begins IMMEDIATE, taking the write lock up front: a deferred
    # one that read first and then wrote after another writer committed cannot
    # wait for the lock (SQLite answers "database is locked" at once, whatever
    # the timeout), which failed concurrent page saves and device joins.
    _db.setdefault("OPTIONS", {}).update(
        {
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            "timeout": 20,
            "transaction_mode": "IMMEDIATE",
        }
    )
    # Tests run server processes beside the test runner, so the test database is
    # a file they can all open, not :memory:.
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    _db["TEST"] = {"NAME": str(DATA_DIR / "test.sqlite3")}
elif envstr("DATABASE_TEST_NAME"):
    # Lets two test runs share one PostgreSQL server without sharing a database.
    _db["TEST"] = {"NAME": envstr("DATABASE_TEST_NAME")}
if _db["ENGINE"] == "django.db.backends.postgresql":
    # A pool per process (psycopg_pool through Django): without it every
    # database_sync_to_async call of a device socket opened and closed its own
    # connection, and a connection costs more than the join's queries. 0 turns
    # it off (then DATABASE_CONN_MAX_AGE applies).
    DATABASE_POOL_SIZE = envint("DATABASE_POOL_SIZE", 20, minimum=0, maximum=1000)
    if DATABASE_POOL_SIZE:
        if _db.get("CONN_MAX_AGE"):
            raise ImproperlyConfigured(
                "DATABASE_CONN_MAX_AGE must be 0 while DATABASE_POOL_SIZE is set: pooled connections are reused anyway"
            )
        # A request waits at most DATABASE_POOL_TIMEOUT s for a connection; below
        # daphne's 5 s websocket connect timeout, so a device is told 503 in time.
        _db.setdefault("OPTIONS", {})["pool"] = {
            "min_size": 1,
            "max_size": DATABASE_POOL_SIZE,
            "timeout": envint("DATABASE_POOL_TIMEOUT", 3, minimum=1),
        }
    # Off by default: checking a pooled connection each time it is taken is one
    # more round trip per database call (about an eighth of a device join's time
    # in M3). Without it, a database restart fails at most one call per pooled
    # connection, which is then discarded; a device rejoins after such a failure.
    _db["CONN_HEALTH_CHECKS"] = envbool("DATABASE_HEALTH_CHECKS", False)
DATABASES = {"default": _db}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis: channel layer and Celery broker -----------------------------------
REDIS_URL = envstr("REDIS_URL")
# Seconds the channel layer keeps a message nobody has read: older ones it drops
# (the orchestrator then counts an unacknowledged update push as lost).
CHANNEL_MESSAGE_EXPIRY = 60
if PRODUCTION and not REDIS_URL:
    raise ImproperlyConfigured(
        "REDIS_URL is required when NERVESHUB_PRODUCTION=true: the embedded in-memory "
        "channel layer and in-process tasks only work inside a single server process"
    )
if REDIS_URL and not REDIS_URL.startswith(("redis://", "rediss://", "unix://")):
    raise ImproperlyConfigured(f"REDIS_URL must be a redis:// URL, got {REDIS_URL!r}")
EMBEDDED = REDIS_URL is None

if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                # channels_redis blocks 5 s in BZPOPMIN per receive, and redis-py's
                # default read timeout is also 5 s: every idle receive raced it and
                # lost, crashing the idle device consumer (daphne closed it, 1011).
                # redis-py's pool holds at most 100 connections by default and
                # then raises instead of waiting: a connect burst on a busy event
                # loop (each send holds its connection until the loop comes back
                # to it) ran past that.
                "hosts": [
                    {
                        "address": REDIS_URL,
                        "socket_timeout": 15,
                        "max_connections": envint("REDIS_MAX_CONNECTIONS", 1000, minimum=10),
                    }
                ],
                "prefix": envstr("CHANNEL_LAYER_PREFIX", "nerveshub") or "nerveshub",
                # A fleet broadcast reaches each server process as one message
                # (see docs/device-link.md), so a deep buffer is only needed for bursts.
                "capacity": 1000,
                "expiry": CHANNEL_MESSAGE_EXPIRY,
            },
        }
    }
else:
    # Every message for a device socket goes through its process's one dispatcher
    # channel (devicelink.dispatcher): room for a rollout's whole batch of pushes.
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer", "CONFIG": {"capacity": 10000}}}

# The cache holds short-lived counters: failed device authentications
# (devicelink/auth.py), failed sign-ins and password resets (nerveshub/web/throttle.py).
# They must be shared by every server process, hence Redis when there is one;
# embedded mode has one process, whose memory is enough.
# CACHE_KEY_PREFIX separates hubs sharing one Redis database (tests do).
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": envstr("CACHE_KEY_PREFIX", "nerveshub") or "nerveshub",
            # A counter that cannot be read in time is skipped, not waited for.
            "OPTIONS": {"socket_timeout": 2, "socket_connect_timeout": 2},
        }
    }
else:
    CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "OPTIONS": {"MAX_ENTRIES": 100_000}}
    }

CELERY_BROKER_URL = REDIS_URL or "memory://"
CELERY_RESULT_BACKEND = None
CELERY_TASK_ALWAYS_EAGER = EMBEDDED
CELERY_TASK_EAGER_PROPAGATES = EMBEDDED
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
ROLLOUT_BACKSTOP_SECONDS = envint("ROLLOUT_BACKSTOP_SECONDS", 60, minimum=5)
CELERY_BEAT_SCHEDULE: dict[str, dict[str, Any]] = {
    "rollouts-backstop": {"task": "deployments.tasks.run_all_rollouts", "schedule": ROLLOUT_BACKSTOP_SECONDS},
}

# --- Auth and sessions --------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "/admin/login/"
# A user name or the account's e-mail address signs in (nerveshub.tenancy.accounts).
AUTHENTICATION_BACKENDS = ["django.contrib.auth.backends.ModelBackend", "nerveshub.web.signin.EmailBackend"]
SESSION_COOKIE_SECURE = PUBLIC_URL.startswith("https://")
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
if envbool("BEHIND_TLS_PROXY", PRODUCTION):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# Sign-in throttling (nerveshub/web/throttle.py): this many failed sign-ins for
# one account, or from one client address across accounts, within
# LOGIN_LOCKOUT_SECONDS lock it for that long; even the right password is then
# refused. Password-reset requests: at most PASSWORD_RESET_LIMIT per e-mail
# address and per client address each PASSWORD_RESET_WINDOW_SECONDS.
LOGIN_FAILURE_LIMIT = envint("LOGIN_FAILURE_LIMIT", 10, minimum=1)
LOGIN_ADDRESS_FAILURE_LIMIT = envint("LOGIN_ADDRESS_FAILURE_LIMIT", 50, minimum=1)
LOGIN_LOCKOUT_SECONDS = envint("LOGIN_LOCKOUT_SECONDS", 900, minimum=1)
PASSWORD_RESET_LIMIT = envint("PASSWORD_RESET_LIMIT", 5, minimum=1)
PASSWORD_RESET_WINDOW_SECONDS = envint("PASSWORD_RESET_WINDOW_SECONDS", 3600, minimum=1)
# Browser-approved sign-in for command-line tools (nerveshub/web/cli_sessions.py):
# sessions one client address may start per 10 minutes, and polls per minute.
CLI_SESSION_START_LIMIT = envint("CLI_SESSION_START_LIMIT", 10, minimum=1)
CLI_SESSION_POLL_LIMIT = envint("CLI_SESSION_POLL_LIMIT", 120, minimum=1)
# Two-factor sign-in (nerveshub/tenancy/twofactor.py): the name authenticator
# apps show beside the account. Wrong codes wait 1, 2, 4 … seconds per device
# (django-otp's own backoff) on top of the sign-in lock above.
OTP_TOTP_ISSUER = "NervesHub"

# --- Email (password reset links from the organization pages) ----------------
# "console" prints mails to the hub's log, enough for embedded mode; "smtp" sends them.
EMAIL_MODE = envchoice("EMAIL_MODE", "smtp" if PRODUCTION else "console", ("console", "smtp"))
EMAIL_BACKEND = f"django.core.mail.backends.{EMAIL_MODE}.EmailBackend"
EMAIL_HOST = envstr("EMAIL_HOST", "localhost") or "localhost"
EMAIL_PORT = envint("EMAIL_PORT", 587, minimum=1, maximum=65535)
EMAIL_HOST_USER = envstr("EMAIL_HOST_USER", "") or ""
EMAIL_HOST_PASSWORD = envsecret("EMAIL_HOST_PASSWORD") or ""
EMAIL_USE_TLS = envbool("EMAIL_USE_TLS", True)
DEFAULT_FROM_EMAIL = envstr("DEFAULT_FROM_EMAIL", "nerveshub@localhost") or "nerveshub@localhost"

# --- I18N and static files ----------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(envstr("STATIC_ROOT", str(DATA_DIR / "static")) or "")
# Embedded mode serves /static/ from the hub process; in production nginx does.
SERVE_STATIC = envbool("SERVE_STATIC", not PRODUCTION)

# --- Firmware storage ---------------------------------------------------------
FIRMWARE_STORAGE = envchoice("FIRMWARE_STORAGE", "local", ("local", "s3"))
FIRMWARE_ROOT = Path(envstr("FIRMWARE_ROOT", str(DATA_DIR / "firmware")) or "")
FIRMWARE_MAX_SIZE = envint("FIRMWARE_MAX_SIZE", 200_000_000, minimum=1)
FIRMWARE_URL_TTL = envint("FIRMWARE_URL_TTL", 86_400, minimum=60)
# Decompression-bomb guards for validation: total inflated bytes of all ZIP
# entries, and the inflate ratio of any entry over 1 MiB (firmware/fwfile.py).
FIRMWARE_MAX_INFLATED_SIZE = envint("FIRMWARE_MAX_INFLATED_SIZE", 4_000_000_000, minimum=1)
FIRMWARE_MAX_INFLATE_RATIO = envint("FIRMWARE_MAX_INFLATE_RATIO", 100, minimum=1)
# When set (e.g. "/protected-firmware/"), firmware downloads on local storage are
# answered with an X-Accel-Redirect to this prefix + the stored name, and nginx
# sends the bytes (docs/firmware.md, "Firmware downloads").
FIRMWARE_X_ACCEL_REDIRECT = envstr("FIRMWARE_X_ACCEL_REDIRECT")

_firmware_storage: dict[str, Any]
if FIRMWARE_STORAGE == "s3":
    _firmware_storage = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": envstr("S3_BUCKET"),
            "endpoint_url": envstr("S3_ENDPOINT_URL"),
            "region_name": envstr("S3_REGION"),
            "access_key": envsecret("S3_ACCESS_KEY_ID"),
            "secret_key": envsecret("S3_SECRET_ACCESS_KEY"),
            "location": envstr("S3_PREFIX", "firmware"),
            "default_acl": None,
            "file_overwrite": False,
            "querystring_auth": True,
            "querystring_expire": FIRMWARE_URL_TTL,
            # S3File spools what it reads; 0 (the default) would keep a whole
            # firmware file in memory during validation.
            "max_memory_size": 2_621_440,
            # SigV4 presigned URLs: X-Amz-Expires carries FIRMWARE_URL_TTL (up to 7 days).
            "signature_version": "s3v4",
        },
    }
    if not _firmware_storage["OPTIONS"]["bucket_name"]:
        raise ImproperlyConfigured("S3_BUCKET is required when FIRMWARE_STORAGE=s3")
else:
    _firmware_storage = {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": str(FIRMWARE_ROOT), "base_url": None},
    }

STORAGES = {
    "default": {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": str(DATA_DIR / "media")},
    },
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    "firmware": _firmware_storage,
}
# Largest request body outside firmware uploads (those may carry
# FIRMWARE_MAX_SIZE); a larger declared Content-Length is refused with 413
# before the body is read, a chunked one is cut there (nerveshub/lib/bodyguard.py).
REQUEST_MAX_BODY_SIZE = envint("REQUEST_MAX_BODY_SIZE", 10_485_760, minimum=65_536)
# Seconds a client has to send its request line and headers (from connecting, or
# from the previous response on a kept-alive connection); then 408 and closed.
# Twisted's own timeout restarts with every byte, which slow clients exploit. 0: off.
HTTP_HEADER_TIMEOUT = envint("HTTP_HEADER_TIMEOUT", 20, minimum=0)
# Uploads bigger than this go to a temporary file, never into memory.
FILE_UPLOAD_MAX_MEMORY_SIZE = 2_621_440
DATA_UPLOAD_MAX_MEMORY_SIZE = 2_621_440

# --- Devices ------------------------------------------------------------------
DEVICE_SHARED_SECRETS_ENABLED = envbool("DEVICE_SHARED_SECRETS_ENABLED", True)
# NH1 signature age limits (docs/device-link.md, "Device sockets and fan-out").
# The device signs before its reconnect backoff (up to 90 s), so the reference's
# 90 s max age loses retries; 180 s covers the longest backoff with margin. A
# device clock a few seconds ahead is common (NTP not yet settled) and harmless.
DEVICE_AUTH_MAX_AGE = envint("DEVICE_AUTH_MAX_AGE", 180, minimum=1)
DEVICE_AUTH_FUTURE_SKEW = envint("DEVICE_AUTH_FUTURE_SKEW", 5, minimum=0)
# What a device may ask the hub's PBKDF2 to do for its NH1 signature
# (x-nh-alg = NH1-HMAC-<digest>-<iterations>-<length>, docs/security.md). The
# caller chooses, and the hub derives before it can check anything, so the range
# is bounded: nerves_hub_link sends sha256, 1000, 32 unless configured otherwise.
# Anything else is refused with 401 before any derivation.
NH1_ALLOWED_DIGESTS = envlist("NH1_ALLOWED_DIGESTS", ["sha256", "sha384", "sha512"])
_nh1_unknown = sorted(set(NH1_ALLOWED_DIGESTS) - {"sha", "sha1", "sha224", "sha256", "sha384", "sha512"})
if _nh1_unknown or not NH1_ALLOWED_DIGESTS:
    raise ImproperlyConfigured(f"NH1_ALLOWED_DIGESTS: unknown or no digests {_nh1_unknown}")
NH1_MAX_ITERATIONS = envint("NH1_MAX_ITERATIONS", 10_000, minimum=1000, maximum=100_000)
NH1_MAX_KEY_LENGTH = envint("NH1_MAX_KEY_LENGTH", 64, minimum=32, maximum=128)
# Failed NH1 authentications (bad signature, unknown key, malformed headers)
# counted per client address (IPv6: per /64) and per key in a fixed window;
# past the limit the next attempts get 429 before any derivation or lookup.
# 0 turns a limit off. The key limit protects the CPU from a distributed guesser
# and, while it holds, also refuses the key's real devices: keep it well above
# what a fleet's failures come to (signature age failures are not counted).
NH1_FAILURE_WINDOW = envint("NH1_FAILURE_WINDOW", 300, minimum=1)
NH1_FAILURES_PER_ADDRESS = envint("NH1_FAILURES_PER_ADDRESS", 20, minimum=0)
NH1_FAILURES_PER_KEY = envint("NH1_FAILURES_PER_KEY", 200, minimum=0)
# At most one last_seen write per device per interval; heartbeats never write.
DEVICE_LAST_SEEN_INTERVAL = envint("DEVICE_LAST_SEEN_INTERVAL", 900, minimum=1)
# Close a device socket that sent no frame for this long (the reference uses 180 s;
# devices heartbeat every 30 s).
DEVICE_IDLE_TIMEOUT = envint("DEVICE_IDLE_TIMEOUT", 180, minimum=1)
# Device connects admitted per second per server process (a token bucket with
# this burst); the rest get 503 before any database work and retry with their
# backoff. 0 turns the limit off. The reference defaults to 100/s per node.
DEVICE_CONNECT_RATE = envint("DEVICE_CONNECT_RATE", 2000, minimum=0)
DEVICE_CONNECT_BURST = envint("DEVICE_CONNECT_BURST", 4000, minimum=1)
# Threads (each with its own database connection) that run the device sockets'
# database calls on PostgreSQL; see devicelink/dbthreads.py.
DEVICE_DB_THREADS = envint("DEVICE_DB_THREADS", 8, minimum=1)
# On PostgreSQL, a returning device's connect is one prepared statement and its
# join none when it changes nothing (devicelink/hotpath.py); off, every connect
# and join takes the full path through the services (what SQLite always does).
# bench/m3_join_rate.py measures both.
DEVICE_FAST_PATH = envbool("DEVICE_FAST_PATH", True)
# Refuse a device connect with 503 while this many database calls wait for one of
# those threads: a connect that would queue behind them would not be accepted
# within daphne's 5 s, and the device would give up after its work was done for
# nothing (which, retried, feeds the queue). 0 turns the check off.
DEVICE_CONNECT_BACKLOG = envint("DEVICE_CONNECT_BACKLOG", 100, minimum=0)
# Refuse a device connect with 503 while this many connects and device joins are
# under way in this process. An admitted connect then has at most these ahead of
# it, so it is accepted and joined in well under daphne's 5 s whatever is slow
# (the database, a lock, this process's CPU); without the cap an overloaded
# process took in connects whose devices had given up by the time they were
# answered, and their retries became most of its work. 0 turns the check off.
DEVICE_CONNECT_CONCURRENCY = envint("DEVICE_CONNECT_CONCURRENCY", 64, minimum=0)
# A larger frame closes the socket: the biggest legitimate frame is a health report.
DEVICE_MAX_FRAME_BYTES = envint("DEVICE_MAX_FRAME_BYTES", 262_144, minimum=1024)
# Presence through crashes (docs/device-link.md, "Presence"): each hub process
# renews a lease every HUB_LEASE_RENEW_SECONDS; its devices stop counting as
# online HUB_LEASE_SECONDS after its last renewal, and another process records
# their disconnects within one more renewal period. Defaults: offline in the
# pages and the API at most 45 s after a kill -9, recorded (device.offline
# webhooks) at most 60 s after; at once when an embedded hub restarts.
HUB_LEASE_SECONDS = envint("HUB_LEASE_SECONDS", 45, minimum=2)
HUB_LEASE_RENEW_SECONDS = envint("HUB_LEASE_RENEW_SECONDS", 15, minimum=1, maximum=HUB_LEASE_SECONDS - 1)

# --- Live organization pages (devices/pagefeed.py, nerveshub/web/live.py) -------
# Device changes are gathered per organization and sent to the open pages at
# most once per this many milliseconds per server process; each page's socket
# again forwards at most one message per this interval to its browser.
LIVE_FLUSH_MS = envint("LIVE_FLUSH_MS", 1000, minimum=50)
# Device rows one message carries at most; the rest are counted ("N more").
LIVE_MAX_ROWS = envint("LIVE_MAX_ROWS", 100, minimum=1)
# How often an open page's socket re-reads its user's session and membership,
# besides on every membership, sign-out or password change: a member removed
# where no event reaches this process stops receiving within this time.
LIVE_ACCESS_CHECK_SECONDS = envint("LIVE_ACCESS_CHECK_SECONDS", 5, minimum=1)

# --- Remote console (console/) -------------------------------------------------
# An operator's console page is closed after this many seconds without input or
# output (the device stops its own IEx after remote_iex_timeout, 300 s by default).
CONSOLE_IDLE_TIMEOUT = envint("CONSOLE_IDLE_TIMEOUT", 900, minimum=1)
# Largest file an operator may send to a device through the console.
CONSOLE_UPLOAD_MAX_SIZE = envint("CONSOLE_UPLOAD_MAX_SIZE", 10_485_760, minimum=1)
# How often an open console page checks that its device is still connected.
CONSOLE_DEVICE_CHECK_SECONDS = envint("CONSOLE_DEVICE_CHECK_SECONDS", 2, minimum=1)
# How often an open console page re-reads its user's session and role, besides
# before every write and on every membership, sign-out or password change
# (nerveshub.tenancy.access_events): a change made where no event reaches this
# process (a raw database edit) ends or downgrades the console within this time.
CONSOLE_ACCESS_CHECK_SECONDS = envint("CONSOLE_ACCESS_CHECK_SECONDS", 5, minimum=1)
# Output a device's console keeps for operators who open it later, in bytes of
# UTF-8 (at most 1024 lines as well). Held in the device socket's process for
# every connected device with the console joined.
CONSOLE_SCROLLBACK_BYTES = envint("CONSOLE_SCROLLBACK_BYTES", 131_072, minimum=1024)
# An unfinished line (output without a newline) longer than this many bytes is
# kept as a line of its own, so a device that never sends a newline cannot grow it.
CONSOLE_MAX_LINE_BYTES = envint("CONSOLE_MAX_LINE_BYTES", 16_384, minimum=256)

# --- Device certificates (devicelink/certauth.py, deploy/nginx/nerveshub.conf) ---
# Addresses of the TLS-terminating proxies (nginx) whose X-SSL-Client-Cert header
# the hub believes. Empty (the default): the header is never trusted, and a
# request that carries it is refused. Comma list of IPs or CIDR networks.
TRUSTED_PROXIES = envnetworks("TRUSTED_PROXIES")

# --- Webhooks (docs/webhooks.md) -------------------------------------------------
# Plain http:// endpoints are refused except on loopback addresses unless this is set.
# It relaxes the scheme only: the destination must still pass WEBHOOK_ALLOWED_NETWORKS.
WEBHOOK_ALLOW_HTTP = envbool("WEBHOOK_ALLOW_HTTP", False)
# Webhooks reach public addresses only: loopback, private, link-local, multicast,
# reserved and unspecified ones are refused unless inside one of these networks
# (comma list of IPs or CIDRs, e.g. a receiver on 10.1.0.0/16, or 127.0.0.0/8).
WEBHOOK_ALLOWED_NETWORKS = envnetworks("WEBHOOK_ALLOWED_NETWORKS")
# Embedded mode: how many deliveries are attempted at once (Celery's worker
# concurrency decides it otherwise).
WEBHOOK_DELIVERY_CONCURRENCY = envint("WEBHOOK_DELIVERY_CONCURRENCY", 4, minimum=1, maximum=64)
WEBHOOK_TIMEOUT = envint("WEBHOOK_TIMEOUT", 10, minimum=1, maximum=60)
# Attempts per delivery; the waits between them double from the base (30 s, 1 min, 2 min, …).
WEBHOOK_MAX_ATTEMPTS = envint("WEBHOOK_MAX_ATTEMPTS", 8, minimum=1, maximum=30)
WEBHOOK_RETRY_BASE_SECONDS = envint("WEBHOOK_RETRY_BASE_SECONDS", 30, minimum=1)
# How often Celery beat (the hub itself in embedded mode) sends due retries and
# deliveries whose wake-up was lost.
WEBHOOK_SWEEP_SECONDS = envint("WEBHOOK_SWEEP_SECONDS", 30, minimum=5)
# How often Celery beat (the hub itself in embedded mode) re-sends the validation
# of uploads stuck pending.
FIRMWARE_SWEEP_SECONDS = envint("FIRMWARE_SWEEP_SECONDS", 600, minimum=5)
CELERY_BEAT_SCHEDULE["firmware-sweep"] = {
    "task": "firmware.tasks.sweep_pending_firmware",
    "schedule": FIRMWARE_SWEEP_SECONDS,
}
# How often Celery beat (the hub itself in embedded mode) asks for the deltas
# of active deployments with delta updates on (devices that joined them since)
# and re-sends delta builds whose task was lost.
DELTA_SWEEP_SECONDS = envint("DELTA_SWEEP_SECONDS", 300, minimum=5)
CELERY_BEAT_SCHEDULE["deltas-sweep"] = {"task": "firmware.tasks.sweep_pending_deltas", "schedule": DELTA_SWEEP_SECONDS}
CELERY_BEAT_SCHEDULE["deltas-request"] = {
    "task": "deployments.tasks.request_all_deltas",
    "schedule": DELTA_SWEEP_SECONDS,
}
CELERY_BEAT_SCHEDULE["webhooks-sweep"] = {"task": "webhooks.tasks.sweep_webhooks", "schedule": WEBHOOK_SWEEP_SECONDS}

# --- Device health (devices/health.py) ------------------------------------------
# Reports kept per device for the charts: at most this many, none older than
# this many days; pruned hourly (Celery beat, or the hub itself in embedded mode).
HEALTH_HISTORY_DAYS = envint("HEALTH_HISTORY_DAYS", 7, minimum=1)
HEALTH_HISTORY_PER_DEVICE = envint("HEALTH_HISTORY_PER_DEVICE", 1000, minimum=1)
CELERY_BEAT_SCHEDULE["health-prune"] = {"task": "devices.tasks.prune_health_history", "schedule": 3600}
# (warning, unhealthy) limits of the healthy / warning / unhealthy status shown
# in device lists; a reported alarm is a warning too.
HEALTH_THRESHOLDS: dict[str, tuple[float, float]] = {
    "cpu_usage_percent": (80, 90),
    "mem_used_percent": (70, 80),
    "disk_used_percentage": (80, 90),
}
# Map tiles behind a device's location: a URL with {z}, {x} and {y}, or empty for
# none. Without tiles (or when the browser cannot reach them) the marker and the
# coordinates still show.
MAP_TILE_URL = envstr("MAP_TILE_URL", "https://tile.openstreetmap.org/{z}/{x}/{y}.png") or ""

# --- Logging ------------------------------------------------------------------
LOG_FORMAT = envchoice("LOG_FORMAT", "text", ("text", "json"))
LOG_LEVEL = envchoice("LOG_LEVEL", "info", ("debug", "info", "warning", "error")).upper()
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "text": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {"()": "nerveshub.lib.logjson.JsonFormatter"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "INFO"},
        "daphne": {"level": "WARNING"},
    },
}
