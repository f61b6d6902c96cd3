"""Numbers in the org pages' query strings and forms, from a client that sends
what it likes: huge ids, digits that are not ASCII, NULs. Each is ignored with a
message, never a 500."""

from __future__ import annotations

import pytest

from tests.web.conftest import Fleet, client_for

HUGE = "9" * 20


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("query", "ignored"),
    [
        (f"deployment={HUGE}", "deployment"),
        ("deployment=%C2%B2", "deployment"),  # "²" passes isdigit(), not int()
        (f"product={HUGE}", "product"),
        ("product=" + "9" * 5000, "product"),
        ("product=%D9%A3", "product"),  # an Arabic-Indic three
        ("q=dev%00", "q"),
        ("tag=a%00", "tag"),
        ("after=dev%00", "after"),
        ("before=dev%00", "before"),
    ],
)
def test_it_ignores_a_device_filter_that_is_not_a_value(fleet: Fleet, query: str, ignored: str) -> None:
    # given
    client = client_for(fleet.tenant.viewer)
    # when
    response = client.get(f"/org/{fleet.slug}/devices/?{query}")
    # then: the unfiltered list, and the reader is told
    assert response.status_code == 200
    assert f"Ignored the {ignored} filter".encode() in response.content
    assert fleet.device.identifier.encode() in response.content


@pytest.mark.django_db
@pytest.mark.parametrize("before", [HUGE, "%C2%B2", "9" * 5000, "-1"])
def test_it_ignores_an_audit_position_that_is_not_a_value(fleet: Fleet, before: str) -> None:
    client = client_for(fleet.tenant.viewer)
    for url in (f"/org/{fleet.slug}/audit/", f"/org/{fleet.slug}/devices/{fleet.device.pk}/audit/"):
        response = client.get(f"{url}?before={before}")
        assert response.status_code == 200, url
        assert b"Ignored the page position" in response.content


@pytest.mark.django_db
def test_it_ignores_huge_ids_in_the_bulk_tag_form(fleet: Fleet) -> None:
    # given
    client = client_for(fleet.tenant.manager)
    # when
    response = client.post(
        f"/org/{fleet.slug}/devices/tags/",
        {"device": [HUGE, "²", "9" * 5000, str(fleet.device.pk)], "tags": "lab", "operation": "add"},
        follow=True,
    )
    # then: the real id is tagged, the others are skipped
    assert response.status_code == 200
    fleet.device.refresh_from_db()
    assert "lab" in fleet.device.tags
