"""The settings module refuses bad environment values with a message naming the
variable, and production mode refuses the embedded fallbacks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from nerveshub.lib import env

ROOT = Path(__file__).resolve().parents[2]


def _load_settings(tmp_path: Path, **overrides: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "SECRET_KEY", "DEBUG"}}
    environ = {**clean, "DATA_DIR": str(tmp_path), **overrides}
    code = "import nerveshub.settings as s; print(s.EMBEDDED, s.DATABASES['default']['ENGINE'])"
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=environ, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"DEBUG": "maybe"}, "DEBUG must be true or false"),
        ({"FIRMWARE_MAX_SIZE": "lots"}, "FIRMWARE_MAX_SIZE must be a whole number"),
        ({"FIRMWARE_MAX_SIZE": "0"}, "FIRMWARE_MAX_SIZE must be at least 1"),
        ({"FIRMWARE_STORAGE": "ftp"}, "FIRMWARE_STORAGE must be one of local, s3"),
        ({"FIRMWARE_STORAGE": "s3"}, "S3_BUCKET is required"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT must be one of text, json"),
        ({"PUBLIC_URL": "hub.example.com"}, "PUBLIC_URL must start with http"),
        ({"REDIS_URL": "localhost:6379"}, "REDIS_URL must be a redis:// URL"),
        ({"DATABASE_URL": "nosuch://x"}, "DATABASE_URL"),
        ({"NERVESHUB_PRODUCTION": "true"}, "is required when NERVESHUB_PRODUCTION=true"),
        (
            {
                "NERVESHUB_PRODUCTION": "true",
                "SECRET_KEY": "x" * 50,
                "DATABASE_URL": "postgres://u@db/nh",
                "ALLOWED_HOSTS": "hub.example.com",
            },
            "REDIS_URL is required when NERVESHUB_PRODUCTION=true",
        ),
        (
            {"NERVESHUB_PRODUCTION": "true", "DEBUG": "true", "SECRET_KEY": "x" * 50},
            "DEBUG must be false when NERVESHUB_PRODUCTION=true",
        ),
    ],
)
def test_it_refuses_bad_environment_values(tmp_path: Path, overrides: dict[str, str], message: str) -> None:
    result = _load_settings(tmp_path, **overrides)
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert message in result.stderr


def test_it_starts_embedded_with_no_settings_at_all(tmp_path: Path) -> None:
    result = _load_settings(tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "django.db.backends.sqlite3"]
    assert (tmp_path / "secret_key").read_text().strip()


def test_it_accepts_a_full_production_configuration(tmp_path: Path) -> None:
    result = _load_settings(
        tmp_path,
        NERVESHUB_PRODUCTION="true",
        SECRET_KEY="x" * 50,
        DATABASE_URL="postgres://u@db/nh",
        REDIS_URL="redis://redis:6379/0",
        ALLOWED_HOSTS="hub.example.com",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "django.db.backends.postgresql"]


def test_it_reads_secrets_from_files(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("from-a-file\n")
    assert env.envsecret("SECRET_KEY", {"SECRET_KEY_FILE": str(secret_file)}) == "from-a-file"
    with pytest.raises(ImproperlyConfigured, match="not both"):
        env.envsecret("SECRET_KEY", {"SECRET_KEY": "a", "SECRET_KEY_FILE": str(secret_file)})
    with pytest.raises(ImproperlyConfigured, match="cannot read"):
        env.envsecret("SECRET_KEY", {"SECRET_KEY_FILE": str(tmp_path / "missing")})


@pytest.mark.parametrize(("raw", "expected"), [("true", True), ("0", False), ("Yes", True), ("off", False)])
def test_it_parses_booleans_strictly(raw: str, expected: bool) -> None:
    assert env.envbool("X", not expected, {"X": raw}) is expected
