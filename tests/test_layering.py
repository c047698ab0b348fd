"""The library never depends on the experiments layer: no module under leanjax/ outside
leanjax/experiments/ imports `leanjax.experiments` or ml_collections (the config library), and no
experiment module imports another experiment (shared helpers live in `_`-prefixed modules)."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / "leanjax"


def _imports(path: pathlib.Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            names += [f"{node.module}.{a.name}" for a in node.names]
    return names


def _library_edges(root: pathlib.Path) -> list[str]:
    bad = []
    for path in sorted(root.rglob("*.py")):
        if "experiments" in path.relative_to(root).parts:
            continue
        for name in _imports(path):
            if name.startswith(("leanjax.experiments", "ml_collections")):
                bad.append(f"{path.relative_to(root.parent)} imports {name}")
    return bad


def _experiment_edges(root: pathlib.Path) -> list[str]:
    experiments = root / "experiments"
    public = {p.stem for p in experiments.glob("*.py") if not p.stem.startswith("_")}
    bad = []
    for path in sorted(experiments.glob("*.py")):
        for name in _imports(path):
            parts = name.split(".")
            if parts[:2] == ["leanjax", "experiments"] and len(parts) > 2 and parts[2] in public:
                bad.append(f"{path.relative_to(root.parent)} imports {name}")
    return bad


def test_library_imports_no_experiment_or_config():
    assert _library_edges(ROOT) == []


def test_no_experiment_imports_another():
    assert _experiment_edges(ROOT) == []


@pytest.mark.parametrize("source, finder", [
    ("from leanjax.experiments._launch import load_config\n", _library_edges),
    ("import ml_collections\n", _library_edges),
])
def test_the_walk_finds_a_library_edge(tmp_path, source, finder):
    (tmp_path / "leanjax" / "audit").mkdir(parents=True)
    (tmp_path / "leanjax" / "audit" / "bad.py").write_text(source)
    edges = finder(tmp_path / "leanjax")
    assert edges and all(e.startswith("leanjax/audit/bad.py imports ") for e in edges)


def test_the_walk_finds_an_experiment_edge(tmp_path):
    (tmp_path / "leanjax" / "experiments").mkdir(parents=True)
    (tmp_path / "leanjax" / "experiments" / "lora.py").write_text("x = 1\n")
    (tmp_path / "leanjax" / "experiments" / "quantize.py").write_text("from leanjax.experiments.lora import x\n")
    (tmp_path / "leanjax" / "experiments" / "_minilm.py").write_text("y = 2\n")
    (tmp_path / "leanjax" / "experiments" / "prune.py").write_text("from leanjax.experiments._minilm import y\n")
    assert _experiment_edges(tmp_path / "leanjax") == [
        "leanjax/experiments/quantize.py imports leanjax.experiments.lora",
        "leanjax/experiments/quantize.py imports leanjax.experiments.lora.x"]
