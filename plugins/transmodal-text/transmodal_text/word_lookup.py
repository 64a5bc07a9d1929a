"""Word-level encoding of ASCII text with NumPy: the ids the ``tokenizers`` library gives for a ``WordLevel``
model behind its ``Whitespace`` pre-tokenizer (runs of ``\\w`` characters, runs of other non-space characters),
computed for a whole batch at once.

Why: the library spends about 0.4 us per token (pre-tokenizer strings, an ``Encoding`` object with offsets and
masks per text), which on a 2-core machine is no faster than a pure-Python regex + dict. Here a batch of texts
becomes one byte array; a 256-entry table gives every byte a class (word, punctuation, space), class changes
give the token boundaries, each token is packed into two 64-bit keys and an open-addressing table maps the keys
to ids, so the cost per token is a few array operations.

Exact for tokens of up to 16 bytes (the keys are the bytes themselves, zero-padded); a longer token keeps its
first 8 bytes exact and the rest as a 64-bit hash. ``encodable`` says which texts this matches byte for byte;
the caller leaves the others to the library: texts with a non-ASCII character (the library's ``\\w`` is
Unicode's), a NUL byte (zero-padding must not be ambiguous), or the text of an added token that the library
matches before pre-tokenizing.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from tokenizers import Tokenizer

WORD, PUNCTUATION, SPACE = 1, 2, 0
_CLASS = np.full(256, PUNCTUATION, dtype=np.uint8)
_CLASS[np.frombuffer(b"\t\n\x0b\x0c\r ", dtype=np.uint8)] = SPACE  # what \s matches in ASCII, here and in Rust
_CLASS[np.frombuffer(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_", dtype=np.uint8)] = WORD

# Keep the first ``length`` bytes of a little-endian 64-bit word.
_LOW_BYTES = np.array([(1 << (8 * n)) - 1 for n in range(8)] + [(1 << 64) - 1], dtype=np.uint64)
_MIX = np.uint64(0x9E3779B97F4A7C15)  # odd: multiplying by it is a bijection modulo 2**64 (Fibonacci hashing)
_ONE_TOKEN = re.compile(r"\w+|[^\w\s]+", re.ASCII)  # the same classes as _CLASS
_CHUNK_BYTES = 1 << 17  # texts are handled 128 KiB at a time, so the temporaries stay in cache


def _spans(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end offsets of the tokens in ``data`` (uint8 bytes)."""
    classes = _CLASS[data]
    changes = np.empty(len(data) + 1, dtype=bool)  # changes[i]: byte i starts a new run (i - 1 ends one)
    changes[0] = changes[-1] = True
    np.not_equal(classes[1:], classes[:-1], out=changes[1:-1])
    in_token = classes != SPACE
    return np.flatnonzero(in_token & changes[:-1]), np.flatnonzero(in_token & changes[1:]) + 1


