"""A small CLIP for the demo world: the real CLIP towers at small widths, pretrained contrastively on captions.

The model is `otseg.clip.model.CLIP` (the same vision and text code that loads OpenAI's ViT-B/16), with a 64 px
image, 8 px patches and widths of 64-128. It is trained from scratch with CLIP's symmetric InfoNCE loss on the
world's pretraining corpus (`world.pretraining_corpus`): captioned images of **all** classes, unseen included,
and no masks. Whatever the text tower knows about an unseen class name therefore comes from captions, as it
does for the real CLIP.

The loss is CLIP's alone: image-caption InfoNCE on the class token, with no dense or patch-level term and no
masks. Its patch tokens are therefore as the real CLIP's are: the last block's patch outputs receive no gradient of
their own, so scoring them against text without training is a weak segmenter (the demo's "training-free" row),
while a trained head can read what they carry (the world card's linear probe).

Shipped weights: pretraining takes about 17 minutes on 2 CPU cores, more than the whole demo takes, so the
package ships the default tiny CLIP (`tiny_clip.safetensors` beside this file, about 3 MB) and `tiny_clip_path`
unpacks it into the cache instead of pretraining. The pack holds every tensor except the untouched rows of the
49408-row token table: the captions use a few dozen tokens, the sparse optimiser never moves the other rows, and
those rows are drawn from NumPy's legacy `RandomState`, whose stream is frozen across versions and platforms, so
they are rebuilt exactly. The pack records the SHA-256 of the full state dict, checked on unpacking. To rebuild it
from scratch (and compare with the shipped one, bit for bit)::

    python -m otseg.demo.rebuild tiny-clip --out tiny_clip.safetensors

The CLIP is one fixed model, as OpenAI's is: its corpus is drawn with its own seed (`TinyClipConfig.seed`), not
the demo's `--seed`, which varies the segmentation world and the training runs.

The result is saved as a plain state dict with OpenAI's key names (`visual.conv1.weight`, `token_embedding.weight`,
`logit_scale`, ...), the format `otseg.clip.loading.read_clip_state_dict` reads, and head counts follow OpenAI's
width // 64 rule so that `build_model(..., clip=path)` infers the architecture from the file alone. It is cached
under `<otseg cache>/demo/` keyed by a hash of the world and training settings, and rebuilt on first use.

Determinism: initialisation, batch order and augmentation come from seeded generators, and the rebuild command
pins the thread count, so a rebuild with the same torch build on the same kind of CPU gives the same weights bit
for bit. Other CPUs (another vector instruction set) may round matrix products differently.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor
from tqdm.auto import tqdm

from otseg.clip.config import TextConfig, VisionConfig
from otseg.clip.model import CLIP
from otseg.clip.tokenizer import get_tokenizer, tokenize
from otseg.config import IMAGENET_MEAN, IMAGENET_STD
from otseg.demo.world import CLASS_NAMES, WorldConfig, demo_cache_root, iter_split, pretraining_corpus, unseen_ids
from otseg.errors import BadValueError
from otseg.utils import atomic_torch_save, atomic_write, atomic_write_text

__all__ = ["TinyClipConfig", "evaluate_zero_shot", "tiny_clip_path", "train_tiny_clip"]

# Bump when the training code changes what it produces, so that cached checkpoints are rebuilt.
TINY_CLIP_VERSION = 4


@dataclass(frozen=True)
class TinyClipConfig:
    """Architecture and pretraining recipe of the demo CLIP."""

    patch_size: int = 8
    vision_width: int = 128  # heads = width // 64 (OpenAI's rule), so the loader infers them from the file
    vision_layers: int = 3
    text_width: int = 64
    text_layers: int = 3
    embed_dim: int = 64
    context_length: int = 77  # stored table size: `compute_class_embeddings` tokenises to 77
    steps: int = 5000
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup: int = 40
    # The contrastive temperature's inverse. CLIP starts at 1 / 0.07 and learns it up to its clamp of 100, where it
    # stays; the tiny CLIP holds it there from the start. That keeps the text embeddings in a narrow cone like
    # CLIP's: a start at 1 / 0.07 spread the 16 classes to a between-class cosine of 0.17 within 500 steps, and a
    # learnt scale started at 100 drifted down to 80 and the cosine from 0.80 to 0.51 over 6000 steps (the released
    # CLIP embeddings have 0.79-0.84).
    init_logit_scale: float = 100.0
    learn_logit_scale: bool = False
    seed: int = 0

    def vision_config(self, image_size: int) -> VisionConfig:
        return VisionConfig(
            image_size=image_size,
            patch_size=self.patch_size,
            width=self.vision_width,
            layers=self.vision_layers,
            heads=max(1, self.vision_width // 64),
            output_dim=self.embed_dim,
        )

    def text_config(self) -> TextConfig:
        return TextConfig(
            context_length=self.context_length,
            width=self.text_width,
            heads=max(1, self.text_width // 64),
            layers=self.text_layers,
            output_dim=self.embed_dim,
        )

    def corpus_world(self, world: WorldConfig) -> WorldConfig:
        """The world the pretraining corpus is drawn from: `world`'s sizes with this CLIP's own seed."""
        return dataclasses.replace(world, seed=self.seed)

    def key(self, world: WorldConfig) -> str:
        """Hash of the corpus and of this recipe: the cache key of the trained weights (independent of the
        world's seed: every demo seed uses the same CLIP)."""
        spec = {
            "world": self.corpus_world(world).pretraining_key(),
            "clip": dataclasses.asdict(self),
            "v": TINY_CLIP_VERSION,
        }
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def initial_token_table(cfg: TinyClipConfig) -> Tensor:
    """The token table's initial values (vocab, text_width), N(0, 0.02^2) as CLIP's init.

    Drawn from NumPy's legacy `RandomState`, whose stream is frozen across NumPy versions and platforms (torch's
    CPU sampler is not guaranteed to be), so that the rows no caption uses can be rebuilt exactly from the seed.
    """
    vocab = cfg.text_config().vocab_size
    table = np.random.RandomState(cfg.seed).standard_normal((vocab, cfg.text_width)) * 0.02
    return torch.from_numpy(table.astype(np.float32))


def state_digest(state: dict[str, Tensor]) -> str:
    """SHA-256 of a state dict: names, dtypes, shapes and bytes, in sorted name order."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())  # raw bytes, any dtype
    return h.hexdigest()


def _normalise(images: np.ndarray) -> Tensor:
    """uint8 (B, H, W, 3) -> float32 (B, 3, H, W) with the demo models' mean/std (0..255 scale)."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def _tokenize_all(captions: list[str]) -> Tensor:
    """Token ids (N, L), L = the longest caption. The text tower is causal and reads the sentence at its
    end-of-text token, so padding after it changes nothing: training on short rows is exact and cheap."""
    tok = get_tokenizer()
    ids = [[tok.sot_token_id, *tok.encode(c), tok.eot_token_id] for c in captions]
    width = max(len(i) for i in ids)
    out = torch.zeros(len(ids), width, dtype=torch.int64)
    for row, seq in enumerate(ids):
        out[row, : len(seq)] = torch.tensor(seq)
    return out


def _image_embeddings(model: CLIP, images: Tensor) -> tuple[Tensor, Tensor]:
    """The image tower's forward, keeping every token: (global (B, D), patches (B, M, D)), both through ln_post and
    proj, unnormalised. The global one is exactly `model.encode_image(images)`."""
    visual = model.visual
    x, _, _ = visual.patchify(images)
    cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
    x = visual.ln_post(visual.transformer(visual.ln_pre(x))) @ visual.proj
    return x[:, 0], x[:, 1:]


def _contrastive(logits: Tensor, target: Tensor) -> Tensor:
    """CLIP's symmetric InfoNCE over an (images x texts) logit matrix."""
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


def _lr_at(step: int, cfg: TinyClipConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * progress))


