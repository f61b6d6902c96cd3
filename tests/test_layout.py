"""The test harness has one home: tests and benchmarks start hubs through
tests/support/hub.py, imports point from bench/ to tests/support/ and never
from tests/ to bench/, and mypy strict checks both trees (docs/benchmarks.md)."""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterator
from pathlib import Path

from tests.test_layering import parse_source

ROOT = Path(__file__).resolve().parent.parent


def _modules(*trees: str) -> Iterator[tuple[Path, ast.Module]]:
    for tree in trees:
        for path in sorted((ROOT / tree).rglob("*.py")):
            yield path, parse_source(path)


def _imported(module: ast.Module) -> Iterator[str]:
    for node in ast.walk(module):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.module


def test_it_keeps_tests_from_importing_the_benchmarks() -> None:
    # when
    found = [
        f"{path.relative_to(ROOT)}: {name}"
        for path, module in _modules("tests")
        for name in _imported(module)
        if name == "bench" or name.startswith("bench.")
    ]
    # then
    assert found == []


def test_it_starts_hub_processes_in_one_place() -> None:
    # when: code (not prose) naming the server's entry point
    launchers = sorted(
        str(path.relative_to(ROOT))
        for path, module in _modules("tests", "bench")
        if path != Path(__file__).resolve()
        for node in ast.walk(module)
        # `-m nerveshub.serve` in a command line: a launch, not a mention
        if isinstance(node, ast.List | ast.Tuple)
        and any(
            isinstance(a, ast.Constant)
            and a.value == "-m"
            and isinstance(b, ast.Constant)
            and b.value == "nerveshub.serve"
            for a, b in zip(node.elts, node.elts[1:], strict=False)
        )
    )
    # then
    assert launchers == ["tests/support/hub.py"]


def test_it_type_checks_the_tests_and_the_benchmarks() -> None:
    # when
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    # then
    assert config["strict"] is True
    assert not {"tests/", "bench/"} & set(config.get("exclude", []))
