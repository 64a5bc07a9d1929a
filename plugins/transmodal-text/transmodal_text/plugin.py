"""The transmodal hooks of transmodal-text (the entry point). Imported at discovery: keep it light."""

from __future__ import annotations

import transmodal
from transmodal.hookspecs import Register

from transmodal_text.params import (
    IMDBParams,
    RNNParams,
    SubwordTokenizerParams,
    TextCNNParams,
    TextCSVParams,
    TokenizerFileParams,
    WordTokenizerParams,
)

_HERE = "transmodal_text"


@transmodal.hookimpl
def register_tokenizers(register: Register) -> None:
    register("hf-word", f"{_HERE}.tokenization:build_word", WordTokenizerParams,
             "Word-level tokenizer (tokenizers library) fitted on the training split: words and punctuation.")
    register("bpe", f"{_HERE}.tokenization:build_bpe", SubwordTokenizerParams,
             "Byte-pair-encoding subwords learnt from the training split.")
    register("wordpiece", f"{_HERE}.tokenization:build_wordpiece", SubwordTokenizerParams,
             "WordPiece subwords learnt from the training split.")
    register("tokenizer-file", f"{_HERE}.tokenization:build_from_file", TokenizerFileParams,
             "A pretrained tokenizer.json from disk; saved with the run, so evaluation needs no file.")


@transmodal.hookimpl
def register_encoders(register: Register) -> None:
    register("lstm", f"{_HERE}.encoders:build_lstm", RNNParams,
             "LSTM over packed sequences; last/mean/max/attention pooling or the token sequence.")
    register("gru", f"{_HERE}.encoders:build_gru", RNNParams,
             "GRU over packed sequences; last/mean/max/attention pooling or the token sequence.")
    register("text-cnn", f"{_HERE}.encoders:build_text_cnn", TextCNNParams,
             "Kim (2014) CNN: convolutions of several widths, max over time.")


@transmodal.hookimpl
def register_datasets(register: Register) -> None:
    register("imdb", f"{_HERE}.datasets:build_imdb", IMDBParams,
             "IMDB movie reviews (Maas et al. 2011): 25k train, 25k test, 50k unlabelled; neg/pos.")
    register("text-csv", f"{_HERE}.datasets:build_text_csv", TextCSVParams,
             "Texts and labels from a CSV/TSV/JSONL file; an optional domain column gives a target domain.")
