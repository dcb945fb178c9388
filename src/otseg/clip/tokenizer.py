"""Byte-level BPE tokenizer compatible with OpenAI CLIP.

This is an independent implementation of the tokenisation scheme used by CLIP's text encoder. Given the same
vocabulary file (``bpe_simple_vocab_16e6.txt.gz``, shipped next to this module, MIT licence in
``LICENSE-openai-clip.txt``) it produces exactly the ids of OpenAI's ``SimpleTokenizer`` and
``clip.tokenize``. The pipeline is:

1. **Normalisation** -- repair broken Unicode with :func:`ftfy.fix_text`, resolve HTML entities (twice, so
   that doubly escaped text such as ``&amp;amp;`` is fully resolved), strip, collapse every run of
   whitespace into a single space and lower-case the result.
2. **Pre-tokenisation** -- split the normalised text into "words": the two special markers, English
   contraction suffixes, runs of letters, single digits and runs of other non-space characters.
3. **Byte mapping** -- encode each word as UTF-8 and map every byte to a printable stand-in character
   (the reversible GPT-2 byte table), marking the final symbol of the word with ``</w>``.
4. **BPE** -- repeatedly fuse the adjacent symbol pair with the best (lowest) merge rank until no
   ranked pair remains, then look the resulting symbols up in the vocabulary.

:func:`tokenize` wraps the result as ``[<|startoftext|>] + ids + [<|endoftext|>]`` in a zero padded
``int64`` tensor of width ``context_length`` (77 for CLIP).
"""

from __future__ import annotations

import functools
import gzip
import html
import importlib.resources
import itertools
import os
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Union

import ftfy
import regex
import torch

from otseg.errors import BadValueError

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

VocabSource = Union[str, "os.PathLike[str]", "Traversable"]
"""A vocabulary location: a filesystem path or an :mod:`importlib.resources` traversable."""

__all__ = [
    "DEFAULT_CONTEXT_LENGTH",
    "EOT_TOKEN",
    "SOT_TOKEN",
    "SimpleTokenizer",
    "TextTooLongError",
    "clean_text",
    "default_vocab_path",
    "get_tokenizer",
    "tokenize",
]

SOT_TOKEN = "<|startoftext|>"
"""Marker placed before every tokenised text (id 49406 with the default vocabulary)."""

EOT_TOKEN = "<|endoftext|>"
"""Marker placed after every tokenised text (id 49407 with the default vocabulary)."""

DEFAULT_CONTEXT_LENGTH = 77
"""Sequence length of CLIP's text transformer."""

VOCAB_FILENAME = "bpe_simple_vocab_16e6.txt.gz"

_END_OF_WORD = "</w>"

# Number of merge rules taken from the vocabulary file: the final vocabulary must hold 49408 entries,
# i.e. 2 * 256 byte symbols + the merges + the 2 special markers.
_NUM_MERGES = 49152 - 256 - 2

_WHITESPACE_RUN = regex.compile(r"\s+")

# Special markers first so that they are never split; then contraction suffixes, letter runs, one digit
# at a time, and runs of anything that is neither a letter, a digit nor whitespace.
_WORD_SPLITTER = regex.compile(
    r"<\|startoftext\|>|<\|endoftext\|>"
    r"|'(?:s|t|re|ve|m|ll|d)"
    r"|\p{L}+"
    r"|\p{N}"
    r"|[^\s\p{L}\p{N}]+",
    regex.IGNORECASE,
)


class TextTooLongError(BadValueError):
    """Raised by :func:`tokenize` when a text does not fit in the context length and truncation is off.

    Attributes:
        text: The offending input text (as given, before cleaning).
        num_tokens: Its length in tokens, including the start and end markers.
        context_length: The limit that was exceeded.
    """

    def __init__(self, text: str, num_tokens: int, context_length: int) -> None:
        self.text = text
        self.num_tokens = num_tokens
        self.context_length = context_length
        super().__init__(
            f"Input {text!r} is too long for context length {context_length}: it encodes to {num_tokens} "
            f"tokens including {SOT_TOKEN} and {EOT_TOKEN}. Shorten the text or pass truncate=True."
        )


