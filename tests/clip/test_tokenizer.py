"""Tests for the CLIP BPE tokenizer against golden ids produced by OpenAI's reference code."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from otseg.clip.tokenizer import (
    SimpleTokenizer,
    TextTooLongError,
    clean_text,
    get_tokenizer,
    tokenize,
)


def _golden_dir() -> Path:
    override = os.environ.get("OTSEG_GOLDEN")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[2].parent / "shared" / "golden"


GOLDEN_FILE = _golden_dir() / "tokenizer.json"


def _load_golden() -> dict[str, Any] | None:
    if not GOLDEN_FILE.is_file():
        return None
    return json.loads(GOLDEN_FILE.read_text(encoding="utf-8"))


GOLDEN = _load_golden()
_MISSING = f"golden fixture {GOLDEN_FILE} not found (set OTSEG_GOLDEN to the folder holding tokenizer.json)"


def _entry_id(index: int, entry: dict[str, Any]) -> str:
    slug = re.sub(r"[^0-9a-zA-Z]+", "-", f"{entry['category']} {entry['text'][:24]}").strip("-").lower()
    return f"{index:02d}-{slug or 'empty'}"


if GOLDEN is None:
    ENTRY_PARAMS = [pytest.param(None, id="golden-missing", marks=pytest.mark.skip(reason=_MISSING))]
else:
    ENTRY_PARAMS = [pytest.param(entry, id=_entry_id(i, entry)) for i, entry in enumerate(GOLDEN["entries"])]

needs_golden = pytest.mark.skipif(GOLDEN is None, reason=_MISSING)


@pytest.fixture(scope="module")
def tok() -> SimpleTokenizer:
    return get_tokenizer()


# --------------------------------------------------------------------------------------------------------
# Golden parity, one test per entry
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("entry", ENTRY_PARAMS)
def test_golden_entry(entry: dict[str, Any], tok: SimpleTokenizer) -> None:
    assert GOLDEN is not None  # a missing golden file skips this test (ENTRY_PARAMS)
    text = entry["text"]
    context_length = GOLDEN["context_length"]

    assert clean_text(text) == entry["cleaned"]
    assert tok.encode(text) == entry["bpe_ids"]
    assert len(entry["bpe_ids"]) + 2 == entry["n_tokens_with_sot_eot"]

    truncated = tokenize(text, context_length=context_length, truncate=True)
    assert truncated.dtype == torch.int64
    assert truncated.shape == (1, context_length)
    assert truncated[0].tolist() == entry["ids"]

    if entry["raises_without_truncate"]:
        with pytest.raises(TextTooLongError) as excinfo:
            tokenize(text, context_length=context_length)
        message = str(excinfo.value)
        assert text in message
        assert str(entry["n_tokens_with_sot_eot"]) in message
        assert str(context_length) in message
        assert "truncate=True" in message
        assert excinfo.value.num_tokens == entry["n_tokens_with_sot_eot"]
    else:
        plain = tokenize(text, context_length=context_length)
        assert plain.dtype == torch.int64
        assert plain[0].tolist() == entry["ids"]
    assert entry["fits"] == (not entry["raises_without_truncate"])

    assert tok.decode(entry["bpe_ids"]) == entry["decoded"]


# --------------------------------------------------------------------------------------------------------
# Golden metadata and batching
# --------------------------------------------------------------------------------------------------------


@needs_golden
def test_golden_metadata(tok: SimpleTokenizer) -> None:
    assert GOLDEN is not None  # needs_golden
    assert tok.sot_token_id == GOLDEN["sot_token"]
    assert tok.eot_token_id == GOLDEN["eot_token"]
    assert tok.vocab_size == GOLDEN["vocab_size"]


@needs_golden
def test_batch_matches_rows() -> None:
    assert GOLDEN is not None  # needs_golden
    entries = GOLDEN["entries"]
    batch = tokenize([e["text"] for e in entries], truncate=True)
    assert batch.dtype == torch.int64
    assert batch.shape == (len(entries), GOLDEN["context_length"])
    assert batch.tolist() == [e["ids"] for e in entries]


# --------------------------------------------------------------------------------------------------------
# Behaviour that does not need the golden file
# --------------------------------------------------------------------------------------------------------


def test_special_ids_and_vocab(tok: SimpleTokenizer) -> None:
    assert tok.sot_token_id == 49406
    assert tok.eot_token_id == 49407
    assert tok.vocab_size == 49408
    encoder = tok.encoder
    assert encoder["!"] == 0  # first visible byte
    assert encoder["!</w>"] == 256
    assert encoder["<|startoftext|>"] == 49406
    assert encoder["<|endoftext|>"] == 49407
    assert len(set(encoder.values())) == 49408


def test_literal_special_tokens(tok: SimpleTokenizer) -> None:
    assert tok.encode("<|startoftext|>") == [49406]
    assert tok.encode("<|endoftext|>") == [49407]


def test_empty_text() -> None:
    out = tokenize("")
    assert out.shape == (1, 77)
    assert out[0, :3].tolist() == [49406, 49407, 0]
    assert tokenize([]).shape == (0, 77)


def test_truncation_and_error() -> None:
    text = " ".join(["cat"] * 100)
    with pytest.raises(ValueError, match="too long for context length 77"):
        tokenize(text)
    with pytest.raises(TextTooLongError) as excinfo:
        tokenize(text)
    assert excinfo.value.num_tokens == 102
    assert excinfo.value.context_length == 77
    out = tokenize(text, truncate=True)
    assert out.shape == (1, 77)
    assert out[0, 0].item() == 49406
    assert out[0, -1].item() == 49407
    assert (out[0, 1:-1] != 0).all()


def test_custom_context_length() -> None:
    out = tokenize(["a photo of a cat.", "dog"], context_length=10)
    assert out.shape == (2, 10)
    assert out[1, 0].item() == 49406
    assert out[1, 2].item() == 49407
    assert out[1, 3:].eq(0).all()
    with pytest.raises(ValueError):
        tokenize("x", context_length=0)


def test_round_trip_and_tensor_decode(tok: SimpleTokenizer) -> None:
    text = "a photo of a Café, isn't it?"
    ids = tok.encode(text)
    assert tok.decode(ids) == "a photo of a café , isn 't it ? "
    assert tok.decode(torch.tensor(ids)) == tok.decode(ids)


def test_bpe_cache_is_consistent(tok: SimpleTokenizer) -> None:
    first = tok.encode("antidisestablishmentarianism")
    second = tok.encode("antidisestablishmentarianism")
    assert first == second
    assert len(first) > 1


def test_default_tokenizer_is_shared() -> None:
    assert get_tokenizer() is get_tokenizer()


def test_rejects_non_string() -> None:
    with pytest.raises(TypeError):
        tokenize(["ok", 3])  # type: ignore[list-item]
