"""Pretrained word vectors from GloVe or word2vec text files, for the words of a tokenizer's vocabulary.

The file is streamed and only lines whose word is in the vocabulary are parsed, so a 400k-word GloVe file
costs a few seconds and memory for the vocabulary alone.
"""

from __future__ import annotations

import gzip
import io
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transmodal.data import PAD_ID
from transmodal.errors import ConfigError, DataError


@dataclass
class LoadedVectors:
    ids: torch.Tensor  # (K,) vocabulary ids that were found
    vectors: torch.Tensor  # (K, dim)
    coverage: float  # found / vocabulary size (padding excluded)


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", errors="replace")
    return path.open(encoding="utf-8", errors="replace")


def _is_word2vec_header(fields: list[str]) -> bool:
    return len(fields) == 2 and fields[0].isdigit() and fields[1].isdigit()


def _trailing_numbers(fields: list[str]) -> int:
    count = 0
    for field in reversed(fields[1:]):
        try:
            float(field)
        except ValueError:
            break
        count += 1
    return count


def _check_dimension(fields: list[str], dim: int, path: Path) -> None:
    """On the first vector line: a size mismatch is a config mistake, named as such."""
    found = _trailing_numbers(fields)
    if found != dim:
        raise ConfigError(f"vectors: {path} holds {found}-dimensional vectors but embedding_dim is {dim}; "
                          f"set embedding_dim: {found}")


def load_vectors(path: Path, vocabulary: dict[str, int], dim: int) -> LoadedVectors:
    """Vectors for the vocabulary's words: an exact match first, else the first lower-cased match."""
    path = path.expanduser()
    if not path.is_file():
        raise ConfigError(f"vectors: no file at {path}; give a GloVe/word2vec text file (.txt or .txt.gz)")
    lowered: dict[str, int] = {}
    for word, index in vocabulary.items():
        lowered.setdefault(word.lower(), index)
    exact: dict[int, list[str]] = {}
    fallback: dict[int, list[str]] = {}
    checked = False
    try:
        with _open_text(path) as file:
            for number, line in enumerate(file, start=1):
                fields = line.rstrip("\n\r ").split(" ")
                if number == 1 and _is_word2vec_header(fields):
                    if int(fields[1]) != dim:
                        raise ConfigError(f"vectors: {path} holds {fields[1]}-dimensional vectors but "
                                          f"embedding_dim is {dim}; set embedding_dim: {fields[1]}")
                    continue
                if not checked:
                    _check_dimension(fields, dim, path)
                    checked = True
                if len(fields) < dim + 1:
                    raise DataError(f"vectors: line {number} of {path} has {len(fields) - 1} values, "
                                    f"expected {dim}: the file is not in GloVe/word2vec text format")
                word = " ".join(fields[: len(fields) - dim])  # a few GloVe words contain spaces
                index = vocabulary.get(word)
                if index is not None:
                    exact.setdefault(index, fields[-dim:])
                else:
                    index = lowered.get(word.lower())
                    if index is not None:
                        fallback.setdefault(index, fields[-dim:])
    except (OSError, EOFError, UnicodeError) as error:
        raise DataError(f"vectors: cannot read {path}: {error}") from None
    found = {**fallback, **exact}
    found.pop(PAD_ID, None)
    if not found:
        raise DataError(f"vectors: none of the {len(vocabulary)} vocabulary words appear in {path}; is it the "
                        f"right file, and does the tokenizer's lowercase setting match it?")
    ids = sorted(found)
    try:
        vectors = torch.tensor([[float(value) for value in found[index]] for index in ids], dtype=torch.float32)
    except ValueError as error:
        raise DataError(f"vectors: {path} holds a value that is not a number ({error})") from None
    return LoadedVectors(torch.tensor(ids, dtype=torch.int64), vectors, len(ids) / max(1, len(vocabulary) - 1))


def initialise_embedding(embedding: nn.Embedding, path: Path, vocabulary: dict[str, int], freeze: bool) -> float:
    """Copy the file's vectors into ``embedding`` (padding row stays zero); returns the vocabulary coverage."""
    loaded = load_vectors(path, vocabulary, embedding.embedding_dim)
    if int(loaded.ids.max()) >= embedding.num_embeddings:
        raise DataError("vectors: the tokenizer's vocabulary is larger than the embedding")
    with torch.no_grad():
        embedding.weight[loaded.ids] = loaded.vectors
        embedding.weight[PAD_ID] = 0.0
    embedding.weight.requires_grad_(not freeze)
    return loaded.coverage
