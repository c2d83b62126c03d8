"""The package reads bottom-up: no module imports from a layer above its own (lazy imports included).

data -> models -> train -> eval <- analysis, as layers: a metric never needs the trainer, and the
trainer never needs the reports that are written about it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "segbench"
# Lower number = lower layer. A module may import its own layer or any lower one.
LAYERS = {
    "errors": 0,
    "io": 0,
    "progress": 0,
    "ranks": 0,
    "schema": 0,
    "trust": 0,
    "children": 0,
    "nn": 1,
    "data": 1,
    "models": 2,
    "config": 2,  # config composes and checks Hydra configs: it names norms and splits
    "eval": 3,
    "train": 4,
    "analysis": 5,
    "bench": 5,
    "cli": 6,
    "completion": 6,
    "train_command": 6,
    "report_commands": 6,
    "__main__": 7,
    "configs": 0,
    "__init__": 0,
}


def _layer_of(module: str) -> tuple[str, int]:
    part = module.split(".")[1] if module.count(".") else "__init__"
    return part, LAYERS[part]


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            found += [n for n in names[:1] if n.startswith("segbench")]
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("segbench")]
    return found


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if "configs" not in p.parts)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE.parent)))
def test_no_import_from_a_higher_layer(path):
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    own_name, own = _layer_of(module)
    for imported in _imports(path):
        if imported == "segbench":
            continue
        name, layer = _layer_of(imported)
        assert layer <= own, f"{module} (layer {own_name}) imports {imported} (layer {name}, higher)"


def test_every_subpackage_has_a_layer():
    tops = {
        p.stem if p.is_file() else p.name
        for p in PACKAGE.iterdir()
        if (p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").exists()))
    }
    assert tops <= set(LAYERS), f"give these a layer in LAYERS: {sorted(tops - set(LAYERS))}"