def train_tiny_clip(
    world: WorldConfig,
    cfg: TinyClipConfig,
    progress: bool = True,
    on_step: Callable[[int, CLIP], None] | None = None,
) -> tuple[CLIP, dict[str, Any]]:
    """Pretrain a tiny CLIP on the world's captioned images; returns the model (eval mode) and a summary.

    `on_step(step, model)` is called after every optimiser step (steps count from 1), e.g. to measure it midway.
    """
    t0 = time.perf_counter()
    images, captions = pretraining_corpus(cfg.corpus_world(world))
    tokens = _tokenize_all(captions)
    if tokens.shape[1] > cfg.context_length:
        raise BadValueError(f"a caption needs {tokens.shape[1]} tokens, more than context_length {cfg.context_length}")
    t_data = time.perf_counter() - t0

    torch.manual_seed(cfg.seed)
    model = CLIP(cfg.vision_config(world.image_size), cfg.text_config())
    with torch.no_grad():
        model.token_embedding.weight.copy_(initial_token_table(cfg))
        model.logit_scale.fill_(math.log(cfg.init_logit_scale))
    # Sparse gradients for the 49408-row token table: the captions use a few dozen tokens, and a dense Adam
    # step over the whole table would cost more than the rest of the model. Unused rows keep their init.
    model.token_embedding.sparse = True
    model.logit_scale.requires_grad_(cfg.learn_logit_scale)
    dense = [p for n, p in model.named_parameters() if n != "token_embedding.weight" and p.requires_grad]
    decay = [p for p in dense if p.dim() >= 2]
    no_decay = [p for p in dense if p.dim() < 2]  # biases, norms, logit_scale, class token
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.98),
        eps=1e-6,
    )
    opt_emb = torch.optim.SparseAdam([model.token_embedding.weight], lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)

    gen = torch.Generator().manual_seed(cfg.seed)
    n = len(captions)
    order, cursor = torch.randperm(n, generator=gen), 0
    bar = None
    if progress:
        bar = tqdm(total=cfg.steps, desc="tiny CLIP pretraining", dynamic_ncols=True)
    model.train()
    labels = torch.arange(cfg.batch_size)
    losses: list[float] = []
    for step in range(cfg.steps):
        if cursor + cfg.batch_size > n:  # a new epoch: a fresh permutation
            order, cursor = torch.randperm(n, generator=gen), 0
        idx = order[cursor : cursor + cfg.batch_size]
        cursor += cfg.batch_size
        x = _normalise(images[idx.numpy()])
        flip = torch.rand(len(idx), generator=gen) < 0.5  # captions do not say left or right
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        tok = tokens[idx]
        tok = tok[:, : int((tok != 0).sum(1).max())]  # trim the batch's common padding
        lr = _lr_at(step, cfg)
        for group in (*opt.param_groups, *opt_emb.param_groups):
            group["lr"] = lr
        image_emb = F.normalize(model.encode_image(x), dim=-1)
        text_emb = F.normalize(model.encode_text(tok), dim=-1)
        loss = _contrastive(model.logit_scale.exp() * image_emb @ text_emb.t(), labels[: len(idx)])
        opt.zero_grad(set_to_none=True)
        opt_emb.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        opt_emb.step()
        with torch.no_grad():  # CLIP's clamp: a temperature below 0.01 makes training unstable
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(float(loss.detach()))
        if on_step is not None:
            on_step(step + 1, model)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    if bar is not None:
        bar.close()
    model.token_embedding.sparse = False
    model.eval()
    info = {
        "config": dataclasses.asdict(cfg),
        "world_key": cfg.corpus_world(world).pretraining_key(),
        "pretraining_images": n,
        "seconds_data": round(t_data, 2),
        "seconds_total": round(time.perf_counter() - t0, 2),
        "loss_first_20": round(float(np.mean(losses[:20])), 4),
        "loss_last_20": round(float(np.mean(losses[-20:])), 4),
    }
    return model, info


