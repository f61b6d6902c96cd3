"""Tag filters behave the same on PostgreSQL (@> with GIN) and SQLite (json_each)."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from devices import services
from devices.fields import normalise_tags
from devices.models import Device, validate_tags
from tests.conftest import Tenant


@pytest.mark.django_db
def test_it_filters_devices_by_tags(tenant: Tenant) -> None:
    # given
    services.create_device("t", tenant.product, "a", tags="eu, beta")
    services.create_device("t", tenant.product, "b", tags=["eu"])
    services.create_device("t", tenant.product, "c", tags=[])
    services.create_device("t", tenant.product, "d", tags=["europe"])
    # when
    eu = Device.objects.filter(tags__has_tag="eu").values_list("identifier", flat=True)
    both = Device.objects.filter(tags__has_all_tags=["eu", "beta"]).values_list("identifier", flat=True)
    none = Device.objects.filter(tags__has_all_tags=[]).count()
    # then
    assert sorted(eu) == ["a", "b"]
    assert list(both) == ["a"]
    assert none == 4


def test_it_normalises_and_validates_tags() -> None:
    assert normalise_tags(" a, b,,a ") == ["a", "b"]
    with pytest.raises(ValidationError):
        validate_tags(["two words"])
    with pytest.raises(ValidationError):
        validate_tags("not-a-list")
