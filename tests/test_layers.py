"""The package's layering, read from the source with `ast` (nothing is imported): one ordered list of layers, each
a set of folders or top-level modules of `src/otseg`, and every import, also the ones inside functions and
TYPE_CHECKING blocks, goes to its own layer or one below. The check is transitive and by folder: whatever a folder
reaches through any chain of imports sits no higher than it, and no chain of imports leads from a folder back to
itself. Module-level cycles are refused too.

A new folder or top-level module must be placed in `LAYERS` (the test says so).
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "otseg"

# Bottom to top. An entry names a folder (every module under it) or a module; a module belongs to the longest entry
# that names it or a folder above it. "otseg" is the package root alone (its lazy re-exports of the public API).
LAYERS: list[tuple[str, ...]] = [
    # the configuration and the exception family of bad input: import nothing else of ours
    ("otseg.errors", "otseg.validation", "otseg.clip.config", "otseg.config"),
    (
        "otseg.version",
        "otseg.utils",
        "otseg.distributed",
        "otseg.image_io",
        "otseg.viz",
        "otseg.warning_lines",
    ),  # leaf helpers
    ("otseg.data",),  # dataset facts, class names, transforms, datasets
    ("otseg.ops",),  # Sinkhorn, MPS, MPSA
    ("otseg.formats", "otseg.weights"),  # plain file readers (CLIP weights, embeddings, torch files), downloads
    ("otseg.clip",),  # the CLIP towers and their loading
    ("otseg.model",),  # the segmentor, its head, presets, text embeddings, labels
    ("otseg.eval", "otseg.model_files"),  # evaluation; the files that hold a whole model (openers, writers)
    ("otseg.named_models",),  # the models known by name: data
    ("otseg.predictor",),  # inference
    ("otseg.web_budget",),  # the web server's request and cache budget (ASGI)
    ("otseg.segment", "otseg.web", "otseg.export"),  # otseg segment | serve | export
    ("otseg.train",),  # training
    ("otseg.benchmark", "otseg.prepare"),  # otseg benchmark; dataset preparation
    ("otseg.demo",),  # the demo: an application of the library, imported by nothing in it
    ("otseg",),  # the package root
    ("otseg.cli", "otseg.__main__"),  # the command line: a module per command, the demo included
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


FILES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
MODULES = set(FILES)


def _resolve(name: str) -> str | None:
    """The module an imported name lives in: `otseg.model.build.load_clip_into` -> otseg.model.build,
    `from otseg import image_io` -> otseg.image_io, `from otseg import Predictor` -> otseg (the root)."""
    while name not in MODULES:
        if "." not in name:
            return None
        name = name.rsplit(".", 1)[0]
    return name


def _imports(module: str, path: Path) -> set[str]:
    """Every otseg module `module` imports, anywhere in the file (function bodies and TYPE_CHECKING included)."""
    found: set[str | None] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {_resolve(a.name) for a in node.names if a.name.split(".")[0] == "otseg"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from .x import y
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            if base.split(".")[0] == "otseg":
                found |= {_resolve(f"{base}.{a.name}") for a in node.names}
    return {m for m in found if m is not None and m != module}


GRAPH = {m: _imports(m, p) for m, p in FILES.items()}


def _entry(module: str) -> str | None:
    """The LAYERS entry a module belongs to (its folder, or itself where listed), None when unplaced."""
    names = [e for layer in LAYERS for e in layer]
    matches = [e for e in names if module == e or (e != "otseg" and module.startswith(e + "."))]
    return max(matches, key=len) if matches else None


LEVEL = {e: i for i, layer in enumerate(LAYERS) for e in layer}


def _unit_graph() -> dict[str, set[str]]:
    """The imports between LAYERS entries (folders / listed modules), from the module graph."""
    units: dict[str, set[str]] = {}
    for m, deps in GRAPH.items():
        u = _entry(m)
        assert u is not None
        units.setdefault(u, set()).update(d for d in (_entry(x) for x in deps) if d is not None and d != u)
    return units


def _paths_from(start: str, graph: dict[str, set[str]]) -> dict[str, list[str]]:
    """Every node reachable from `start`, with one shortest chain of imports to it."""
    paths = {start: [start]}
    todo = [start]
    while todo:
        node = todo.pop(0)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in paths:
                paths[nxt] = [*paths[node], nxt]
                todo.append(nxt)
    return paths


def test_the_graph_is_read() -> None:
    assert "otseg.config" in GRAPH["otseg.model.segmentor"]
    assert "otseg.image_io" in GRAPH["otseg.data.sample_files"]  # `from otseg import image_io`
    assert "otseg.clip.config" in GRAPH["otseg.config"]
    assert _entry("otseg.clip.config") == "otseg.clip.config" and _entry("otseg.clip.vpt") == "otseg.clip"
    assert _entry("otseg") == "otseg" and _entry("otseg.cli") == "otseg.cli"


def test_every_module_has_a_layer() -> None:
    unplaced = sorted(m for m in MODULES if _entry(m) is None)
    assert not unplaced, f"place these in LAYERS (tests/test_layers.py): {unplaced}"
    listed = [e for layer in LAYERS for e in layer]
    assert len(listed) == len(set(listed))
    assert not [e for e in listed if not any(m == e or m.startswith(e + ".") for m in MODULES)], "stale entries"


def test_layers_depend_downward_transitively() -> None:
    """What a folder reaches through any chain of imports sits in its layer or below."""
    units = _unit_graph()
    offenders = []
    for unit in sorted(units):
        for reached, chain in _paths_from(unit, units).items():
            if LEVEL[reached] > LEVEL[unit]:
                offenders.append(" -> ".join(chain))
    assert not offenders, "imports up the layers:\n" + "\n".join(offenders)


def _cycle_through(node: str, graph: dict[str, set[str]]) -> list[str] | None:
    """A chain of imports from `node` back to itself, or None."""
    for nxt in sorted(graph.get(node, ())):
        back = _paths_from(nxt, graph).get(node)
        if back is not None:
            return [node, *back]
    return None


def test_no_folder_level_cycles() -> None:
    units = _unit_graph()
    cycles = [" -> ".join(c) for u in sorted(units) if (c := _cycle_through(u, units)) is not None]
    assert not cycles, "folders on an import cycle:\n" + "\n".join(cycles)


def test_no_module_level_cycles() -> None:
    # The package root is a module like any other here: none of the modules it re-exports may import it.
    cycles = [" -> ".join(c) for m in sorted(GRAPH) if (c := _cycle_through(m, GRAPH)) is not None]
    assert not cycles, "modules on an import cycle:\n" + "\n".join(cycles)


def test_the_library_never_imports_the_demo() -> None:
    """Only the command line reaches the demo; the layers above put nothing else there."""
    importers = sorted(m for m, deps in GRAPH.items() if _entry(m) != "otseg.demo" and any(
        _entry(d) == "otseg.demo" for d in deps))  # fmt: skip
    assert {_entry(m) for m in importers} <= {"otseg.cli"}, importers


def test_the_dataset_facts_sit_on_the_configuration_layer_only() -> None:
    assert {_entry(d) for d in GRAPH["otseg.data.facts"]} <= set(LAYERS[0])


def test_files_are_read_only_in_otseg_formats() -> None:
    """Every reader of a weights file lives in otseg.formats or otseg.model_files: no other module calls torch.load,
    safetensors' readers, numpy.load or unpickles (images have otseg.image_io, ONNX files otseg.export)."""
    readers = {"load", "load_file", "safe_open", "Unpickler", "loadmat"}
    offenders = []
    for module, path in FILES.items():
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
