"""Elixir Version semantics, table-driven."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from deployments.versions import InvalidRequirement, InvalidVersion, Requirement, Version

ORDERED = [
    "1.0.0-alpha",
    "1.0.0-alpha.1",
    "1.0.0-alpha.beta",
    "1.0.0-beta",
    "1.0.0-beta.2",
    "1.0.0-beta.11",
    "1.0.0-rc.1",
    "1.0.0",
    "1.0.1",
    "1.1.0",
    "2.0.0-0",
    "2.0.0",
    "10.0.0",
]


def test_it_orders_versions_by_semver_precedence() -> None:
    parsed = [Version.parse(v) for v in ORDERED]
    assert parsed == sorted(parsed)
    assert sorted(reversed(parsed)) == parsed


def test_it_ignores_build_metadata() -> None:
    assert Version.parse("1.2.3+abc") == Version.parse("1.2.3+def") == Version.parse("1.2.3")
    assert str(Version.parse("1.2.3-rc.1+build.5")) == "1.2.3-rc.1+build.5"


@pytest.mark.parametrize("text", ["1.2", "1.2.3.4", "01.2.3", "1.2.3-", "1.2.3-01", "v1.2.3", "", "1.2.x"])
def test_it_rejects_malformed_versions(text: str) -> None:
    with pytest.raises(InvalidVersion):
        Version.parse(text)


MATCHES = [
    # requirement, version, expected
    ("1.2.3", "1.2.3", True),
    ("== 1.2.3", "1.2.3+build", True),
    ("== 1.2.3", "1.2.4", False),
    ("> 1.2.3", "1.2.4", True),
    ("> 1.2.3", "1.2.3", False),
    (">= 1.2.3", "1.2.3", True),
    ("< 1.2.3", "1.2.3-rc.1", True),
    ("<= 1.2.3", "1.2.3", True),
    ("~> 2.0.0", "2.0.9", True),
    ("~> 2.0.0", "2.1.0", False),
    ("~> 2.1.2", "2.1.1", False),
    ("~> 2.1.2", "2.1.9", True),
    ("~> 2.1.2", "2.2.0-rc.1", False),  # the upper bound admits no pre-release
    ("~> 2.1", "2.9.9", True),
    ("~> 2.1", "3.0.0", False),
    ("~> 2.1", "3.0.0-rc.1", False),
    ("~> 2.1", "2.1.0-rc.1", False),  # below the lower bound
    ("~> 2.1-0", "2.1.0-rc.1", True),
    ("~> 2.1.3-dev", "2.1.3-dev", True),
    ("~> 2.1.3-dev", "2.1.3", True),
    (">= 1.0.0 and < 2.0.0", "1.5.0", True),
    (">= 1.0.0 and < 2.0.0", "2.0.0", False),
    (">= 1.0.0 and < 2.0.0", "2.0.0-rc.1", True),  # pre-releases compare normally (allow_pre)
    ("< 1.0.0 or > 2.0.0", "0.9.0", True),
    ("< 1.0.0 or > 2.0.0", "1.5.0", False),
    ("== 1.0.0 or >= 3.0.0 and < 4.0.0", "3.5.0", True),
    ("== 1.0.0 or >= 3.0.0 and < 4.0.0", "4.0.0", False),
    (">= 1.0.0", "not-a-version", False),
]


@pytest.mark.parametrize(("requirement", "version", "expected"), MATCHES)
def test_it_matches_requirements_like_elixir(requirement: str, version: str, expected: bool) -> None:
    assert Requirement.parse(requirement).matches(version) is expected


@pytest.mark.parametrize("text", ["", ">= 1.2", "~> 1", "=> 1.0.0", ">= 1.0.0 and", "and >= 1.0.0", "~> x.y"])
def test_it_rejects_malformed_requirements(text: str) -> None:
    with pytest.raises(InvalidRequirement):
        Requirement.parse(text)


versions = st.builds(
    lambda a, b, c, pre: f"{a}.{b}.{c}" + (f"-{pre}" if pre else ""),
    st.integers(0, 5),
    st.integers(0, 5),
    st.integers(0, 5),
    st.sampled_from(["", "rc.1", "alpha", "0", "beta.2"]),
)


@given(versions, versions)
def test_it_agrees_with_a_tilde_expansion(low: str, candidate: str) -> None:
    parsed = Version.parse(low)
    if parsed.pre:
        return
    upper = f"{parsed.major}.{parsed.minor + 1}.0-0"
    expanded = Requirement.parse(f">= {low} and < {upper}")
    assert Requirement.parse(f"~> {low}").matches(candidate) == expanded.matches(candidate)
