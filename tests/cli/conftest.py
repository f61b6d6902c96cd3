"""Run the installed `nerveshub` console script as a CI job would: a separate
process, its own configuration directory, and real HTTP to a live hub."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User

from nerveshub.tenancy import services as tenancy

SCRIPT = Path(sys.executable).parent / "nerveshub"


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


@dataclass
class Cli:
    home: Path
    url: str = ""
    token: str = ""

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("NERVESHUB_")}
        env["XDG_CONFIG_HOME"] = str(self.home)
        if self.url:
            env["NERVESHUB_URL"] = self.url
        if self.token:
            env["NERVESHUB_TOKEN"] = self.token
        return {**env, **(extra or {})}

    def popen(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [str(SCRIPT), *args],
            env=self.env(env),
            cwd=self.home,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def __call__(self, *args: str, env: dict[str, str] | None = None, timeout: float = 60) -> Result:
        process = self.popen(*args, env=env)
        stdout, stderr = process.communicate(timeout=timeout)
        return Result(process.returncode, stdout, stderr)

    def as_user(self, user: User, url: str) -> Cli:
        return Cli(home=self.home, url=url, token=tenancy.create_api_token("test", user, "cli tests").clear)


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    assert SCRIPT.exists(), f"{SCRIPT} missing: install the project (make .venv/.installed-dev)"
    home = tmp_path / "home"
    home.mkdir()
    return Cli(home=home)
