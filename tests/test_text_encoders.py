"""transmodal-text encoders: packed RNNs and the text CNN, padding invariance, pooling, pretrained vectors."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from torch import nn

pytest.importorskip("tokenizers")
pytest.importorskip("transmodal_text")

from transmodal.data import PAD_ID, ModalitySpec
from transmodal.errors import ConfigError, DataError
from transmodal.plugins import Plugins
from transmodal_text import plugin as text_plugin

VOCAB = 50


class FixedVocabulary:
    """The part of the tokenizer contract an encoder uses: the vocabulary, for pretrained vectors."""

    def __init__(self, words: list[str]) -> None:
        self.words = {"<pad>": 0, "<unk>": 1, **{word: index + 2 for index, word in enumerate(words)}}
        self.vocab_size = len(self.words)

    def vocabulary(self) -> dict[str, int]:
        return dict(self.words)



@pytest.fixture(scope="module")
def plugins() -> Plugins:
    return Plugins(entry_points=[], extra_plugins=[("transmodal-text", text_plugin)])


def build(plugins: Plugins, name: str, vocab_size: int = VOCAB, tokenizer=None, **params):
    torch.manual_seed(0)
    spec = ModalitySpec("text", "text", vocab_size=vocab_size, tokenizer=tokenizer)
    return plugins.get("encoder", name).build(spec, **params)


def padded(rows: list[list[int]], width: int) -> torch.Tensor:
    return torch.tensor([row + [PAD_ID] * (width - len(row)) for row in rows], dtype=torch.int64)


SAMPLE = [5, 9, 13, 2, 7]
OTHERS = [[3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14], [8, 8], [21]]

RNN_CASES = [
    {"pooling": "last"},
    {"pooling": "mean"},
    {"pooling": "max"},
    {"pooling": "attention"},
    {"pooling": "last", "bidirectional": True},
    {"pooling": "attention", "bidirectional": True, "num_layers": 3},
]


@pytest.mark.parametrize("name", ["lstm", "gru"])
@pytest.mark.parametrize("case", RNN_CASES, ids=lambda case: "-".join(f"{k}={v}" for k, v in case.items()))
def test_rnn_result_does_not_depend_on_the_padding_of_its_batch(plugins: Plugins, name: str, case: dict) -> None:
    encoder = build(plugins, name, embedding_dim=8, hidden_dim=12, **case).eval()
    with torch.no_grad():
        alone = encoder(padded([SAMPLE], len(SAMPLE)))
        in_batch = encoder(padded([OTHERS[0], SAMPLE, *OTHERS[1:]], 20))  # longer neighbours, extra padding
    assert alone.shape == (1, encoder.out_dim)
    assert encoder.out_dim == 12 * (2 if case.get("bidirectional") else 1)
    torch.testing.assert_close(in_batch[1:2], alone, atol=1e-6, rtol=1e-5)


def test_each_pooling_gives_what_it_says(plugins: Plugins) -> None:
    ids = padded([SAMPLE, OTHERS[1]], 7)
    tokens = build(plugins, "lstm", embedding_dim=8, hidden_dim=6, num_layers=1, tokens=True).eval()
    with torch.no_grad():
        sequence = tokens(ids)
        outputs = {
            pooling: build(plugins, "lstm", embedding_dim=8, hidden_dim=6, num_layers=1, pooling=pooling).eval()(ids)
            for pooling in ("last", "mean", "max")
        }
    lengths = [len(SAMPLE), len(OTHERS[1])]
    for row, length in enumerate(lengths):
        real = sequence[row, :length]
        torch.testing.assert_close(outputs["last"][row], real[-1])
        torch.testing.assert_close(outputs["mean"][row], real.mean(dim=0))
        torch.testing.assert_close(outputs["max"][row], real.amax(dim=0))
        assert sequence[row, length:].eq(0).all()


def test_token_output_for_attention_fusion(plugins: Plugins) -> None:
    encoder = build(plugins, "gru", embedding_dim=8, hidden_dim=6, bidirectional=True, tokens=True).eval()
    ids = padded([SAMPLE, OTHERS[1]], 9)
    assert encoder.returns_tokens
    assert encoder(ids).shape == (2, 9, 12)
    assert torch.equal(encoder.token_mask(ids), ids != PAD_ID)
    with pytest.raises(ValidationError, match="pooling: attention would never be used"):
        build(plugins, "gru", tokens=True, pooling="attention")


def test_text_cnn_ignores_batch_padding_and_handles_short_texts(plugins: Plugins) -> None:
    encoder = build(plugins, "text-cnn", embedding_dim=8, widths=[2, 3, 5], filters=4).eval()
    assert encoder.out_dim == 12
    short = [17, 3]  # shorter than the widest filter
    with torch.no_grad():
        for sample in (SAMPLE, short):
            alone = encoder(padded([sample], len(sample)))
            in_batch = encoder(padded([OTHERS[0], sample], 16))
            torch.testing.assert_close(in_batch[1:2], alone, atol=1e-6, rtol=1e-5)
            assert torch.isfinite(alone).all()


@pytest.mark.parametrize("name, params", [
    ("lstm", {"pooling": "attention", "bidirectional": True, "embedding_dropout": 0.1}),
    ("gru", {"pooling": "max", "num_layers": 3}),
    ("lstm", {"pooling": "last"}),
    ("text-cnn", {"widths": [1, 3]}),
])
def test_every_parameter_gets_a_gradient(plugins: Plugins, name: str, params: dict) -> None:
    size = {"hidden_dim": 6} if name != "text-cnn" else {"filters": 5}
    encoder = build(plugins, name, embedding_dim=8, **size, **params).train()
    ids = padded([SAMPLE, *OTHERS], 12)
    encoder(ids).pow(2).sum().backward()
    for parameter_name, parameter in encoder.named_parameters():
        assert parameter.grad is not None, f"{parameter_name} got no gradient"
        assert parameter.grad.abs().sum() > 0, f"{parameter_name} got a zero gradient"
    assert encoder.embedding.weight.grad[PAD_ID].eq(0).all()


def test_layer_groups_run_from_input_to_output_and_cover_every_parameter(plugins: Plugins) -> None:
    encoder = build(plugins, "lstm", embedding_dim=8, hidden_dim=6, num_layers=3, pooling="attention")
    groups = encoder.layer_groups()
    assert [name for name, _ in groups] == ["embedding", "lstm1", "lstm2", "lstm3", "pooling"]
    grouped = {id(p) for _, module in groups for p in module.parameters()}
    assert grouped == {id(p) for p in encoder.parameters()}
    cnn = build(plugins, "text-cnn", embedding_dim=8)
    assert [name for name, _ in cnn.layer_groups()] == ["embedding", "convolutions"]


def test_the_tutorial_text_classifier_is_expressible(plugins: Plugins) -> None:
    """Section 4.2's TextClassifier: embedding 100, LSTM 256 x 2 layers, dropout 0.5; same weights shape."""
    encoder = build(plugins, "lstm", vocab_size=1000, embedding_dim=100, hidden_dim=256, num_layers=2, dropout=0.5)
    reference = nn.ModuleDict({"embedding": nn.Embedding(1000, 100),
                               "rnn": nn.LSTM(100, 256, num_layers=2, batch_first=True, dropout=0.5)})
    assert encoder.out_dim == 256
    assert sum(p.numel() for p in encoder.parameters()) == sum(p.numel() for p in reference.parameters())