def _build_byte_alphabet() -> dict[int, str]:
    """Return the reversible map from each byte value to a single printable character.

    Bytes that already print as a visible Latin-1 character keep their own code point; every other byte
    (control characters, space, DEL, NBSP, soft hyphen, ...) is assigned ``chr(256 + k)`` in increasing
    byte order. The insertion order of the returned dict (visible bytes first, then the remapped ones) is
    the order of the first 256 vocabulary entries.
    """
    visible = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("\xa1"), ord("\xac") + 1),
        *range(ord("\xae"), ord("\xff") + 1),
    ]
    alphabet = {byte: chr(byte) for byte in visible}
    next_code = 256
    for byte in range(256):
        if byte not in alphabet:
            alphabet[byte] = chr(next_code)
            next_code += 1
    return alphabet


def clean_text(text: str) -> str:
    """Normalise ``text`` the way CLIP does before tokenising.

    Applies :func:`ftfy.fix_text`, unescapes HTML entities twice, strips, collapses whitespace runs to a
    single space, strips again and lower-cases.
    """
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    text = _WHITESPACE_RUN.sub(" ", text).strip()
    return text.lower()


def default_vocab_path() -> Traversable:
    """Locate the bundled BPE vocabulary file inside the installed package."""
    return importlib.resources.files(__package__ or "otseg.clip").joinpath(VOCAB_FILENAME)


def _read_merge_rules(source: VocabSource) -> list[str]:
    """Read the merge lines (``"left right"``) from a gzipped vocabulary file, skipping its header line."""
    if isinstance(source, (str, os.PathLike)):
        with gzip.open(os.fspath(source), "rb") as stream:
            content = stream.read().decode("utf-8")
    else:
        with source.open("rb") as raw, gzip.open(raw, "rb") as stream:
            content = stream.read().decode("utf-8")
    lines = content.split("\n")
    rules = lines[1 : _NUM_MERGES + 1]
    if len(rules) != _NUM_MERGES:
        raise BadValueError(f"vocabulary file {source} holds {len(rules)} merge rules, expected {_NUM_MERGES}")
    return rules


