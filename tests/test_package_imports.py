"""The serving path is light: `import otseg`, `from otseg import Predictor`, the "demo" model and the modules behind
`otseg segment | serve | export` load no module of training, the demo or dataset preparation. Checked in a fresh
interpreter, after each step in turn (sys.modules only grows, so each step is checked with all before it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import otseg

SRC = Path(__file__).resolve().parents[1] / "src"
HEAVY = ("otseg.train", "otseg.demo", "otseg.prepare")

STEPS = {
    "import otseg": "import otseg",
    "from otseg import Predictor": "from otseg import Predictor",
    'Predictor.from_pretrained("demo")': 'predictor = Predictor.from_pretrained("demo")',
    "predictor.predict(...)": "import numpy as np; predictor.predict(np.zeros((40, 50, 3), np.uint8))",
    "import otseg.segment (otseg segment)": "import otseg.segment",
    "import otseg.web (otseg serve)": "import otseg.web",
    "import otseg.export (otseg export)": "import otseg.export",
}

PROBE = """
import json, sys
loaded = {}
def check(step):
    loaded[step] = sorted(m for m in sys.modules if m == "otseg" or m.startswith("otseg."))
    loaded[step + " torch"] = ["torch"] if "torch" in sys.modules else []
"""


def _loaded_after_each_step() -> dict[str, list[str]]:
    code = PROBE + "".join(f"{line}\ncheck({step!r})\n" for step, line in STEPS.items()) + "print(json.dumps(loaded))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_serving_loads_no_training_demo_or_preparation():
    loaded = _loaded_after_each_step()
    for step in STEPS:
        heavy = [m for m in loaded[step] if m.startswith(HEAVY)]
        assert not heavy, f"after {step}: {heavy}"
    # The package root is lazy: importing it loads its version and nothing else (no torch).
    assert loaded["import otseg"] == ["otseg", "otseg.version"] and loaded["import otseg torch"] == []
    assert "otseg.predictor" in loaded["from otseg import Predictor"]  # the probe does see what is imported


def test_the_lazy_root_keeps_every_public_name():
    for name in otseg.__all__:
        assert getattr(otseg, name) is not None, name
    assert set(otseg.__all__) <= set(dir(otseg))
    from otseg.predictor import Predictor

    assert otseg.Predictor is Predictor
