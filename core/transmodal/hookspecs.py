"""The hooks a transmodal plugin implements.

Each hook hands the plugin a ``register`` callback for one kind of component::

    @transmodal.hookimpl
    def register_fusions(register):
        register("my-fusion", "my_package.fusion:build", params=MyFusionParams,
                 description="One line saying what it is.")

``register(name, factory, params=NoParams, description="")``: ``factory`` is a callable or a lazy
"module:attr" string; ``params`` a pydantic model (``extra="forbid"``) of the component's parameters.
The factory is called as ``factory(params, *context)``; the context per kind is given below. A name another
provider registered first is skipped with a warning (the first registered wins). CONTRIBUTING.md is the full guide.

Compatibility promise: hook arguments are only ever added, never removed or renamed, so a plugin written
against an older transmodal keeps loading.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

PROJECT = "transmodal"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

Register = Callable[..., Any]


@hookspec
def register_backbones(register: Register) -> None:
    """Register image backbones: ``factory(params, modality: ModalitySpec) -> Encoder``.

    A backbone is usable wherever an image encoder is expected."""


@hookspec
def register_encoders(register: Register) -> None:
    """Register modality encoders: ``factory(params, modality: ModalitySpec) -> Encoder``."""


@hookspec
def register_fusions(register: Register) -> None:
    """Register fusion operators: ``factory(params, input_dims: dict[str, int]) -> Fusion``."""


@hookspec
def register_heads(register: Register) -> None:
    """Register prediction heads: ``factory(params, in_dim: int, num_classes: int) -> nn.Module``."""


@hookspec
def register_strategies(register: Register) -> None:
    """Register adaptation strategies: ``factory(params) -> Strategy``."""


@hookspec
def register_datasets(register: Register) -> None:
    """Register datasets: ``factory(params, seed: int) -> DatasetBundle``."""


@hookspec
def register_tokenizers(register: Register) -> None:
    """Register tokenizers: ``factory(params, training_texts: list[str], state: str | None = None) -> Tokenizer``.

    With ``state`` (what ``Tokenizer.state()`` returned) the factory restores that tokenizer instead of fitting."""


@hookspec
def register_validators(register: Register) -> None:
    """Register model-selection validators: ``factory(params) -> Validator``."""
