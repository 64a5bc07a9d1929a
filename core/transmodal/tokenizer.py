"""The tokenizer contract, and the core's small word-level tokenizer.

A tokenizer component's factory is called as ``factory(params, training_texts, state=None)``: with ``state``
(what :meth:`Tokenizer.state` returned earlier) it restores a saved tokenizer instead of fitting one, so an
evaluation in another process tokenizes exactly as training did.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Protocol

import torch

from transmodal.builtin.params import WordTokenizerParams
from transmodal.data import PAD_ID, UNK_ID

PAD_TOKEN, UNK_TOKEN = "<pad>", "<unk>"


class Tokenizer(Protocol):
    vocab_size: int

    def encode_batch(self, texts: list[str]) -> torch.Tensor:
        """Ids (N, T) as int64, padded with PAD_ID at the end, truncated to the tokenizer's maximum length."""

    def vocabulary(self) -> dict[str, int]:
        """Token to id (for pretrained word vectors)."""

    def state(self) -> str:
        """Everything needed to restore this tokenizer, as a string (stored in checkpoints)."""


_TOKEN_PATTERN = re.compile(r"[\w']+|[^\w\s]")
_HTML_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)


class WordTokenizer:
    """Lower-cased words and punctuation, a frequency-ranked vocabulary; enough for bag-of-words models."""

    def __init__(self, vocab: dict[str, int], max_length: int, lowercase: bool) -> None:
        self.vocab = vocab
        self.max_length = max_length
        self.lowercase = lowercase
        self.vocab_size = len(vocab)

    def words(self, text: str) -> list[str]:
        text = _HTML_BREAK.sub(" ", text)
        if self.lowercase:
            text = text.lower()
        return _TOKEN_PATTERN.findall(text)

    @classmethod
    def fit(cls, params: WordTokenizerParams, texts: list[str]) -> WordTokenizer:
        counter_tokenizer = cls({}, params.max_length, params.lowercase)
        counts = Counter(word for text in texts for word in counter_tokenizer.words(text))
        # most_common breaks ties by first appearance; sort by (-count, word) so the vocabulary is reproducible
        ranked = sorted((item for item in counts.items() if item[1] >= params.min_freq), key=lambda i: (-i[1], i[0]))
        vocab = {PAD_TOKEN: PAD_ID, UNK_TOKEN: UNK_ID}
        for word, _ in ranked[: params.vocab_size - len(vocab)]:
            vocab[word] = len(vocab)
        return cls(vocab, params.max_length, params.lowercase)

    def encode_batch(self, texts: list[str]) -> torch.Tensor:
        ids = torch.full((len(texts), self.max_length), PAD_ID, dtype=torch.int64)
        longest = 1
        for row, text in enumerate(texts):
            tokens = [self.vocab.get(word, UNK_ID) for word in self.words(text)[: self.max_length]]
            if tokens:
                ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.int64)
                longest = max(longest, len(tokens))
        return ids[:, :longest].contiguous()

    def vocabulary(self) -> dict[str, int]:
        return dict(self.vocab)

    def state(self) -> str:
        return json.dumps({"vocab": self.vocab, "max_length": self.max_length, "lowercase": self.lowercase})


def build_word_tokenizer(
    params: WordTokenizerParams, training_texts: list[str], state: str | None = None
) -> WordTokenizer:
    if state is not None:
        saved = json.loads(state)
        return WordTokenizer(saved["vocab"], saved["max_length"], saved["lowercase"])
    return WordTokenizer.fit(params, training_texts)
