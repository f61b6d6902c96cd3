"""The live server fixture serves real HTTP from a separate daphne process."""

from __future__ import annotations

import urllib.request

from django.contrib.auth.models import User

from tests.support.hub import HubLauncher


def test_it_serves_the_admin_login_from_a_real_process(live_hub: HubLauncher) -> None:
    # given
    User.objects.create_superuser("root", "root@example.com", "pw")
    hub = live_hub()
    # when
    with urllib.request.urlopen(hub.http_url + "/admin/login/") as response:
        body = response.read().decode()
    # then
    assert response.status == 200
    assert "NervesHub" in body
    with urllib.request.urlopen(hub.http_url + "/status/health") as response:
        assert response.read() == b"ok"