@torch.no_grad()
def evaluate_zero_shot(model: CLIP, world: WorldConfig, num_images: int = 400) -> dict[str, float]:
    """CLIP-style zero-shot classification of single objects (crops of val images), seen vs unseen classes.

    A diagnostic of what the text tower knows: every visible object of the first val images is cut out on a
    neutral background and classified against "a photo of a {class}." for all 16 classes.
    """
    text = F.normalize(model.encode_text(tokenize([f"a photo of a {c}." for c in CLASS_NAMES])), dim=-1)
    crops, targets = [], []
    for i, (_, image, label, _, _) in enumerate(iter_split(world, "val")):
        if i >= num_images:
            break
        for c in np.unique(label):
            if c == 255:
                continue
            crop = np.full_like(image, 128)
            crop[label == c] = image[label == c]
            crops.append(crop)
            targets.append(int(c))
    feats = F.normalize(model.encode_image(_normalise(np.stack(crops))), dim=-1)
    pred = (feats @ text.t()).argmax(1).numpy()
    targets_arr = np.asarray(targets)
    unseen = np.isin(targets_arr, unseen_ids())
    correct = pred == targets_arr
    return {
        "accuracy_seen": round(100 * float(correct[~unseen].mean()), 2),
        "accuracy_unseen": round(100 * float(correct[unseen].mean()), 2),
        "objects": len(targets),
    }


