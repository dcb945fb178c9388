"""Loading OpenAI CLIP weights (read by `otseg.formats.openai_clip`) into the OTSeg towers.

Key mapping is explicit: `visual.*` goes to the image backbone with the prefix stripped (its positional
table resized to the backbone's grid), the top-level text keys go to the text encoder unchanged, and
`logit_scale` is ignored. Anything else that does not fit is an error that names the file.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from otseg.clip.config import TextConfig, VisionConfig
from otseg.clip.model import CLIP, resize_positional_embedding
from otseg.clip.text import TextEncoder
from otseg.clip.vpt import VPTVisionTransformer
from otseg.errors import BadValueError
from otseg.formats.openai_clip import EXPECTED_CLIP_FORMATS, read_clip_state_dict
from otseg.formats.state_dict import check_state_dict_fits

__all__ = [
    "LoadReport",
    "infer_clip_configs",
    "load_clip_weights",
    "load_openai_clip",
    "read_clip_state_dict",
    "resize_positional_embedding",
    "text_state_dict",
    "vision_state_dict",
]

StateDict = dict[str, Tensor]
PathLike = str | os.PathLike[str]

# Integer scalars the released archives carry next to the weights; OpenAI's build_model deletes them.
_SCALAR_KEYS = ("input_resolution", "context_length", "vocab_size")
# Top-level keys (or key prefixes) of the text tower in OpenAI's layout.
_TEXT_PREFIXES = ("transformer.", "token_embedding.", "ln_final.")
_TEXT_KEYS = ("positional_embedding", "text_projection")
_IGNORED_KEYS = ("logit_scale", *_SCALAR_KEYS)  # the scalars only appear in in-memory dicts


# ------------------------------------------------------------------------------------------ configuration


def _block_count(sd: Mapping[str, Tensor], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    indices = {int(m.group(1)) for k in sd if (m := pattern.match(k))}
    return max(indices) + 1 if indices else 0


def _require(sd: Mapping[str, Tensor], keys: tuple[str, ...], what: str) -> None:
    missing = [k for k in keys if k not in sd]
    if missing:
        raise BadValueError(f"not a ViT CLIP {what} state dict: missing {missing}")


def _default_heads(width: int) -> int:
    # OpenAI's rule (head size 64), clamped so that tiny test models still get one head.
    return max(1, width // 64)


def infer_clip_configs(
    sd: Mapping[str, Tensor], *, vision_heads: int | None = None, text_heads: int | None = None
) -> tuple[VisionConfig, TextConfig]:
    """Read the architecture of a ViT CLIP from its state-dict shapes.

    Head counts are not stored in a checkpoint: by default they are width // 64 (at least 1), as OpenAI's
    `build_model` assumes; pass `vision_heads` / `text_heads` for models that break that rule. The vision
    config gets `image_size = patch * grid` of the stored table and `deep_prompt_layers = layers - 1`
    (every block sees prompts, as in all released OTSeg configs).
    """
    _require(
        sd,
        ("visual.conv1.weight", "visual.class_embedding", "visual.positional_embedding", "visual.proj"),
        "image tower",
    )
    _require(
        sd,
        ("token_embedding.weight", "positional_embedding", "ln_final.weight", "text_projection"),
        "text tower",
    )
    conv = sd["visual.conv1.weight"]
    width, patch = conv.shape[0], conv.shape[-1]
    rows = sd["visual.positional_embedding"].shape[0]
    grid = math.isqrt(rows - 1)
    if grid * grid != rows - 1:
        raise BadValueError(f"visual.positional_embedding has {rows} rows; expected 1 + g*g")
    layers = _block_count(sd, "visual.transformer.resblocks.")
    vision = VisionConfig(
        image_size=patch * grid,
        patch_size=patch,
        width=width,
        layers=layers,
        heads=vision_heads if vision_heads is not None else _default_heads(width),
        output_dim=sd["visual.proj"].shape[1],
        deep_prompt_layers=max(layers - 1, 1),
    )
    text_width = sd["ln_final.weight"].shape[0]
    text = TextConfig(
        context_length=sd["positional_embedding"].shape[0],
        vocab_size=sd["token_embedding.weight"].shape[0],
        width=text_width,
        heads=text_heads if text_heads is not None else _default_heads(text_width),
        layers=_block_count(sd, "transformer.resblocks."),
        output_dim=sd["text_projection"].shape[1],
    )
    return vision, text


# -------------------------------------------------------------------------------------------- key mapping


def _is_text_key(key: str) -> bool:
    return key in _TEXT_KEYS or key.startswith(_TEXT_PREFIXES)


def vision_state_dict(sd: Mapping[str, Tensor], cfg: VisionConfig) -> StateDict:
    """The `visual.*` entries with the prefix stripped; the positional table resized to cfg.grid_size."""
    out = {k.removeprefix("visual."): v for k, v in sd.items() if k.startswith("visual.")}
    if not out:
        raise BadValueError("the state dict has no 'visual.*' keys: not a CLIP checkpoint with an image tower")
    if "positional_embedding" in out:
        out["positional_embedding"] = resize_positional_embedding(out["positional_embedding"], cfg.grid_size)
    return out


def text_state_dict(sd: Mapping[str, Tensor]) -> StateDict:
    """The text-tower entries (`positional_embedding`, `text_projection`, `token_embedding.*`,
    `ln_final.*`, `transformer.*`), names unchanged."""
    return {k: v for k, v in sd.items() if _is_text_key(k)}


# ------------------------------------------------------------------------------------------------ loading


@dataclass
class LoadReport:
    """What `load_clip_weights` did. Key names are prefixed with the receiving module."""

    source: str
    loaded: list[str] = field(default_factory=list)
    missing_prompt: list[str] = field(default_factory=list)  # kept their constructor init
    ignored: list[str] = field(default_factory=list)  # checkpoint keys deliberately not used
    positional_resize: tuple[tuple[int, ...], tuple[int, ...]] | None = None

    def summary(self) -> str:
        """One human-readable line."""
        parts = [f"loaded {len(self.loaded)} CLIP tensors from {self.source}"]
        if self.missing_prompt:
            parts.append(f"{len(self.missing_prompt)} prompt parameters keep their init")
        text = [k for k in self.ignored if _is_text_key(k)]
        other = [k for k in self.ignored if not _is_text_key(k)]
        if other:
            parts.append(f"ignored {', '.join(other)}")
        if text:
            parts.append(f"ignored {len(text)} text-tower keys (no text encoder given)")
        if self.positional_resize is not None:
            old, new = self.positional_resize
            parts.append(f"positional embedding resized {old} -> {new}")
        return "; ".join(parts)

    def __str__(self) -> str:
        return self.summary()


def _load_checked(
    module: nn.Module,
    sd: Mapping[str, Tensor],
    *,
    source: str,
    what: str,
    may_be_missing: Callable[[str], bool] = lambda key: False,
    checkpoint_prefix: str = "",
) -> tuple[list[str], list[str]]:
    """Copy `sd` into `module` after checking names and shapes (`otseg.formats.state_dict.check_state_dict_fits`, the
    one check); returns (loaded, missing-but-allowed).

    Error messages use checkpoint key names (`checkpoint_prefix` + module key), which is what a user can
    look up in the file.
    """
    missing = check_state_dict_fits(
        module,
        sd,
        f"CLIP weights {source} ({what})",
        may_be_missing=may_be_missing,
        key_prefix=checkpoint_prefix,
        fix=f"expected {EXPECTED_CLIP_FORMATS} of the model's size",
    )
    module.load_state_dict(sd, strict=False)
    return list(sd), missing


def _source_of(path_or_sd: PathLike | Mapping[str, Tensor]) -> tuple[StateDict, str]:
    if isinstance(path_or_sd, Mapping):
        return dict(path_or_sd), "<in-memory state dict>"
    return read_clip_state_dict(path_or_sd), str(path_or_sd)


def load_clip_weights(
    backbone: VPTVisionTransformer,
    text_encoder: TextEncoder | None,
    path_or_sd: PathLike | Mapping[str, Tensor],
) -> LoadReport:
    """Load frozen CLIP weights into OTSeg's image backbone (and text encoder), as the reference does.

    Only the prompt parameters may be absent from the checkpoint (they keep their init). A key that fits
    neither tower, a missing non-prompt parameter or a shape mismatch raises `ValueError` naming the file.
    `logit_scale` is ignored, and so are the text keys when `text_encoder` is None.
    """
    sd, source = _source_of(path_or_sd)
    report = LoadReport(source=source)
    stray = [k for k in sd if not (k.startswith("visual.") or _is_text_key(k) or k in _IGNORED_KEYS)]
    if stray:
        shown = repr(stray[:5])[:-1] + (", ...]" if len(stray) > 5 else "]")
        raise BadValueError(
            f"CLIP weights {source} do not fit this model: {len(stray)} unexpected key(s) {shown}; "
            f"expected {EXPECTED_CLIP_FORMATS}"
        )
    report.ignored = [k for k in sd if k in _IGNORED_KEYS]

    vis = vision_state_dict(sd, backbone.cfg)
    old_pos = sd.get("visual.positional_embedding")
    if old_pos is not None and old_pos.shape != vis["positional_embedding"].shape:
        report.positional_resize = (tuple(old_pos.shape), tuple(vis["positional_embedding"].shape))
    loaded, missing = _load_checked(
        backbone,
        vis,
        source=source,
        what="the image backbone",
        may_be_missing=lambda k: "prompt" in k,
        checkpoint_prefix="visual.",
    )
    report.loaded += [f"backbone.{k}" for k in loaded]
    report.missing_prompt += [f"backbone.{k}" for k in missing]

    text = text_state_dict(sd)
    if text_encoder is None:
        report.ignored += list(text)
    else:
        loaded, _ = _load_checked(text_encoder, text, source=source, what="the text encoder")
        report.loaded += [f"text_encoder.{k}" for k in loaded]
    return report


def load_openai_clip(path: PathLike, *, vision_heads: int | None = None, text_heads: int | None = None) -> CLIP:
    """Build a `CLIP` from a checkpoint's shapes and load it strictly; returned in eval mode.

    The head counts default to width // 64 (see `infer_clip_configs`).
    """
    sd = read_clip_state_dict(path)
    try:
        vision, text = infer_clip_configs(sd, vision_heads=vision_heads, text_heads=text_heads)
    except ValueError as e:
        raise BadValueError(f"cannot load CLIP weights from {path}: {e}") from e
    with torch.device("meta"):  # shapes only: the file must fit before the model is built (block counts are key names)
        shapes_only = CLIP(vision, text)
    check_state_dict_fits(shapes_only, sd, f"CLIP weights {path} (CLIP)", fix=f"expected {EXPECTED_CLIP_FORMATS}")
    model = CLIP(vision, text)
    _load_checked(model, sd, source=str(path), what="CLIP")
    return model.eval()