def _keys(data: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two 64-bit keys per token: its first 8 bytes, and its next 8 (beyond 16 bytes: a hash of the bytes from
    the 9th on). Zero-padded: without NUL bytes, tokens of different lengths never share keys."""
    padded = np.zeros(len(data) + 8, dtype=np.uint8)
    padded[: len(data)] = data
    words = np.ndarray((len(data) + 1,), dtype="<u8", buffer=padded, strides=(1,))  # 8 bytes from each offset
    first = words[starts] & _LOW_BYTES[np.minimum(lengths, 8)]
    second = np.zeros(len(starts), dtype=np.uint64)
    among = np.flatnonzero(lengths > 8)
    offset = 8
    while len(among):
        chunk = words[starts[among] + offset] & _LOW_BYTES[np.minimum(lengths[among] - offset, 8)]
        second[among] = second[among] * _MIX + chunk
        offset += 8
        among = among[lengths[among] > offset]
    return first, second


class WordLookup:
    """Token bytes -> ids for one word-level vocabulary (an open-addressing hash table in NumPy arrays)."""

    def __init__(self, vocabulary: dict[str, int], unknown_id: int, added_tokens: list[str]) -> None:
        self.unknown_id = unknown_id
        self.library_only = [*added_tokens, "\x00"]  # substrings that send a text to the library
        # Only entries the pre-tokenizer can produce from ASCII text (one whole token: not "<pad>" or "café").
        words = [word for word in vocabulary if word.isascii() and "\x00" not in word and _ONE_TOKEN.fullmatch(word)]
        data = np.frombuffer(" ".join(words).encode("ascii"), dtype=np.uint8)
        starts, ends = _spans(data)
        first, second = _keys(data, starts, ends - starts)

        self.bits = max(4, (4 * len(words)).bit_length())  # at most a quarter full: short probe chains
        size = 1 << self.bits
        table: list[tuple[int, int, int] | None] = [None] * size
        entries = zip(first.tolist(), second.tolist(), [vocabulary[word] for word in words])
        for slot, entry in zip(self._slots(first, second).tolist(), entries):
            while table[slot] is not None:
                slot = (slot + 1) & (size - 1)
            table[slot] = entry
        first_keys, second_keys, ids = zip(*(entry or (0, 0, 0) for entry in table))  # first key 0: empty slot
        self.first = np.array(first_keys, dtype=np.uint64)
        self.second = np.array(second_keys, dtype=np.uint64)
        self.id = np.array(ids, dtype=np.int64)

    def encodable(self, texts: list[str]) -> np.ndarray:
        """Which texts ``encode`` gives the library's ids for (one check of the whole batch when all are)."""
        if all(text.isascii() for text in texts) and not any(s in text for text in texts for s in self.library_only):
            return np.ones(len(texts), dtype=bool)
        return np.fromiter((text.isascii() and not any(s in text for s in self.library_only) for text in texts),
                           dtype=bool, count=len(texts))

    def _slots(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        mixed = (first ^ (second * _MIX)) * _MIX
        return (mixed >> np.uint64(64 - self.bits)).astype(np.intp)

    def ids(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        slots = self._slots(first, second)
        stored = self.first[slots]
        found = (stored == first) & (self.second[slots] == second)
        ids = np.where(found, self.id[slots], self.unknown_id)
        # Most tokens find their word, or an empty slot (unknown word), at once; the rest probe the next slots.
        pending = np.flatnonzero(~found & (stored != 0))
        while len(pending):
            slots[pending] = (slots[pending] + 1) & (len(self.id) - 1)
            stored = self.first[slots[pending]]
            found = (stored == first[pending]) & (self.second[slots[pending]] == second[pending])
            ids[pending[found]] = self.id[slots[pending[found]]]
            pending = pending[~found & (stored != 0)]
        return ids

    def encode(self, texts: list[str], max_length: int) -> np.ndarray:
        """Ids (len(texts), T) padded with 0, each text cut to ``max_length`` tokens; texts must be encodable."""
        out = np.zeros((len(texts), max_length), dtype=np.int64)
        sizes = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts)) + 1  # + the separating space
        chunk_ends = np.searchsorted(np.cumsum(sizes), np.arange(_CHUNK_BYTES, sizes.sum(), _CHUNK_BYTES)).tolist()
        width = 0
        for begin, end in zip([0, *chunk_ends], [*chunk_ends, len(texts)]):
            if begin < end:
                width = max(width, self._encode_chunk(texts[begin:end], sizes[begin:end], max_length, out[begin:end]))
        return np.ascontiguousarray(out[:, : max(width, 1)])

    def _encode_chunk(self, texts: list[str], sizes: np.ndarray, max_length: int, out: np.ndarray) -> int:
        data = np.frombuffer(" ".join(texts).encode("ascii"), dtype=np.uint8)
        starts, ends = _spans(data)
        first_token = np.searchsorted(starts, np.cumsum(sizes) - sizes)  # of each text
        tokens_per_text = np.diff(first_token, append=len(starts))
        text_of_token = np.repeat(np.arange(len(texts)), tokens_per_text)
        position = np.arange(len(starts)) - np.repeat(first_token, tokens_per_text)
        kept = position < max_length  # truncation: tokens past max_length are never looked up
        starts, lengths = starts[kept], (ends - starts)[kept]
        text_of_token, position = text_of_token[kept], position[kept]
        out[text_of_token, position] = self.ids(*_keys(data, starts, lengths))
        return int(position.max()) + 1 if len(position) else 0


def word_lookup_for(tokenizer: Tokenizer, offset: int = 0) -> WordLookup | None:
    """A lookup giving ``tokenizer``'s ids (plus ``offset``), when it is a bare WordLevel model behind the
    Whitespace pre-tokenizer (what ``hf-word`` builds); None for anything else (BPE, normalisers, post-processors)."""
    spec = json.loads(tokenizer.to_str())
    model = spec.get("model") or {}
    if (model.get("type") != "WordLevel" or (spec.get("pre_tokenizer") or {}).get("type") != "Whitespace"
            or spec.get("normalizer") is not None or spec.get("post_processor") is not None):
        return None
    vocabulary = model.get("vocab") or {}
    if model.get("unk_token") not in vocabulary:
        return None
    added = [token.content for token in tokenizer.get_added_tokens_decoder().values()  # the library matches these
             if not (token.special and tokenizer.encode_special_tokens)]
    return WordLookup({word: index + offset for word, index in vocabulary.items()},
                      vocabulary[model["unk_token"]] + offset, added)
