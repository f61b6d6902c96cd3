"""The layout's import rules, read from the source (docs/architecture.md, "Layers").

* The device link (`devicelink/`) sits on top: only the routing and the server
  entry point import it; no domain app does, not even inside a function.
* No module-level import cycle among the production modules beyond the ones
  listed in ALLOWED_MODULE_CYCLES, each with the reason it is the right shape.
* No import cycle between apps through module-level imports.

Run as a script (`python tests/test_layering.py`) for the figures: cycles at
module and app level, module-level and function-local imports counted apart.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("nerveshub", "devicelink", "devices", "deployments", "firmware", "certificates", "console", "webhooks")
# What "an app" is for the app-level graph: nerveshub's subpackages are apps of
# their own; the helpers the apps borrow (admin base classes, API helpers) are a
# layer below the apps; management commands are entry points, like the project's
# own modules (settings, urls, routing, the ASGI and Celery apps, the CLI).
SUBAPPS = ("nerveshub.tenancy", "nerveshub.web", "nerveshub.lib")
SHARED = ("nerveshub.admin_base", "nerveshub.apihelpers")
DOMAIN_APPS = (
    "devices",
    "deployments",
    "firmware",
    "certificates",
    "console",
    "webhooks",
    "nerveshub.tenancy",
    "nerveshub.web",
    "nerveshub.lib",
)
# Who may import the device link besides itself: the websocket routing and the
# server entry point (which installs the link's daphne extensions and starts its
# dispatcher).
LINK_IMPORTERS = ("nerveshub.routing", "nerveshub.asgi", "nerveshub.serve")
ALLOWED_MODULE_CYCLES: set[frozenset[str]] = {
    # Another change merges these two certificate builders into one module.
    frozenset({"certificates.pki", "certificates.nerves_key"}),
}


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    local: bool  # inside a function: runs when called, not when the module loads
    line: int


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def production_files() -> Iterator[Path]:
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "migrations" not in path.parts:
                yield path


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every runtime import with whether it is inside a function (imports under
    `if TYPE_CHECKING:` never run and are left out)."""

    def walk(node: ast.AST, local: bool) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for other in child.orelse:
                    yield from walk(other, local)
                continue
            if isinstance(child, ast.Import | ast.ImportFrom):
                yield child, local
            yield from walk(child, local or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda))

    yield from walk(tree, False)


def parse_source(path: Path) -> ast.Module:
    """`ast.parse` of one of the project's files. CPython 3.11 keeps the AST
    constructor's recursion counter in state that threads share (CPython
    gh-106905, fixed in later releases): a parse that overlaps one in another
    thread of the test process (a module imported by a background thread and
    rewritten by pytest) can fail with "SystemError: AST constructor recursion
    depth mismatch" although the file is fine. Parsed again, it gives the tree."""
    source = path.read_text()
    for _ in range(2):
        try:
            return ast.parse(source, str(path))
        except SystemError:
            continue
    return ast.parse(source, str(path))


def edges(modules: set[str] | None = None) -> list[Edge]:
    files = {module_name(path): path for path in production_files()}
    known = set(files) if modules is None else modules
    found: list[Edge] = []
    for source, path in files.items():
        package = source if path.name == "__init__.py" else source.rpartition(".")[0]
        for node, local in _imports(parse_source(path)):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                # `from package import module` imports the module.
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
            for target in targets:
                while target and target not in known:
                    target = target.rpartition(".")[0]
                if target and target != source:
                    found.append(Edge(source, target, local, node.lineno))
    return found


def app_of(module: str) -> str:
    if ".management." in module or module.endswith(".management"):
        return module.split(".management")[0] + ".management"
    if module in SHARED:
        return "nerveshub.shared"
    for sub in SUBAPPS:
        if module == sub or module.startswith(sub + "."):
            return sub
    return module.split(".")[0]


def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm; returns the components with more than one node."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []
    counter = 0
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component: set[str] = set()
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.add(top)
                if top == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def graph_of(found: Iterable[Edge], *, local: bool, apps: bool) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for edge in found:
        if edge.local and not local:
            continue
        source, target = (app_of(edge.source), app_of(edge.target)) if apps else (edge.source, edge.target)
        if source != target:
            graph[source].add(target)
    return graph


# --- the rules -----------------------------------------------------------------------


def test_it_keeps_every_domain_app_off_the_device_link() -> None:
    offending = [
        f"{e.source}:{e.line}"
        for e in edges()
        if e.target.split(".")[0] == "devicelink"
        and app_of(e.source) != "devicelink"
        and e.source not in LINK_IMPORTERS
    ]
    assert offending == [], f"only {LINK_IMPORTERS} may import devicelink; also: {offending}"


def test_it_has_no_new_module_level_import_cycle() -> None:
    cycles = {frozenset(c) for c in strongly_connected(graph_of(edges(), local=False, apps=False))}
    assert cycles - ALLOWED_MODULE_CYCLES == set()


def test_it_keeps_the_device_link_out_of_every_cycle_between_apps() -> None:
    for local in (False, True):
        cycles = strongly_connected(graph_of(edges(), local=local, apps=True))
        assert [c for c in cycles if "devicelink" in c] == []


def test_it_finds_a_cycle_it_is_shown() -> None:
    # The checker itself: a cycle is a cycle, a chain is not.
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]
    assert strongly_connected({"a": {"b"}, "b": {"c"}}) == []


def report() -> None:
    found = edges()
    local = [e for e in found if e.local]
    print(f"imports: {len(found) - len(local)} module-level, {len(local)} function-local")
    for apps in (False, True):
        for with_local in (False, True):
            cycles = strongly_connected(graph_of(found, local=with_local, apps=apps))
            what = "app" if apps else "module"
            how = "all imports" if with_local else "module-level imports"
            print(f"{what}-level cycles ({how}): {len(cycles)}")
            for cycle in cycles:
                print("   ", " <-> ".join(sorted(cycle)))
    print("function-local imports:")
    for e in local:
        print(f"    {e.source}:{e.line} -> {e.target}")
    direction: dict[str, set[str]] = graph_of(found, local=True, apps=True)
    print("app imports (all):")
    for source in sorted(direction):
        print(f"    {source} -> {', '.join(sorted(direction[source]))}")


if __name__ == "__main__":
    report()
