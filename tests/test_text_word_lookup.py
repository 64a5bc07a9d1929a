"""transmodal-text's vectorised word-level lookup gives exactly the ids of the tokenizers library it stands in for."""

from __future__ import annotations

import string

import pytest

pytest.importorskip("tokenizers")
pytest.importorskip("transmodal_text")

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from transmodal.data import UNK_ID
from transmodal.plugins import Plugins
from transmodal_text import plugin as text_plugin
from transmodal_text import word_lookup

# Words of every length around the key boundaries (8 and 16 bytes), and pairs that differ only late.
LONG_WORDS = ["abcdefgh", "abcdefghi", "abcdefghijklmnop", "abcdefghijklmnopq", "abcdefghijklmnopqrstuvwxyz0123",
              "abcdefghijklmnopqrstuvwxyz0124", "supercalifragilisticexpialidocious", "___", "1999", "x_y_z"]
CORPUS = [
    "A great movie!<br /><br />I loved it... and the cast was GREAT!!",
    "Terrible film. Don't watch it; the plot (such as it was) made no sense?!",
    "Caf\u00e9 cr\u00e8me, na\u00efve r\u00e9sum\u00e9 \u2014 \u00fcber \u201cquotes\u201d",
    " ".join(LONG_WORDS) + " " + " ".join(LONG_WORDS[:4]) + " :-) ;-) -- ## $$ ...",
]
# ASCII with every class of byte: word characters, punctuation, each ASCII whitespace, other control bytes, NUL.
ASCII_ALPHABET = string.ascii_letters + string.digits + "_" + string.punctuation + " \t\n\x0b\x0c\r" + "\x00\x01\x1c\x7f"
# Near misses: the same length differing in the last byte, or a prefix of a known word.
NEAR_MISSES = ["abcdefgz", "abcdefghz", "abcdefghijklmnoz", "abcdefghijklmnopz", "abcdefghijklmnopqrstuvwxyz0125",
               "abcdefghijklmnopqrstuvwxyz012", "abcdefg", "supercalifragilisticexpialidociouz"]
PIECES = st.sampled_from([*LONG_WORDS, *NEAR_MISSES, "great", "GREAT", "<br />", "<BR>", "<unk>",
                          "<pad>", "don't", "...", " ", "\u00e9", "\u00a0", "\u2003", "e\u0301"])
TEXT = st.lists(st.one_of(st.text(ASCII_ALPHABET, max_size=12), PIECES), max_size=12).map("".join)


@pytest.fixture(scope="module")
def tokenizer():
    plugins = Plugins(entry_points=[], extra_plugins=[("transmodal-text", text_plugin)])
    component = plugins.get("tokenizer", "hf-word")
    built = component.load_factory()(component.params.model_validate({"max_length": 7}), CORPUS)
    assert built.lookup is not None, "hf-word must use the vectorised lookup"
    return built


def library_ids(tokenizer, texts: list[str]) -> list[list[int]]:
    """What the tokenizers library itself gives (it truncates), padded with 0 to the longest text."""
    rows = [encoding.ids for encoding in tokenizer.tokenizer.encode_batch(tokenizer.normalise(texts))]
    width = max(1, *map(len, rows))
    return [row + [0] * (width - len(row)) for row in rows]


@settings(max_examples=300, deadline=None)
@given(st.lists(TEXT, min_size=1, max_size=6))
def test_ids_equal_the_librarys_for_any_text(tokenizer, texts: list[str]) -> None:
    assert tokenizer.encode_batch(texts).tolist() == library_ids(tokenizer, texts)


def test_long_tokens_and_truncation_match_the_library(tokenizer) -> None:
    texts = [" ".join(LONG_WORDS), " ".join(NEAR_MISSES), ""]
    ids = tokenizer.encode_batch(texts)
    assert ids.shape == (3, 7)  # max_length
    assert ids.tolist() == library_ids(tokenizer, texts)
    assert (ids[0] != UNK_ID).all() and (ids[1] == UNK_ID).all()  # each word known, each near miss unknown


def test_batches_spanning_many_chunks_give_the_same_ids(tokenizer, monkeypatch) -> None:
    texts = [CORPUS[index % 2] * (1 + index % 3) for index in range(40)] + [CORPUS[3] * 20]
    whole = tokenizer.encode_batch(texts)
    monkeypatch.setattr(word_lookup, "_CHUNK_BYTES", 64)  # far smaller than most texts
    assert np.array_equal(tokenizer.encode_batch(texts).numpy(), whole.numpy())
    assert whole.tolist() == library_ids(tokenizer, texts)


def test_texts_the_lookup_cannot_match_byte_for_byte_go_to_the_library(tokenizer) -> None:
    texts = ["plain ascii", "caf\u00e9", "nul\x00byte", "an <unk> inside"]  # special tokens' text is plain text
    assert tokenizer.lookup.encodable(tokenizer.normalise(texts)).tolist() == [True, False, False, True]
