"""The package's layering, read from the source: the configuration layer at the bottom, no import cycles, and
the few downward-only rules the architecture relies on. Parsed with `ast`, nothing is imported."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "otseg"

CONFIG_LAYER = {"otseg.validation", "otseg.clip.config", "otseg.config"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(name: str, modules: set[str]) -> str:
    """`from otseg import image_io` names the module otseg.image_io; `from otseg import Predictor` the package."""
    return name if name in modules else name.rsplit(".", 1)[0]


def _imports(path: Path, modules: set[str], top_only: bool) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "otseg"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "otseg":
            for alias in node.names:
                found.add(_resolve(f"{node.module}.{alias.name}", modules))
    return {m for m in found if m in modules}


def _graph(top_only: bool) -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(files)
    return {m: _imports(p, modules, top_only) - {m} for m, p in files.items()}


GRAPH = _graph(top_only=False)  # every import, also inside functions and TYPE_CHECKING blocks


def _reachable(start: str, graph: dict[str, set[str]]) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_the_graph_is_read() -> None:
    assert "otseg.config" in GRAPH["otseg.model.segmentor"]
    assert "otseg.image_io" in GRAPH["otseg.data.datasets"]  # `from otseg import image_io`


def test_the_configuration_layer_imports_only_itself() -> None:
    for module in CONFIG_LAYER:
        assert GRAPH[module] <= CONFIG_LAYER, f"{module} imports {sorted(GRAPH[module] - CONFIG_LAYER)}"


def test_the_dataset_facts_sit_on_the_configuration_layer_only() -> None:
    assert GRAPH["otseg.data.facts"] <= CONFIG_LAYER


def test_files_are_read_only_in_otseg_formats() -> None:
    """Every reader of a weights file lives in otseg.formats or otseg.model_files: no other module calls torch.load, safetensors'
    readers, numpy.load or unpickles (images have otseg.image_io, ONNX files otseg.export)."""
    readers = {"load", "load_file", "safe_open", "Unpickler", "loadmat"}
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        module = _module_name(path)
        if module.split(".")[1:2] in (["formats"], ["model_files"], ["demo"], ["weights"], ["prepare"]):
            continue  # the demo's shipped packs, the registry's header check, the official archives: their own
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else ""
                weights = name == "load" and owner in ("torch", "np", "numpy", "pickle")
                if weights or (name in readers - {"load"} and owner in ("", "pickle", "safetensors")):
                    offenders.append(f"{module}:{node.lineno}: {owner + '.' if owner else ''}{name}")
    assert not offenders, offenders


def test_no_import_cycles() -> None:
    # The package root re-exports the public API, so a submodule importing `otseg` itself would close a loop
    # through it; that edge is excluded only for the root's own re-exports (leaf users such as cli may use it).
    graph = {m: deps - {"otseg"} for m, deps in GRAPH.items() if m != "otseg"}
    cycles = sorted(m for m in graph if m in _reachable(m, graph))
    assert not cycles, f"modules on an import cycle: {cycles}"


@pytest.mark.parametrize(
    ("lower", "upper"),
    [
        ("otseg.clip", "otseg.model"),  # the CLIP towers know nothing of the segmentor
        ("otseg.data", "otseg.model"),  # data pipelines feed models without knowing them
        ("otseg.eval", "otseg.train"),  # evaluation does not depend on training
        ("otseg.ops", "otseg.model"),
        ("otseg.predictor", "otseg.demo"),  # built-in models come through otseg.named_models
        ("otseg.model", "otseg.predictor"),
        # The readers of files that hold no model sit below the model: CLIP weights, class embeddings, torch files.
        ("otseg.formats.openai_clip", "otseg.model"),
        ("otseg.formats.torchscript", "otseg.model"),
        ("otseg.formats.class_embeddings", "otseg.model"),
        ("otseg.formats.torch_pickle", "otseg.model"),
        ("otseg.formats.state_dict", "otseg.model"),
    ],
)
def test_layers_depend_downward(lower: str, upper: str) -> None:
    offenders = {
        m: sorted(d for d in deps if d == upper or d.startswith(upper + "."))
        for m, deps in GRAPH.items()
        if m == lower or m.startswith(lower + ".")
    }
    offenders = {m: d for m, d in offenders.items() if d}
    assert not offenders, f"{lower} must not import {upper}: {offenders}"
