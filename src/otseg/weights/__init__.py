"""The files people download (CLIP weights, reference checkpoints and embeddings, dataset archives): a registry
as data (`registry.json`), identification of a file on disk, and resumable verified downloads."""

from otseg.weights.fetch import fetch, manual_steps
from otseg.weights.registry import RegistryEntry, file_digests, find_entry, identify, load_registry

__all__ = ["RegistryEntry", "fetch", "file_digests", "find_entry", "identify", "load_registry", "manual_steps"]
