"""`make run`'s start banner never shows a password that fails at login."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from django.contrib.auth import authenticate
from django.contrib.auth.models import User
from django.core.management import call_command
from pytest_django.fixtures import Settings


def _banner(settings: Settings, data_dir: Path) -> str:
    settings.DATA_DIR = data_dir
    out = io.StringIO()
    call_command("quickstart", stdout=out)
    return out.getvalue()


def _password_line(banner: str) -> str:
    match = re.search(r"password:\s+(.*)", banner)
    assert match is not None, banner
    return match.group(1).strip()


@pytest.mark.django_db
def test_it_prints_the_password_only_when_it_creates_it(settings: Settings, tmp_path: Path) -> None:
    # given / when: the first start creates the admin
    first = _password_line(_banner(settings, tmp_path))
    # then: the printed password logs in
    assert authenticate(username="admin", password=first) is not None
    # when: a later start
    later = _password_line(_banner(settings, tmp_path))
    # then: it is not printed again, and the banner says where it is kept
    assert first not in later and "admin_password" in later


@pytest.mark.django_db
def test_after_a_password_change_it_says_how_to_set_one_and_drops_the_stale_file(
    settings: Settings, tmp_path: Path
) -> None:
    # given: the admin changed the generated password
    first = _password_line(_banner(settings, tmp_path))
    admin = User.objects.get(username="admin")
    admin.set_password("a-new-password-42")
    admin.save()
    # when
    later = _password_line(_banner(settings, tmp_path))
    # then: no password at all, the way to set one, and no file holding the old one
    assert first not in later
    assert "changepassword admin" in later
    assert not (tmp_path / "admin_password").exists()