def test_encoders_refuse_other_modalities(plugins: Plugins) -> None:
    spec = ModalitySpec("image", "image", shape=(3, 8, 8))
    with pytest.raises(ConfigError, match="takes text"):
        plugins.get("encoder", "lstm").build(spec)


def _glove(path: Path, rows: dict[str, list[float]], header: bool = False) -> Path:
    lines = [f"{len(rows)} {len(next(iter(rows.values())))}"] if header else []
    lines += [" ".join([word, *(f"{value:.3f}" for value in vector)]) for word, vector in rows.items()]
    text = "\n".join(lines) + "\n"
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text, encoding="utf-8")
    return path


VECTORS = {"great": [1.0, 2.0, 3.0, 4.0], "movie": [-1.0, 0.5, 0.25, 0.0], "Plot": [0.1, 0.2, 0.3, 0.4],
           "unused": [9.0, 9.0, 9.0, 9.0]}


@pytest.mark.parametrize("file_name, header", [("glove.txt", False), ("word2vec.txt", True), ("glove.txt.gz", False)])
def test_pretrained_vectors_initialise_the_embedding(plugins: Plugins, tmp_path: Path, file_name: str,
                                                     header: bool) -> None:
    path = _glove(tmp_path / file_name, VECTORS, header)
    vocabulary = FixedVocabulary(["great", "movie", "plot", "boring"])
    torch.manual_seed(0)
    untouched = nn.Embedding(vocabulary.vocab_size, 4, padding_idx=PAD_ID).weight.detach().clone()
    for name in ("lstm", "text-cnn"):
        encoder = build(plugins, name, vocab_size=vocabulary.vocab_size, tokenizer=vocabulary, embedding_dim=4,
                        vectors=str(path), freeze_embedding=True)
        weight = encoder.embedding.weight
        words = vocabulary.vocabulary()
        assert weight[words["great"]].tolist() == VECTORS["great"]
        assert weight[words["movie"]].tolist() == VECTORS["movie"]
        torch.testing.assert_close(weight[words["plot"]], torch.tensor(VECTORS["Plot"]))  # case fallback
        torch.testing.assert_close(weight[words["boring"]], untouched[words["boring"]])  # not in the file
        assert weight[PAD_ID].eq(0).all()
        assert not weight.requires_grad
        assert encoder.vectors_coverage == pytest.approx(3 / 5)


def test_pretrained_vector_errors(plugins: Plugins, tmp_path: Path) -> None:
    path = _glove(tmp_path / "glove.txt", VECTORS)
    vocabulary = FixedVocabulary(["great"])
    with pytest.raises(ConfigError, match="4-dimensional vectors but embedding_dim is 8; set embedding_dim: 4"):
        build(plugins, "lstm", vocab_size=vocabulary.vocab_size, tokenizer=vocabulary, embedding_dim=8,
              vectors=str(path))
    other = FixedVocabulary(["zebra"])
    with pytest.raises(DataError, match="none of the"):
        build(plugins, "gru", vocab_size=other.vocab_size, tokenizer=other, embedding_dim=4, vectors=str(path))
    with pytest.raises(ConfigError, match="no file"):
        build(plugins, "gru", vocab_size=other.vocab_size, tokenizer=other, embedding_dim=4,
              vectors=str(tmp_path / "missing.txt"))
