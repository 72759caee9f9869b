"""The imports run one way: front doors -> control plane -> backends -> the core modules.

The control plane never imports a front door (so a server, a CLI and a script all get the
same manager, and no client code rides into it), backends never import the control plane
(a backend is a small surface the manager drives, as dask-gateway's are), the core
modules (spec, errors, config, pricing, logs, ...) import none of those, and what runs on
a VM (``coiled_lab.bootstrap``) imports only itself. Every import counts, those inside
functions too: a lazy import that runs back up is still a cycle waiting to happen.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "coiled_lab"
# The Python API (``Cluster`` and the module-level helpers), the magic, the CLI, the
# widgets and the REST client they share; the server extension is a front door too.
FRONT_DOORS = ("coiled_lab", "coiled_lab.api", "coiled_lab.cli", "coiled_lab.cluster", "coiled_lab.clusters",
               "coiled_lab.connect", "coiled_lab.instance_types", "coiled_lab.magic", "coiled_lab.widgets")


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def imports(path: Path, module: str) -> set[str]:
    """Every coiled_lab / coiled_lab_server module ``path`` (the module ``module``) imports,
    anywhere in it."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:  # `from .. import config` imports the module coiled_lab.config
                found.add(f"{target}.{alias.name}" if _is_module(f"{target}.{alias.name}") else target)
    return {name for name in found if name.split(".")[0] in ("coiled_lab", "coiled_lab_server")}


def layer(module: str) -> str:
    if module.split(".")[0] == "coiled_lab_server":
        return "front door"
    if any(module == f or (f != "coiled_lab" and module.startswith(f + ".")) for f in FRONT_DOORS):
        return "front door"
    for name in ("control", "backends", "bootstrap"):
        if module == f"coiled_lab.{name}" or module.startswith(f"coiled_lab.{name}."):
            return name
    return "core"


ALLOWED = {
    "control": {"control", "backends", "bootstrap", "core"},
    "backends": {"backends", "bootstrap", "core"},
    "core": {"core", "bootstrap"},
    "bootstrap": {"bootstrap"},
}


def violations(path: Path, module: str) -> list[str]:
    mine = layer(module)
    if mine == "front door":
        return []
    return [f"{module} ({mine}) imports {target} ({layer(target)})"
            for target in sorted(imports(path, module)) if layer(target) not in ALLOWED[mine]]


def test_no_import_runs_back_up() -> None:
    assert [v for path in sorted(PACKAGE.rglob("*.py")) for v in violations(path, _module(path))] == []


@pytest.mark.parametrize("source, expected", [
    ("from ..connect import get_control\n", "coiled_lab.connect (front door)"),
    ("def f():\n    from ..control.store import Store\n", "coiled_lab.control.store (control)"),
])
def test_the_walk_sees_an_upward_import(tmp_path: Path, source: str, expected: str) -> None:
    """The checker itself: a backend module that imports up (at the top or in a function) is caught."""
    planted = tmp_path / "planted.py"
    planted.write_text(source)
    assert violations(planted, "coiled_lab.backends.planted") == [
        f"coiled_lab.backends.planted (backends) imports {expected}"]
