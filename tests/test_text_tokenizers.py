"""transmodal-text tokenizers: fitting on the training split, saving and reloading, pretrained files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("tokenizers")
pytest.importorskip("transmodal_text")

from tokenizers import Tokenizer, models, pre_tokenizers
from transmodal.data import PAD_ID, UNK_ID
from transmodal.errors import CheckpointError, ConfigError
from transmodal.plugins import Plugins
from transmodal_text import plugin as text_plugin

REVIEWS = [
    "A great movie!<br /><br />I loved it, and the cast was GREAT.",
    "Terrible film. Don't watch it; the plot made no sense.",
    "The acting was great but the story dragged<br/>on and on...",
    "I loved the music, the cast and the story!",
]
UNSEEN = ["Great cast, terrible plot!", "zebra-like xylophones<br />", ""]


@pytest.fixture(scope="module")
def plugins() -> Plugins:
    return Plugins(entry_points=[], extra_plugins=[("transmodal-text", text_plugin)])


def fit(plugins: Plugins, name: str, texts: list[str] = REVIEWS, **params):
    component = plugins.get("tokenizer", name)
    return component.load_factory()(component.params.model_validate(params), texts)


def restore(plugins: Plugins, name: str, state: str, **params):
    component = plugins.get("tokenizer", name)
    return component.load_factory()(component.params.model_validate(params), [], state=state)


@pytest.mark.parametrize("name", ["hf-word", "bpe", "wordpiece"])
def test_saved_tokenizer_reloads_to_identical_ids(plugins: Plugins, name: str) -> None:
    tokenizer = fit(plugins, name, REVIEWS * 3, vocab_size=80, min_freq=1)
    # Restored from the state string alone (as evaluation in another process does), with default parameters.
    reloaded = restore(plugins, name, json.loads(json.dumps(tokenizer.state())))
    for texts in (REVIEWS, UNSEEN):
        ids = tokenizer.encode_batch(texts)
        assert ids.dtype == torch.int64 and ids.shape[0] == len(texts)
        assert torch.equal(reloaded.encode_batch(texts), ids)
    assert reloaded.vocab_size == tokenizer.vocab_size
    assert reloaded.vocabulary() == tokenizer.vocabulary()


def test_word_tokenizer_lowercases_drops_html_breaks_and_splits_punctuation(plugins: Plugins) -> None:
    tokenizer = fit(plugins, "hf-word")
    vocabulary = tokenizer.vocabulary()
    assert vocabulary["<pad>"] == PAD_ID and vocabulary["<unk>"] == UNK_ID
    assert {"great", "!", ",", ".", "...", "don", "'", "t", "dragged", "on"} <= set(vocabulary)
    assert not any("<" in token and token not in ("<pad>", "<unk>") for token in vocabulary)
    assert "GREAT" not in vocabulary and "br" not in vocabulary
    same = tokenizer.encode_batch(["GREAT!<br />Loved it.", "great ! loved it ."])
    assert torch.equal(same[0], same[1])


def test_ids_are_padded_at_the_end_truncated_and_unknown_words_map_to_unk(plugins: Plugins) -> None:
    tokenizer = fit(plugins, "hf-word", max_length=6)
    ids = tokenizer.encode_batch(["great movie", "the the the the the the the the", "xylophone", ""])
    assert ids.shape == (4, 6)
    assert ids[0, 2:].eq(PAD_ID).all() and ids[0, :2].ne(PAD_ID).all()
    assert ids[1].ne(PAD_ID).all()  # truncated to max_length
    assert ids[2].tolist() == [UNK_ID] + [PAD_ID] * 5
    assert ids[3].eq(PAD_ID).all()
    # The width is that of the longest text, not max_length.
    assert tokenizer.encode_batch(["great movie"]).shape == (1, 2)


@pytest.mark.parametrize("name", ["hf-word", "bpe", "wordpiece"])
def test_special_token_text_inside_a_review_never_becomes_padding(plugins: Plugins, name: str) -> None:
    tokenizer = fit(plugins, name)
    ids = tokenizer.encode_batch(["great <pad> movie <unk>", "great movie"])
    assert (ids[0] != PAD_ID).all(), "a literal <pad> must not end the text early for the encoders"
    assert ids[0].tolist()[0] == ids[1].tolist()[0]
    restored = restore(plugins, name, tokenizer.state())
    assert torch.equal(restored.encode_batch(["great <pad> movie <unk>"]), ids[:1])


def test_vocabulary_size_and_minimum_frequency(plugins: Plugins) -> None:
    tokenizer = fit(plugins, "hf-word", min_freq=2)
    vocabulary = tokenizer.vocabulary()
    assert "the" in vocabulary and "great" in vocabulary
    assert "zebra" not in vocabulary and "dragged" not in vocabulary  # seen once
    small = fit(plugins, "hf-word", vocab_size=5)
    assert small.vocab_size == 5
    assert set(small.vocabulary()) >= {"<pad>", "<unk>", "the"}


def _pretrained_file(path: Path, pad_first: bool) -> Path:
    words = ["great", "movie", "the", "[UNK]"]
    vocab = {token: index for index, token in enumerate((["[PAD]"] if pad_first else []) + words
                                                         + ([] if pad_first else ["[PAD]"]))}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(path))
    return path


@pytest.mark.parametrize("pad_first", [True, False])
def test_tokenizer_file_keeps_zero_for_padding_and_is_saved_in_its_state(
    plugins: Plugins, tmp_path: Path, pad_first: bool
) -> None:
    path = _pretrained_file(tmp_path / "tokenizer.json", pad_first)
    original = Tokenizer.from_file(str(path))
    tokenizer = fit(plugins, "tokenizer-file", [], path=str(path))
    ids = tokenizer.encode_batch(["great movie", "the"])
    offset = 0 if pad_first else 1
    expected = [original.token_to_id(token) + offset for token in ("great", "movie")]
    assert ids[0].tolist() == expected
    assert ids[1].tolist() == [original.token_to_id("the") + offset, PAD_ID]
    assert tokenizer.vocabulary()["great"] == expected[0]
    assert tokenizer.vocab_size == original.get_vocab_size() + offset
    path.unlink()  # evaluation later needs no file: the state holds the whole tokenizer
    assert torch.equal(restore(plugins, "tokenizer-file", tokenizer.state(), path="gone.json").encode_batch(
        ["great movie", "the"]), ids)


def test_tokenizer_errors_say_what_is_wrong(plugins: Plugins, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no tokenizer file"):
        fit(plugins, "tokenizer-file", [], path=str(tmp_path / "missing.json"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="tokenizers library can read"):
        fit(plugins, "tokenizer-file", [], path=str(tmp_path / "bad.json"))
    with pytest.raises(CheckpointError, match="cannot be restored"):
        restore(plugins, "hf-word", '{"format": 1}')
    with pytest.raises(ConfigError, match="no training texts"):
        fit(plugins, "bpe", [])


def test_plugin_discovery_does_not_import_tokenizers() -> None:
    code = (
        "import sys, transmodal\n"
        "plugins = transmodal.get_plugins()\n"
        "assert 'hf-word' in plugins.registry('tokenizer'), plugins.infos\n"
        "assert 'lstm' in plugins.registry('encoder')\n"
        "assert 'tokenizers' not in sys.modules, 'discovery imported tokenizers'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
