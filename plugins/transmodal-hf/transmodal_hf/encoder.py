"""``hf-text``: a Hugging Face transformer (any AutoModel with one stack of blocks) as a transmodal text encoder.

Ids arrive as (B, T) int64 from ``hf-tokenizer`` (the model's own tokenizer), padded with ``PAD_ID``; the attention
mask is ``ids != PAD_ID``, and ids shifted by the tokenizer (a model whose padding id is not 0) are shifted back.
Mean pooling averages the real tokens only, so a sample's features do not depend on the padding of its batch.

Layer groups: everything before the blocks (embeddings), each block, then everything after them (a final norm), so
freezing, gradual unfreezing, layer-wise learning rates and LoRA's ``target_modules`` work per transformer block.
"""

from __future__ import annotations

import torch
from torch import nn
from transmodal.data import PAD_ID, ModalitySpec
from transmodal.encoder import Encoder
from transmodal.errors import ConfigError
from transmodal.fusion import pool_tokens

from transmodal_hf.params import HFTextParams
from transmodal_hf.pretrained import load_pretrained, locate
from transmodal_hf.tokenizer import ModelTokenizer


class HFTextEncoder(Encoder):
    def __init__(self, model: nn.Module, blocks: str, params: HFTextParams, tokenizer: ModelTokenizer) -> None:
        super().__init__()
        self.model = model
        self.out_dim = int(model.config.hidden_size)
        self.pooling = params.pooling
        self.normalize = params.normalize
        self.returns_tokens = params.tokens
        self.frozen = params.freeze
        self.offset = tokenizer.offset
        self.model_pad_id = tokenizer.pad_id if tokenizer.pad_id is not None else 0  # masked out either way
        self._groups = _layer_groups(model, blocks)  # a plain list: the modules are already the model's
        if self.frozen:
            self.model.requires_grad_(False)
            self.model.eval()

    def layer_groups(self) -> list[tuple[str, nn.Module]]:
        return list(self._groups)

    def train(self, mode: bool = True) -> HFTextEncoder:
        super().train(mode)
        if self.frozen:
            self.model.eval()  # a fixed feature extractor: no dropout
        return self

    def token_mask(self, inputs: torch.Tensor) -> torch.Tensor:
        return inputs != PAD_ID

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = ids != PAD_ID
        model_ids = ids if self.offset == 0 else (ids - self.offset).masked_fill(~mask, self.model_pad_id)
        # Nothing in the model trains (freeze, or a strategy froze it all): no autograd graph to keep.
        trains = any(parameter.requires_grad for parameter in self.model.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and trains):
            hidden = self.model(input_ids=model_ids, attention_mask=mask.long()).last_hidden_state
        if self.returns_tokens:
            return hidden
        pooled = pool_tokens(hidden, mask) if self.pooling == "mean" else hidden[:, 0]
        return nn.functional.normalize(pooled, dim=1) if self.normalize else pooled


def _block_stack(model: nn.Module, depth: int) -> str:
    """Name of the ModuleList holding the model's ``depth`` transformer blocks (BERT: ``encoder.layer``)."""
    stacks = [(name, module) for name, module in model.named_modules()
              if isinstance(module, nn.ModuleList) and len(module) == depth and depth > 0]
    if not stacks:
        raise ConfigError(f"hf-text: cannot find the {depth} transformer blocks of this {type(model).__name__} (no "
                          f"list of {depth} modules); it is not a single stack of blocks that hf-text supports")
    return max(stacks, key=lambda item: sum(p.numel() for p in item[1].parameters()))[0]


def _layer_groups(model: nn.Module, blocks: str) -> list[tuple[str, nn.Module]]:
    """Siblings before the blocks on the path down to them, each block, then the siblings after them."""
    before: list[nn.Module] = []
    after: list[nn.Module] = []
    module = model
    for part in blocks.split("."):
        children = list(module.named_children())
        index = [name for name, _ in children].index(part)
        before += [child for _, child in children[:index]]
        after = [child for _, child in children[index + 1:]] + after  # inner levels end before outer ones
        module = getattr(module, part)
    groups: list[tuple[str, nn.Module]] = [("embeddings", nn.ModuleList(before))]
    groups += [(f"layer{index + 1}", block) for index, block in enumerate(module)]
    groups.append(("final", nn.ModuleList(after)))
    return [(name, group) for name, group in groups if any(True for _ in group.parameters())]


def _check_tokenizer(params: HFTextParams, modality: ModalitySpec, config: object) -> ModelTokenizer:
    where = f"model.encoders.{modality.name}"
    tokenizer = modality.tokenizer
    if modality.kind != "text":
        raise ConfigError(f"{where}: hf-text takes text, but modality '{modality.name}' is {modality.kind}")
    if not isinstance(tokenizer, ModelTokenizer):
        raise ConfigError(f"{where}: hf-text reads the ids of its model's own tokenizer, but data.tokenizer is "
                          f"another one; set data.tokenizer to {{name: hf-tokenizer, model: {params.model}}}")
    if locate(tokenizer.model) != locate(params.model):
        raise ConfigError(f"{where}.model: '{params.model}' is not the model whose tokenizer data.tokenizer reads "
                          f"('{tokenizer.model}'); name the same model in both")
    if tokenizer.vocab_size - tokenizer.offset > config.vocab_size:
        raise ConfigError(f"{where}: the tokenizer has {tokenizer.vocab_size - tokenizer.offset} ids but the "
                          f"model embeds only {config.vocab_size}; they do not belong together")
    positions = getattr(config, "max_position_embeddings", None)
    if positions is not None and tokenizer.max_length > positions:
        raise ConfigError(f"data.tokenizer.max_length: {tokenizer.max_length} tokens, but '{params.model}' has "
                          f"positions for {positions}; set max_length to at most {positions}")
    return tokenizer


def build_hf_text(params: HFTextParams, modality: ModalitySpec) -> HFTextEncoder:
    from transformers import AutoConfig, AutoModel

    config = load_pretrained(AutoConfig, params.model, "config")
    tokenizer = _check_tokenizer(params, modality, config)
    if getattr(config, "is_encoder_decoder", False):
        raise ConfigError(f"model.encoders.{modality.name}.model: '{params.model}' is an encoder-decoder "
                          f"({config.model_type}); hf-text runs models with one stack of blocks (BERT, RoBERTa, ...)")
    if torch.empty(()).device.type == "meta":  # the core measuring the model's size: shapes only, no weights read
        model = AutoModel.from_config(config)
    else:
        model = load_pretrained(AutoModel, params.model, "weights", dtype=torch.float32)  # autocast does the rest
    if isinstance(getattr(model, "pooler", None), nn.Module):
        model.pooler = None  # BERT's pooler (dense + tanh on [CLS]) is never used here and would never train
    return HFTextEncoder(model, _block_stack(model, int(config.num_hidden_layers)), params, tokenizer)
