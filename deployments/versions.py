"""SemVer versions and Elixir `Version` requirements, as NervesHub deployments use
them to match a device's firmware version.

Semantics (Elixir's Version module):

* versions are strict `MAJOR.MINOR.PATCH[-pre][+build]`, no leading zeros; build
  metadata never affects ordering or equality;
* requirements are clauses `OP VERSION` joined by `and` / `or` (`and` binds
  tighter); operators `==`, `>`, `>=`, `<`, `<=`, `~>`, and a bare version means
  `==`; only `~>` accepts `MAJOR.MINOR`;
* `~> 2.1` is `>= 2.1.0 and < 3.0.0-0`, `~> 2.1.2` is `>= 2.1.2 and < 2.2.0-0`: the
  upper bound never admits pre-releases of the next version;
* pre-release versions match like any other version (NervesHub calls
  `Version.match?/2` without options, so `allow_pre` is true).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import total_ordering

_NUM = r"(0|[1-9]\d*)"
_IDENT = r"[0-9A-Za-z-]+"
_VERSION_RE = re.compile(rf"^{_NUM}\.{_NUM}\.{_NUM}(?:-({_IDENT}(?:\.{_IDENT})*))?(?:\+({_IDENT}(?:\.{_IDENT})*))?$")
_SHORT_RE = re.compile(rf"^{_NUM}\.{_NUM}(?:-({_IDENT}(?:\.{_IDENT})*))?$")


class InvalidVersion(ValueError):
    pass


class InvalidRequirement(ValueError):
    pass


def _pre_parts(text: str | None) -> tuple[int | str, ...]:
    if not text:
        return ()
    parts: list[int | str] = []
    for ident in text.split("."):
        if ident.isdigit():
            if len(ident) > 1 and ident.startswith("0"):
                raise InvalidVersion(f"pre-release identifier {ident!r} has a leading zero")
            parts.append(int(ident))
        else:
            parts.append(ident)
    return tuple(parts)


@total_ordering
@dataclass(frozen=True)
class Version:
    major: int
    minor: int
    patch: int
    pre: tuple[int | str, ...] = ()
    build: str | None = field(default=None, compare=False)

    @classmethod
    def parse(cls, text: str) -> Version:
        match = _VERSION_RE.match(text.strip())
        if match is None:
            raise InvalidVersion(f"{text!r} is not a SemVer version (MAJOR.MINOR.PATCH[-pre][+build])")
        major, minor, patch, pre, build = match.groups()
        return cls(int(major), int(minor), int(patch), _pre_parts(pre), build)

    def _key(self) -> tuple[object, ...]:
        # A release sorts after all of its pre-releases; within a pre-release,
        # numeric identifiers sort before alphanumeric ones (SemVer §11).
        pre_key = tuple((0, p, "") if isinstance(p, int) else (1, 0, p) for p in self.pre)
        return (self.major, self.minor, self.patch, 0 if self.pre else 1, pre_key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Version) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __lt__(self, other: Version) -> bool:
        return self._key() < other._key()

    def __str__(self) -> str:
        text = f"{self.major}.{self.minor}.{self.patch}"
        if self.pre:
            text += "-" + ".".join(str(p) for p in self.pre)
        if self.build:
            text += "+" + self.build
        return text


def parse_version(text: str) -> Version | None:
    try:
        return Version.parse(text)
    except InvalidVersion:
        return None


_OPERATORS = ("==", ">=", "<=", "~>", ">", "<")
_CLAUSE_RE = re.compile(r"^\s*(==|>=|<=|~>|>|<)?\s*(\S+)\s*$")


@dataclass(frozen=True)
class _Clause:
    op: str
    version: Version

    def matches(self, version: Version) -> bool:
        if self.op == "==":
            return version == self.version
        if self.op == ">":
            return version > self.version
        if self.op == ">=":
            return version >= self.version
        if self.op == "<":
            return version < self.version
        return version <= self.version


def _parse_clause(text: str) -> list[_Clause]:
    match = _CLAUSE_RE.match(text)
    if match is None:
        raise InvalidRequirement(f"cannot read {text.strip()!r}")
    op, operand = match.group(1) or "==", match.group(2)
    if op != "~>":
        try:
            return [_Clause(op, Version.parse(operand))]
        except InvalidVersion as exc:
            raise InvalidRequirement(str(exc)) from None
    short = _SHORT_RE.match(operand)
    if short is not None:
        major, minor, pre = int(short.group(1)), int(short.group(2)), _pre_parts(short.group(3))
        low = Version(major, minor, 0, pre)
        high = Version(major + 1, 0, 0, (0,))
    else:
        try:
            low = Version.parse(operand)
        except InvalidVersion as exc:
            raise InvalidRequirement(str(exc)) from None
        high = Version(low.major, low.minor + 1, 0, (0,))
    return [_Clause(">=", low), _Clause("<", high)]


@dataclass(frozen=True)
class Requirement:
    """Alternatives (joined by `or`), each a list of clauses that must all hold."""

    source: str
    alternatives: tuple[tuple[_Clause, ...], ...]

    @classmethod
    def parse(cls, text: str) -> Requirement:
        source = text.strip()
        if not source:
            raise InvalidRequirement("empty requirement")
        alternatives = []
        for alternative in re.split(r"\s+or\s+", source):
            clauses: list[_Clause] = []
            for part in re.split(r"\s+and\s+", alternative):
                if not part.strip() or part.strip() in ("and", "or"):
                    raise InvalidRequirement(f"dangling and/or in {source!r}")
                clauses += _parse_clause(part)
            alternatives.append(tuple(clauses))
        return cls(source, tuple(alternatives))

    def matches(self, version: Version | str) -> bool:
        if isinstance(version, str):
            parsed = parse_version(version)
            if parsed is None:
                return False
            version = parsed
        return any(all(c.matches(version) for c in alt) for alt in self.alternatives)

    def __str__(self) -> str:
        return self.source


def validate_requirement(text: str) -> None:
    """For model and form validation: "" (any version) or a valid requirement."""
    if text.strip():
        Requirement.parse(text)