SHIPPED_PACK = Path(__file__).with_name("tiny_clip.safetensors")
PACK_FORMAT = "otseg-tiny-clip-pack/1"


def pack_state(state: dict[str, Tensor], cfg: TinyClipConfig, key: str, info: dict[str, Any]) -> tuple[dict, dict]:
    """A compact form of a trained tiny CLIP: (tensors, metadata) for `safetensors.torch.save_file`.

    Every tensor is kept except the token table, of which only the rows that differ from `initial_token_table`
    are stored (`token_embedding.rows`, `token_embedding.values`).
    """
    table = state["token_embedding.weight"]
    rows = (table != initial_token_table(cfg)).any(dim=1).nonzero().squeeze(1)
    tensors = {k: v.contiguous() for k, v in state.items() if k != "token_embedding.weight"}
    tensors["token_embedding.rows"] = rows.to(torch.int64).contiguous()
    tensors["token_embedding.values"] = table[rows].contiguous()
    metadata = {
        "format": PACK_FORMAT,
        "key": key,
        "sha256": state_digest(state),
        "config": json.dumps(dataclasses.asdict(cfg), sort_keys=True),
        "info": json.dumps(info, sort_keys=True),
    }
    return tensors, metadata


def unpack_state(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Rebuild the full state dict from a pack (checked against its recorded SHA-256) -> (state, metadata)."""
    path = Path(path)
    with safe_open(str(path), framework="pt") as f:
        metadata = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a mapping)
    if metadata.get("format") != PACK_FORMAT:
        raise BadValueError(
            f"{path} is not a tiny CLIP pack (format {metadata.get('format')!r}, expected {PACK_FORMAT})"
        )
    cfg = TinyClipConfig(**json.loads(metadata["config"]))
    table = initial_token_table(cfg)
    table[tensors.pop("token_embedding.rows")] = tensors.pop("token_embedding.values")
    state = {**tensors, "token_embedding.weight": table}
    digest = state_digest(state)
    if digest != metadata["sha256"]:
        raise BadValueError(
            f"{path}: the unpacked tiny CLIP has SHA-256 {digest[:16]}..., the pack recorded "
            f"{metadata['sha256'][:16]}...: the file is damaged; reinstall otseg, or rebuild it with "
            "`python -m otseg.demo.rebuild tiny-clip --out FILE`"
        )
    return state, metadata


def _pack_metadata(path: Path) -> dict[str, str]:
    """A pack's metadata (recipe key, SHA-256, ...), read without loading its tensors."""
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def _shipped_state(key: str) -> tuple[dict[str, Tensor], dict[str, Any]] | None:
    """The shipped tiny CLIP and its info, if the package has one for `key` (the default recipe)."""
    if not SHIPPED_PACK.is_file() or _pack_metadata(SHIPPED_PACK).get("key") != key:
        return None
    state, metadata = unpack_state(SHIPPED_PACK)
    info = json.loads(metadata["info"])
    info["source"] = f"shipped with otseg ({SHIPPED_PACK.name}, SHA-256 {metadata['sha256'][:16]}...)"
    return state, info


def _pretrain(world: WorldConfig, cfg: TinyClipConfig, progress: bool) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Pretrain from scratch -> (state dict, info with the zero-shot accuracy)."""
    model, info = train_tiny_clip(world, cfg, progress=progress)
    info["zero_shot"] = evaluate_zero_shot(model, world)
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, info


def tiny_clip_path(
    world: WorldConfig,
    cfg: TinyClipConfig | None = None,
    cache: str | os.PathLike | None = None,
    progress: bool = True,
) -> Path:
    """Path of the tiny CLIP checkpoint (OpenAI key names) for `world`, in the cache.

    On first use it is unpacked from the shipped weights when `cfg` is the default recipe, else pretrained
    (minutes). Beside it, `<name>.json` records the recipe, the pretraining loss and time and the zero-shot
    accuracy.
    """
    cfg = cfg or TinyClipConfig()
    key = cfg.key(world)
    base = Path(cache) if cache is not None else demo_cache_root()
    path = base / f"tiny-clip-{key}.pt"
    if path.is_file():
        return path
    shipped = _shipped_state(key)
    state, info = shipped if shipped is not None else _pretrain(world, cfg, progress)
    atomic_write_text(path.with_suffix(".json"), json.dumps(info, indent=2) + "\n")
    atomic_torch_save(state, path)  # last: its presence means the whole entry is complete
    return path


# Pretraining uses this many threads in `rebuild_tiny_clip`: matrix products may round differently with another count.
REBUILD_THREADS = 2


def rebuild_tiny_clip(out: str | Path, progress: bool = True) -> int:
    """Pretrain the default tiny CLIP from scratch at `REBUILD_THREADS` threads, write it as a pack to `out`, and
    compare it with the shipped one (`python -m otseg.demo.rebuild tiny-clip`). Returns the command's exit status:
    0 when identical to the shipped pack (or none is shipped), 1 otherwise."""
    torch.set_num_threads(REBUILD_THREADS)
    world, cfg = WorldConfig(), TinyClipConfig()
    state, info = _pretrain(world, cfg, progress=progress)
    tensors, metadata = pack_state(state, cfg, cfg.key(world), info)
    atomic_write(out, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    print(f"wrote {out}: SHA-256 of the state dict {metadata['sha256']}")
    print(f"zero-shot single-object accuracy: {info['zero_shot']}")
    return compare_with_shipped(metadata, SHIPPED_PACK)


def compare_with_shipped(metadata: dict[str, str], shipped_path: Path) -> int:
    """Print whether a rebuilt pack (its metadata) is bit for bit the shipped one at `shipped_path`; the exit
    status of a rebuild command: 0 when identical (or nothing is shipped), 1 otherwise."""
    if not shipped_path.is_file():
        print(f"no shipped pack at {shipped_path} to compare with")
        return 0
    shipped = _pack_metadata(shipped_path)
    if shipped.get("key") != metadata["key"]:
        print(f"the shipped pack is for another recipe (key {shipped.get('key')}, this one {metadata['key']})")
        return 1
    same = shipped.get("sha256") == metadata["sha256"]
    differs = f"DIFFERS from the shipped pack ({shipped.get('sha256')})"
    print("identical to the shipped pack, bit for bit" if same else differs)
    return 0 if same else 1


if __name__ == "__main__":  # the command moved (see otseg.demo.rebuild); say where rather than do nothing
    raise SystemExit("the rebuild command is: python -m otseg.demo.rebuild tiny-clip --out FILE")
