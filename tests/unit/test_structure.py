"""The shape of the framework: no import cycles, short modules, no reference-app imports."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = SRC / "dualwrite"
PURE = ("dualwrite.crypto", "dualwrite.phases", "dualwrite.schema.sql", "dualwrite.spec")


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(SRC).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def imports(path: Path, name: str) -> set[str]:
    """Every module named by an import anywhere in the file (TYPE_CHECKING, functions too)."""
    pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join([*parts, *([base] if base else [])])
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    edges: dict[str, set[str]] = defaultdict(set)
    for name, path in mods.items():
        for target in imports(path, name):
            while target and target not in mods:
                target = target.rsplit(".", 1)[0] if "." in target else ""
            if target and target != name and not name.startswith(target + "."):
                edges[name].add(target)
    return edges


def test_no_import_cycles() -> None:
    edges = graph()
    state: dict[str, int] = {}  # 1 = on the path, 2 = done
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for name in sorted(modules()):
        if name not in state:
            visit(name, [name])
    assert cycles == []


def test_modules_stay_short() -> None:
    long = {n: len(p.read_text().splitlines()) for n, p in modules().items()}
    assert {n: lines for n, lines in long.items() if lines > 400} == {}


def test_no_prefix_families() -> None:
    """Three siblings sharing a name prefix belong in a subpackage."""
    for folder in [PACKAGE, *(p for p in PACKAGE.rglob("*") if p.is_dir())]:
        stems = [p.stem for p in folder.glob("*.py") if p.stem != "__init__"]
        prefixes = defaultdict(list)
        for stem in stems:
            if "_" in stem.strip("_"):
                prefixes[stem.strip("_").split("_")[0]].append(stem)
        assert {k: v for k, v in prefixes.items() if len(v) >= 3} == {}, folder


def test_framework_never_imports_the_reference_service() -> None:
    for name, path in modules().items():
        assert not any(t.startswith("clients_service") for t in imports(path, name)), name


def test_pure_modules_import_no_io() -> None:
    io = ("sqlalchemy", "asyncpg", "alembic", "fastapi", "httpx", "socket", "subprocess")
    for name, path in modules().items():
        if name.startswith(PURE):
            bad = {t for t in imports(path, name) if t.split(".")[0] in io}
            assert bad == set(), name
