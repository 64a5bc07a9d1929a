"""Tokenizers built on the ``tokenizers`` library: word-level, BPE, WordPiece, or a tokenizer.json.

Every one of them numericalises a whole split at once into int64 ids (N, T) padded with ``PAD_ID`` (0), and
saves itself as one string (the library's own JSON plus our settings), which the core stores in checkpoints:
a run evaluated later in another process tokenizes exactly as it trained.

Lower-casing and ``<br />`` removal happen in Python (C string methods) before the texts reach the library,
the same way when fitting and when encoding; it is cheaper than the library's alignment-tracking normalisers.
"""

from __future__ import annotations

import itertools
import json
import re

import numpy as np
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transmodal.data import PAD_ID, UNK_ID
from transmodal.errors import CheckpointError, ConfigError

from transmodal_text.params import (
    SubwordTokenizerParams,
    TokenizerFileParams,
    WordTokenizerParams,
)
from transmodal_text.word_lookup import word_lookup_for

PAD_TOKEN, UNK_TOKEN = "<pad>", "<unk>"
STATE_FORMAT = 1
_HTML_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    """Runs of word characters, and runs of punctuation ("don't" -> don ' t, "!!" stays one token).

    The library's ``Whitespace`` pre-tokenizer: measured here the cheapest of its punctuation-splitting ones
    (a custom regex keeping "don't" whole cost 25-40% more encoding time; ``BertPreTokenizer`` about 2x).
    """
    return pre_tokenizers.Whitespace()


