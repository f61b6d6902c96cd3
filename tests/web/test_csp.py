"""Every page carries a Content-Security-Policy that refuses inline and foreign
scripts, plugins, framing and foreign form targets, and lets the console reach
its websocket."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from tests.conftest import ROOT
from tests.web.conftest import Fleet, client_for

pytestmark = pytest.mark.django_db


def _directives(header: str) -> dict[str, set[str]]:
    parsed = {}
    for part in header.split(";"):
        name, *values = part.split()
        parsed[name] = set(values)
    return parsed


def test_it_sends_the_policy_on_every_kind_of_page(fleet: Fleet) -> None:
    # given
    client = client_for(fleet.tenant.admin)
    urls = [
        f"/org/{fleet.slug}/",
        f"/org/{fleet.slug}/firmware/",
        f"/org/{fleet.slug}/devices/{fleet.device.pk}/",
        "/admin/",
        "/admin/devices/device/",
        reverse("console:page", args=[fleet.device.pk]),
    ]
    for url in urls:
        # when
        response = client.get(url)
        # then
        assert response.status_code == 200, url
        policy = _directives(response["Content-Security-Policy"])
        assert policy["script-src"] == {"'self'"}, url
        assert policy["object-src"] == {"'none'"}, url
        assert policy["frame-ancestors"] == {"'none'"}, url
        assert policy["base-uri"] == {"'none'"}, url
        assert policy["form-action"] == {"'self'"}, url
        assert "'self'" in policy["connect-src"], url
        assert any(source.startswith(("ws://", "wss://")) for source in policy["connect-src"]), url


def test_signed_out_pages_and_errors_carry_it_too() -> None:
    client = Client()
    for url, status in [(reverse("web:login"), 200), ("/admin/login/", 200), ("/no-such-page/", 404)]:
        response = client.get(url)
        assert response.status_code == status, url
        assert "script-src 'self'" in response["Content-Security-Policy"], url


def test_the_console_websocket_origin_follows_the_public_url(settings: Any) -> None:
    from nerveshub.lib.csp import build_policy

    assert "connect-src 'self' wss://hub.example.com" in build_policy("https://hub.example.com")
    assert "connect-src 'self' ws://127.0.0.1:4000" in build_policy("http://127.0.0.1:4000")
    # map tiles: their origin only, and nothing for a URL that is not http(s)
    tiles = build_policy("https://hub.example.com", "https://tiles.example.org/{z}/{x}/{y}.png")
    assert "img-src 'self' data: https://tiles.example.org;" in tiles
    assert "img-src 'self' data:;" in build_policy("https://hub.example.com", "javascript:alert(1)")


def test_no_template_has_an_inline_script_or_handler() -> None:
    # script-src 'self' would block them in the browser: keep them out of the source.
    templates = [
        *ROOT.glob("nerveshub/web/templates/**/*.html"),
        *ROOT.glob("console/templates/**/*.html"),
        *ROOT.glob("templates/**/*.html"),
    ]
    assert templates
    for path in templates:
        text = Path(path).read_text()
        for tag in re.findall(r"<script\b[^>]*>", text):
            assert "src=" in tag, (path, tag)
        assert not re.search(r"\son[a-z]+\s*=", text), path
        assert "javascript:" not in text, path
