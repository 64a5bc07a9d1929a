"""``hf-tokenizer``: a Hugging Face model's own tokenizer behind the transmodal tokenizer contract.

The model's ``tokenizers`` pipeline (normaliser, pre-tokenizer, vocabulary, and the post-processor that adds
[CLS]/[SEP]) runs inside transmodal-text's ``HFTokenizer``, which numericalises whole splits and saves itself as
one string; this class adds what ``hf-text`` needs to give the model its own ids back: the model it belongs to
and the model's padding id.

The core pads with ``PAD_ID`` (0) and reads 0 as padding. Where the model's padding token is 0 (BERT's [PAD])
ids pass unchanged; otherwise (RoBERTa pads with 1, GPT-2 has no padding token) every id is shifted up by one
(``offset``) and ``hf-text`` shifts it back. The text "[PAD]" inside a sample is tokenized as text, so data never
becomes padding.
"""

from __future__ import annotations

import json

import torch
from transmodal.data import PAD_ID
from transmodal.errors import CheckpointError, ConfigError
from transmodal_text.tokenization import HFTokenizer

from transmodal_hf.params import HFTokenizerParams
from transmodal_hf.pretrained import load_pretrained

STATE_FORMAT = 1


class ModelTokenizer:
    """The tokenizer of one pretrained model; ``model`` is the name the config gave it."""

    def __init__(self, model: str, text: HFTokenizer, pad_id: int | None) -> None:
        self.model = model
        self.text = text
        self.pad_id = pad_id  # the model's own padding id; None if it has no padding token
        self.offset = text.offset
        self.max_length = text.max_length
        self.vocab_size = text.vocab_size

    def encode_batch(self, texts: list[str]) -> torch.Tensor:
        return self.text.encode_batch(texts)

    def vocabulary(self) -> dict[str, int]:
        return self.text.vocabulary()

    def state(self) -> str:
        return json.dumps({"format": STATE_FORMAT, "model": self.model, "pad_id": self.pad_id,
                           "tokenizer": self.text.state()})

    @classmethod
    def from_state(cls, state: str) -> ModelTokenizer:
        saved = json.loads(state)
        found = saved.get("format") if isinstance(saved, dict) else None
        if found != STATE_FORMAT:
            raise CheckpointError(f"saved hf-tokenizer state has format {found!r} (expected {STATE_FORMAT}); was "
                                  f"the run made with another tokenizer?")
        return cls(saved["model"], HFTokenizer.from_state(saved["tokenizer"]), saved["pad_id"])


def build_hf_tokenizer(
    params: HFTokenizerParams, training_texts: list[str], state: str | None = None
) -> ModelTokenizer:
    """The model's tokenizer as it was saved with the model; ``training_texts`` are not needed (nothing is fitted)."""
    if state is not None:
        return ModelTokenizer.from_state(state)
    from transformers import AutoTokenizer

    pretrained = load_pretrained(AutoTokenizer, params.model, "tokenizer")
    backend = getattr(pretrained, "backend_tokenizer", None)
    if backend is None:
        raise ConfigError(f"data.tokenizer.model: the tokenizer of '{params.model}' ({type(pretrained).__name__}) "
                          f"has no `tokenizers` pipeline (tokenizer.json) that hf-tokenizer could run")
    pad_id = pretrained.pad_token_id
    offset = 0 if pad_id == PAD_ID else 1
    text = HFTokenizer(backend, params.max_length, lowercase=False, strip_html=params.strip_html, offset=offset,
                       add_special_tokens=True)
    return ModelTokenizer(params.model, text, pad_id)
