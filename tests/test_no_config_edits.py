"""No code of the package edits a validated config after it was built: a changed setting is a new config
(`dataclasses.replace`, validated again) or a value passed to the call (`InferenceOptions`, `SinkhornOptions`)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "otseg"


def _names_a_config(node: ast.expr) -> bool:
    """`x.cfg`, `x.config`, `cfg`, `train_cfg`, `model_config`, ...: an expression that names a config."""
    name = node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else ""
    return name.lower().endswith(("cfg", "config"))


def _stored_attributes(targets: list[ast.expr]) -> list[ast.Attribute]:
    return [
        part
        for t in targets
        for part in ast.walk(t)
        if isinstance(part, ast.Attribute) and isinstance(part.ctx, ast.Store)
    ]


def config_edits(source: str) -> list[int]:
    """Line numbers of assignments to a field of a config (`model.head.cfg.seen_bias = 0`, `tcfg.lr += 1`) and of
    `setattr(cfg, ...)` in `source`."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            calls_setattr = isinstance(node.func, ast.Name) and node.func.id == "setattr"
            if calls_setattr and node.args and _names_a_config(node.args[0]):
                lines.append(node.lineno)
        elif isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign):
            targets: list[ast.expr] = list(node.targets) if isinstance(node, ast.Assign) else [node.target]
            if any(_names_a_config(part.value) for part in _stored_attributes(targets)):
                lines.append(node.lineno)
    return sorted(set(lines))


def test_the_check_finds_config_edits() -> None:
    edits = "model.head.cfg.ensemble_weight = 0.5\ntcfg.batch_size += 1\nsetattr(train_cfg, 'lr', 1)\n"
    assert config_edits(edits) == [1, 2, 3]
    allowed = "self.cfg = cfg\nmodel.config = replace(model.config, text=t)\ncfg = replace(cfg, lr=1)\nx.y = 1\n"
    assert config_edits(allowed) == []


def test_no_module_edits_a_config_in_place() -> None:
    found = {
        str(path.relative_to(SRC)): lines
        for path in sorted(SRC.rglob("*.py"))
        if (lines := config_edits(path.read_text(encoding="utf-8")))
    }
    assert found == {}, f"config fields assigned after construction (use dataclasses.replace or options): {found}"