class HFTokenizer:
    """A ``tokenizers.Tokenizer`` behind the transmodal tokenizer contract.

    ``offset`` shifts every id by one for pretrained files whose padding token is not id 0, so that 0
    always means padding (the encoders derive lengths from it). For the same reason the text of a special token
    ("<pad>", "[PAD]") inside a text is ordinary text, tokenized like any other: data never becomes padding.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        max_length: int,
        lowercase: bool,
        strip_html: bool,
        offset: int = 0,
        add_special_tokens: bool = False,
        literal_special_tokens: bool = True,
    ) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.lowercase = lowercase
        self.strip_html = strip_html
        self.offset = offset
        self.add_special_tokens = add_special_tokens
        self.literal_special_tokens = literal_special_tokens
        tokenizer.encode_special_tokens = literal_special_tokens
        tokenizer.no_padding()  # padding is done below on whole arrays, not token by token
        tokenizer.enable_truncation(max_length)
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True) + offset
        self.lookup = word_lookup_for(tokenizer, offset)  # the same ids as the library, many times faster

    def normalise(self, texts: list[str]) -> list[str]:
        if self.strip_html:
            texts = [_HTML_BREAK.sub(" ", text) if "<" in text else text for text in texts]
        if self.lowercase:
            texts = [text.lower() for text in texts]
        return texts

    def encode_batch(self, texts: list[str]) -> torch.Tensor:
        if not texts:
            return torch.zeros(0, 1, dtype=torch.int64)
        texts = self.normalise(list(texts))
        if self.lookup is None:
            return torch.from_numpy(self._library_ids(texts))
        simple = self.lookup.encodable(texts)
        if simple.all():
            return torch.from_numpy(self.lookup.encode(texts, self.max_length))
        simple_rows, other_rows = np.flatnonzero(simple), np.flatnonzero(~simple)
        parts = [(other_rows, self._library_ids([texts[row] for row in other_rows]))]
        if len(simple_rows):
            parts.append((simple_rows, self.lookup.encode([texts[row] for row in simple_rows], self.max_length)))
        ids = np.zeros((len(texts), max(part.shape[1] for _, part in parts)), dtype=np.int64)
        for rows, part in parts:
            ids[rows, : part.shape[1]] = part
        return torch.from_numpy(ids)

    def _library_ids(self, texts: list[str]) -> np.ndarray:
        encodings = self.tokenizer.encode_batch_fast(texts, add_special_tokens=self.add_special_tokens)
        rows = [encoding.ids for encoding in encodings]
        lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
        flat = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64, count=int(lengths.sum()))
        width = max(1, int(lengths.max()))
        ids = np.full((len(rows), width), PAD_ID, dtype=np.int64)
        ids[np.arange(width) < lengths[:, None]] = flat + self.offset
        return ids

    def vocabulary(self) -> dict[str, int]:
        return {token: index + self.offset for token, index in self.tokenizer.get_vocab(with_added_tokens=True).items()}

    def state(self) -> str:
        return json.dumps({
            "format": STATE_FORMAT,
            "tokenizer": self.tokenizer.to_str(),
            "max_length": self.max_length,
            "lowercase": self.lowercase,
            "strip_html": self.strip_html,
            "offset": self.offset,
            "add_special_tokens": self.add_special_tokens,
            "literal_special_tokens": self.literal_special_tokens,
        })

    @classmethod
    def from_state(cls, state: str) -> HFTokenizer:
        try:
            saved = json.loads(state)
            if saved.get("format") != STATE_FORMAT:
                raise ValueError(f"state format {saved.get('format')!r}, expected {STATE_FORMAT}")
            tokenizer = Tokenizer.from_str(saved["tokenizer"])
            return cls(tokenizer, saved["max_length"], saved["lowercase"], saved["strip_html"], saved["offset"],
                       saved["add_special_tokens"],
                       saved.get("literal_special_tokens", False))  # runs saved before it existed matched them
        except Exception as error:  # noqa: BLE001 - malformed JSON, missing keys, or the library's bare Exception
            raise CheckpointError(
                f"saved tokenizer state cannot be restored ({type(error).__name__}: {error}); was the run made "
                f"with another tokenizer? Check data.tokenizer in the run's config.yaml"
            ) from None


def _fit_or_restore(
    model: models.Model,
    trainer_class: type[trainers.Trainer],
    params: WordTokenizerParams | SubwordTokenizerParams,
    texts: list[str],
    state: str | None,
) -> HFTokenizer:
    """Restore a saved tokenizer, or train ``model`` on the training texts (``<pad>`` = 0, ``<unk>`` = 1)."""
    if state is not None:
        return HFTokenizer.from_state(state)
    if not texts:
        raise ConfigError("data.tokenizer: there are no training texts to fit the tokenizer on")
    trainer = trainer_class(vocab_size=params.vocab_size, min_frequency=params.min_freq,
                            special_tokens=[PAD_TOKEN, UNK_TOKEN], show_progress=False)
    tokenizer = Tokenizer(model)
    tokenizer.pre_tokenizer = _pre_tokenizer()
    untrained = HFTokenizer(tokenizer, params.max_length, params.lowercase, params.strip_html)
    tokenizer.train_from_iterator(untrained.normalise(texts), trainer=trainer, length=len(texts))
    vocab = tokenizer.get_vocab()
    assert vocab[PAD_TOKEN] == PAD_ID and vocab[UNK_TOKEN] == UNK_ID, "special tokens must come first"
    return HFTokenizer(tokenizer, params.max_length, params.lowercase, params.strip_html)


def build_word(params: WordTokenizerParams, training_texts: list[str], state: str | None = None) -> HFTokenizer:
    return _fit_or_restore(models.WordLevel(unk_token=UNK_TOKEN), trainers.WordLevelTrainer, params,
                           training_texts, state)


def build_bpe(params: SubwordTokenizerParams, training_texts: list[str], state: str | None = None) -> HFTokenizer:
    return _fit_or_restore(models.BPE(unk_token=UNK_TOKEN), trainers.BpeTrainer, params, training_texts, state)


def build_wordpiece(
    params: SubwordTokenizerParams, training_texts: list[str], state: str | None = None
) -> HFTokenizer:
    return _fit_or_restore(models.WordPiece(unk_token=UNK_TOKEN), trainers.WordPieceTrainer, params,
                           training_texts, state)


def _padding_token_id(tokenizer: Tokenizer) -> int | None:
    """The id the file pads with: its padding settings, else a conventional padding token."""
    padding = json.loads(tokenizer.to_str()).get("padding") or {}
    if "pad_id" in padding:
        return int(padding["pad_id"])
    for token in ("[PAD]", "<pad>", "<PAD>", "[pad]"):
        index = tokenizer.token_to_id(token)
        if index is not None:
            return index
    return None


def build_from_file(
    params: TokenizerFileParams, training_texts: list[str], state: str | None = None
) -> HFTokenizer:
    if state is not None:
        return HFTokenizer.from_state(state)
    path = params.path.expanduser()
    if not path.is_file():
        raise ConfigError(f"data.tokenizer.path: no tokenizer file at {path}; give the path of a tokenizer.json")
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as error:  # noqa: BLE001 - the library raises a bare Exception for malformed files
        raise ConfigError(
            f"data.tokenizer.path: {path} is not a tokenizer.json the tokenizers library can read ({error})"
        ) from None
    # Keep the file's ids when it already pads with 0; otherwise shift them all so that 0 is free for padding.
    offset = 0 if _padding_token_id(tokenizer) == PAD_ID else 1
    return HFTokenizer(tokenizer, params.max_length, params.lowercase, params.strip_html, offset,
                       params.add_special_tokens)
