"""otseg's release version, in one place: the package metadata (pyproject.toml reads it), `otseg.__version__`, the
ONNX export's metadata and the demo's result keys."""

__version__ = "0.1.0"