class SimpleTokenizer:
    """CLIP's byte-level BPE tokenizer.

    Args:
        vocab_path: Gzipped merge-rule file. Defaults to the vocabulary bundled with this package.

    Attributes:
        sot_token_id: Id of ``<|startoftext|>`` (49406).
        eot_token_id: Id of ``<|endoftext|>`` (49407).
    """

    def __init__(self, vocab_path: VocabSource | None = None) -> None:
        rules = _read_merge_rules(default_vocab_path() if vocab_path is None else vocab_path)

        self._byte_to_char = _build_byte_alphabet()
        self._char_to_byte = {char: byte for byte, char in self._byte_to_char.items()}

        symbols = list(self._byte_to_char.values())
        symbols += [symbol + _END_OF_WORD for symbol in symbols]
        self._merge_rank: dict[tuple[str, str], int] = {}
        for rank, rule in enumerate(rules):
            left, right = rule.split()
            self._merge_rank[(left, right)] = rank
            symbols.append(left + right)
        symbols += [SOT_TOKEN, EOT_TOKEN]

        self._symbol_to_id: dict[str, int] = {symbol: index for index, symbol in enumerate(symbols)}
        self._id_to_symbol: dict[int, str] = dict(enumerate(symbols))
        self._special_ids = {marker: self._symbol_to_id[marker] for marker in (SOT_TOKEN, EOT_TOKEN)}
        self.sot_token_id: int = self._special_ids[SOT_TOKEN]
        self.eot_token_id: int = self._special_ids[EOT_TOKEN]
        # Byte-mapped word -> its BPE ids. Grows with every distinct word seen, like CLIP's own cache.
        self._word_cache: dict[str, tuple[int, ...]] = {}

    @property
    def vocab_size(self) -> int:
        """Number of vocabulary entries (49408 for CLIP)."""
        return len(self._id_to_symbol)

    @property
    def encoder(self) -> dict[str, int]:
        """A copy of the symbol -> id table."""
        return dict(self._symbol_to_id)

    @staticmethod
    def clean(text: str) -> str:
        """Normalise ``text`` as done before tokenising; see :func:`clean_text`."""
        return clean_text(text)

    def _apply_merges(self, word: str) -> list[str]:
        """Run BPE on one byte-mapped word and return its final symbols."""
        pieces = [*word[:-1], word[-1] + _END_OF_WORD]
        ranks = self._merge_rank
        while len(pieces) > 1:
            best_pair: tuple[str, str] | None = None
            best_rank = len(ranks)
            for pair in itertools.pairwise(pieces):
                rank = ranks.get(pair)
                if rank is not None and rank < best_rank:
                    best_pair, best_rank = pair, rank
            if best_pair is None:
                break
            left, right = best_pair
            fused: list[str] = []
            position = 0
            while position < len(pieces):
                if position + 1 < len(pieces) and pieces[position] == left and pieces[position + 1] == right:
                    fused.append(left + right)
                    position += 2
                else:
                    fused.append(pieces[position])
                    position += 1
            pieces = fused
        return pieces

    def _word_ids(self, word: str) -> tuple[int, ...]:
        """BPE ids of one pre-token (already cleaned), memoised."""
        special = self._special_ids.get(word)
        if special is not None:
            return (special,)
        mapped = "".join(self._byte_to_char[byte] for byte in word.encode("utf-8"))
        cached = self._word_cache.get(mapped)
        if cached is None:
            cached = tuple(self._symbol_to_id[piece] for piece in self._apply_merges(mapped))
            self._word_cache[mapped] = cached
        return cached

    def encode(self, text: str) -> list[int]:
        """Tokenise ``text`` into BPE ids, without start/end markers, padding or truncation.

        Literal ``<|startoftext|>`` / ``<|endoftext|>`` in the text become the special ids.
        """
        ids: list[int] = []
        for word in _WORD_SPLITTER.findall(clean_text(text)):
            ids.extend(self._word_ids(word))
        return ids

    def decode(self, ids: Iterable[int] | torch.Tensor) -> str:
        """Turn ids back into text.

        Each end-of-word marker becomes a space (so the result usually ends with one); invalid UTF-8 is
        replaced by U+FFFD. Padding zeros are not skipped: id 0 is the byte ``!``.
        """
        if isinstance(ids, torch.Tensor):
            ids = ids.reshape(-1).tolist()
        mapped = "".join(self._id_to_symbol[int(index)] for index in ids)
        # "</w>" is spelled with visible ASCII, so it survives the byte round trip and is replaced afterwards.
        raw = bytes(self._char_to_byte[char] for char in mapped)
        return raw.decode("utf-8", errors="replace").replace(_END_OF_WORD, " ")

    def tokenize(
        self, texts: str | Sequence[str], context_length: int = DEFAULT_CONTEXT_LENGTH, truncate: bool = False
    ) -> torch.Tensor:
        """Tokenise one text or a batch into a zero padded ``int64`` tensor; see :func:`tokenize`."""
        if context_length < 1:
            raise BadValueError(f"context_length must be positive, got {context_length}")
        batch = [texts] if isinstance(texts, str) else list(texts)
        out = torch.zeros(len(batch), context_length, dtype=torch.int64)
        for row, text in enumerate(batch):
            if not isinstance(text, str):
                raise TypeError(f"expected str, got {type(text).__name__} at position {row}")
            ids = [self.sot_token_id, *self.encode(text), self.eot_token_id]
            if len(ids) > context_length:
                if not truncate:
                    raise TextTooLongError(text, len(ids), context_length)
                ids = ids[:context_length]
                ids[-1] = self.eot_token_id
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.int64)
        return out

    __call__ = tokenize


@functools.cache
def get_tokenizer() -> SimpleTokenizer:
    """Return the process-wide tokenizer built from the bundled vocabulary (created on first use)."""
    return SimpleTokenizer()


def tokenize(
    texts: str | Sequence[str],
    context_length: int = DEFAULT_CONTEXT_LENGTH,
    truncate: bool = False,
    *,
    tokenizer: SimpleTokenizer | None = None,
) -> torch.Tensor:
    """Tokenise text(s) for CLIP's text encoder.

    Each text becomes ``[<|startoftext|>] + encode(text) + [<|endoftext|>]``, right padded with zeros.

    Args:
        texts: One string or a sequence of strings.
        context_length: Width of the output (77 for CLIP).
        truncate: If a text is too long, keep its first ``context_length`` ids and make the last one
            ``<|endoftext|>`` instead of raising.
        tokenizer: Tokenizer to use; defaults to :func:`get_tokenizer`.

    Returns:
        ``int64`` tensor of shape ``(number of texts, context_length)``.

    Raises:
        TextTooLongError: (a :class:`ValueError`) if a text needs more than ``context_length`` ids and
            ``truncate`` is False.
    """
    return (tokenizer or get_tokenizer()).tokenize(texts, context_length=context_length, truncate=truncate)
