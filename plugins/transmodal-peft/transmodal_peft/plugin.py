"""The plugin's hooks. Imported at discovery: factories are lazy "module:attr" strings, so peft (and the
transformers library it imports) loads only when an adapter strategy is built."""

from __future__ import annotations

from transmodal import hookimpl
from transmodal.hookspecs import Register

from transmodal_peft.params import IA3Params, LoRAParams

_HERE = "transmodal_peft.adapters"


@hookimpl
def register_strategies(register: Register) -> None:
    register("lora", f"{_HERE}:build_lora", LoRAParams,
             "LoRA (Hu et al., 2022): low-rank updates on chosen layers; base weights frozen; fusion and head train.")
    register("dora", f"{_HERE}:build_dora", LoRAParams,
             "DoRA (Liu et al., 2024): LoRA on the direction of each weight plus a trained magnitude.")
    register("ia3", f"{_HERE}:build_ia3", IA3Params,
             "IA3 (Liu et al., 2022): learned rescaling of chosen layers' activations; fewest trained weights.")
