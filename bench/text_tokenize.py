"""Tokenizing and numericalising IMDB-like reviews: transmodal-text's `hf-word` tokenizer (vocabulary fitted by
the tokenizers library; ASCII texts encoded by its vectorised NumPy lookup, which gives the library's ids)
against a pure-Python regex tokenizer with a dict vocabulary.

The baseline is what the tutorial's torchtext pipeline did: torchtext's `basic_english` (lower-case, a dozen
regex substitutions that pad punctuation with spaces and drop `<br />`, split on whitespace), ids looked up in
a dict one token at a time, a tensor per review, `pad_sequence` at the end. The core's own `word` tokenizer (one
regex `findall` per review and a dict) and `hf-word` with the lookup switched off (the tokenizers library's
`encode_batch_fast` alone) are timed too, for reference; the run fails if the lookup's ids differ from the
library's. Documents are generated (about 230 words
each, Zipf-distributed words, punctuation, apostrophes, `<br /><br />` paragraph breaks), since nothing here
may be downloaded. Vocabularies are fitted before timing; fitting is timed once, separately.

    python bench/text_tokenize.py [--documents 25000] [--words 230] [--max-length 256] [--repeats 3]

The last line of output is one JSON object; "ratio" is baseline seconds / hf-word seconds, "ratio_vs_library"
library-only seconds / hf-word seconds.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import random
import re
import statistics
import time
from collections import Counter
from collections.abc import Callable

import torch
import transmodal
from torch.nn.utils.rnn import pad_sequence
from transmodal.data import PAD_ID, UNK_ID

COMMON = ["the", "and", "a", "of", "to", "is", "it", "this", "i", "that", "was", "in", "movie", "film", "but", "for", "with", "as", "on", "not", "you", "his", "he", "have", "be", "one", "all", "at", "by", "an", "they", "who", "so", "from", "like", "there", "her", "just", "about", "out", "if", "has", "what", "some", "good", "can", "more", "when", "very", "up", "no", "time", "even", "she", "my", "which", "would", "story", "only", "really", "see", "their", "had", "were", "me", "well", "than", "much", "great", "bad", "people", "also", "first", "get", "do", "because", "how", "other", "made", "could", "don't", "it's", "i've", "isn't", "can't", "didn't"]
SYLLABLES = ("ka", "lo", "mi", "ter", "an", "ble", "ous", "ing", "re", "de", "con", "pro", "st", "ly", "ness",
             "ment", "vi", "sa", "qu", "ed")


def vocabulary_of_words(size: int, rng: random.Random) -> list[str]:
    words = list(COMMON)
    seen = set(words)
    while len(words) < size:
        word = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4)))
        if word not in seen:
            seen.add(word)
            words.append(word)
    return words


def imdb_like_documents(count: int, words_per_document: int, seed: int = 0) -> list[str]:
    """Reviews of about ``words_per_document`` words: sentences of Zipf-distributed words, capitalised, with
    punctuation, the odd quotation or parenthesis, and IMDB's ``<br /><br />`` between paragraphs."""
    rng = random.Random(seed)
    words = vocabulary_of_words(40_000, rng)
    cumulative = list(itertools.accumulate(1.0 / (rank + 2.7) for rank in range(len(words))))
    endings = [".", ".", ".", "!", "?", "...", "!!"]
    documents = []
    for _ in range(count):
        target = max(5, int(rng.gauss(words_per_document, words_per_document / 4)))
        sentences, total = [], 0
        while total < target:
            length = rng.randint(5, 25)
            chosen = rng.choices(words, cum_weights=cumulative, k=length)
            chosen[0] = chosen[0].capitalize()
            if rng.random() < 0.3:
                chosen[length // 2] += ","
            if rng.random() < 0.05:
                chosen[1] = f'"{chosen[1]}"'
            if rng.random() < 0.05:
                chosen[-1] = f"({chosen[-1]})"
            sentences.append(" ".join(chosen) + rng.choice(endings))
            total += length
        paragraphs = [" ".join(sentences[i:i + 4]) for i in range(0, len(sentences), 4)]
        documents.append("<br /><br />".join(paragraphs))
    return documents


# -- the baseline: torchtext's basic_english + a dict vocabulary ------------------------------------------------

_BASIC_ENGLISH = [(re.compile(pattern), replacement) for pattern, replacement in (
    (r"\'", " '  "), (r"\"", ""), (r"\.", " . "), (r"<br \/>", " "), (r",", " , "), (r"\(", " ( "),
    (r"\)", " ) "), (r"\!", " ! "), (r"\?", " ? "), (r"\;", " "), (r"\:", " "), (r"\s+", " "),
)]


def basic_english(text: str) -> list[str]:
    text = text.lower()
    for pattern, replacement in _BASIC_ENGLISH:
        text = pattern.sub(replacement, text)
    return text.split()


class RegexDictTokenizer:
    def __init__(self, texts: list[str], vocab_size: int, max_length: int) -> None:
        counts = Counter(token for text in texts for token in basic_english(text))
        self.vocab = {"<pad>": PAD_ID, "<unk>": UNK_ID}
        for token, _ in counts.most_common(vocab_size - 2):
            self.vocab[token] = len(self.vocab)
        self.max_length = max_length

    def encode_batch(self, texts: list[str]) -> torch.Tensor:
        rows = [torch.tensor([self.vocab.get(token, UNK_ID) for token in basic_english(text)[: self.max_length]],
                             dtype=torch.int64) for text in texts]
        return pad_sequence(rows, batch_first=True, padding_value=PAD_ID)


def timed(function: Callable[[], object]) -> tuple[float, object]:
    started = time.perf_counter()
    result = function()
    return time.perf_counter() - started, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--documents", type=int, default=25_000)
    parser.add_argument("--words", type=int, default=230)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--vocab-size", type=int, default=25_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    generated_in, documents = timed(lambda: imdb_like_documents(args.documents, args.words))
    words = sum(len(document.split()) for document in documents)
    print(f"{len(documents)} documents, {words / len(documents):.0f} words each on average "
          f"(generated in {generated_in:.1f} s)", flush=True)

    plugins = transmodal.get_plugins()
    tokenizer_params = {"vocab_size": args.vocab_size, "max_length": args.max_length}
    fit = {
        "hf-word": lambda: plugins.get("tokenizer", "hf-word").build(documents, **tokenizer_params),
        "core_word": lambda: plugins.get("tokenizer", "word").build(documents, **tokenizer_params),
        "baseline": lambda: RegexDictTokenizer(documents, args.vocab_size, args.max_length),
    }
    fit_seconds, tokenizers = {}, {}
    for name, build in fit.items():
        fit_seconds[name], tokenizers[name] = timed(build)
    tokenizers["library"] = copy.copy(tokenizers["hf-word"])
    tokenizers["library"].lookup = None  # the same vocabulary, encoded by the tokenizers library alone

    seconds: dict[str, list[float]] = {name: [] for name in tokenizers}
    shapes, same_ids = {}, {}
    for repeat in range(args.repeats):
        names = list(tokenizers) if repeat % 2 == 0 else list(reversed(tokenizers))
        for name in names:
            elapsed, ids = timed(lambda tokenizer=tokenizers[name]: tokenizer.encode_batch(documents))
            seconds[name].append(elapsed)
            shapes[name] = tuple(ids.shape)
            assert ids.dtype == torch.int64 and ids.shape[0] == len(documents)
            if name in ("hf-word", "library"):
                same_ids[name] = ids
    if not torch.equal(same_ids["hf-word"], same_ids["library"]):
        raise SystemExit("hf-word's lookup gave other ids than the tokenizers library: a bug, please report it")
    median = {name: statistics.median(values) for name, values in seconds.items()}
    for name in tokenizers:
        fitted = f", fit {fit_seconds[name]:.2f} s" if name in fit_seconds else ""
        print(f"{name:>10}: encode {median[name]:.2f} s ({len(documents) / median[name]:,.0f} documents/s)"
              f"{fitted}, ids {shapes[name]}", flush=True)
    print(json.dumps({
        "benchmark": "text_tokenize",
        "documents": len(documents),
        "words_per_document": round(words / len(documents), 1),
        "max_length": args.max_length,
        "repeats": args.repeats,
        "cpus": os.cpu_count(),
        "ratio": round(median["baseline"] / median["hf-word"], 2),
        "hf_word_seconds": round(median["hf-word"], 3),
        "baseline_seconds": round(median["baseline"], 3),
        "library_seconds": round(median["library"], 3),
        "ratio_vs_library": round(median["library"] / median["hf-word"], 2),
        "core_word_seconds": round(median["core_word"], 3),
        "ratio_vs_core_word": round(median["core_word"] / median["hf-word"], 2),
        "fit_seconds": {name: round(value, 3) for name, value in fit_seconds.items()},
    }))


if __name__ == "__main__":
    main()
