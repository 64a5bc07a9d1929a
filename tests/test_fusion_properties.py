"""Properties every fusion operator keeps, checked over random modality counts, widths, batch sizes and
presence patterns: the contract of DESIGN.md, which peers each break somewhere."""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from transmodal.fusion import Fusion
from transmodal.plugins import Plugins

try:
    from transmodal_attention import plugin as attention_plugin
except ImportError:  # core-only install: the attention operators are skipped below
    attention_plugin = None

# name -> (small parameters, fewest modalities the operator accepts)
OPERATORS: dict[str, tuple[dict[str, Any], int]] = {
    "concat": ({"hidden": 8}, 1),
    "mean": ({"dim": 8}, 1),
    "gated": ({"dim": 8}, 1),
    "bilinear": ({"rank": 8, "dim": 8}, 1),
    "tensor": ({"dim": 8}, 1),
    "low-rank-tensor": ({"rank": 3, "dim": 8}, 1),
    "film": ({}, 2),  # conditioning is set to one of the drawn modalities
    "cross-attention": ({"dim": 8, "heads": 2}, 2),
    "transformer": ({"dim": 8, "heads": 2, "layers": 1, "feedforward": 16, "dropout": 0.0}, 1),
    "modality-attention": ({"dim": 8, "hidden": 4}, 2),
}
ATTENTION = {"cross-attention", "transformer", "modality-attention"}
NAMES = ("audio", "depth", "image", "text", "thermal", "video")
SETTINGS = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])



@functools.cache
def fusion_plugins() -> Plugins:
    """The core's operators and the attention plugin's, without other installed plugins."""
    extra = [("transmodal-attention", attention_plugin)] if attention_plugin is not None else []
    return Plugins(entry_points=[], extra_plugins=extra)


def operator_param(name: str) -> Any:
    marks = [pytest.mark.skipif(attention_plugin is None, reason="transmodal-attention is not installed")]
    return pytest.param(name, marks=marks if name in ATTENTION else [], id=name)


ALL = [operator_param(name) for name in OPERATORS]


@dataclass
class Case:
    """Inputs for one fusion call; ``order`` is a permutation of the modalities for the dicts' insertion order."""

    dims: dict[str, int]
    batch: int
    lengths: dict[str, int]  # 0: a (B, D) vector; otherwise a (B, T, D) sequence
    order: list[str]
    seed: int
    conditioning: str


@st.composite
def cases(draw: st.DrawFn, fewest: int, sequences: bool) -> Case:
    names = draw(st.lists(st.sampled_from(NAMES), min_size=fewest, max_size=4, unique=True))
    dims = {name: draw(st.integers(1, 6)) for name in names}
    lengths = {name: draw(st.integers(0, 3)) if sequences else 0 for name in names}
    return Case(
        dims=dims,
        batch=draw(st.integers(1, 5)),
        lengths=lengths,
        order=draw(st.permutations(names)),
        seed=draw(st.integers(0, 2**16)),
        conditioning=draw(st.sampled_from(names)),
    )


def build(name: str, case: Case) -> Fusion:
    params = dict(OPERATORS[name][0])
    if name == "film":
        params["conditioning"] = case.conditioning
    torch.manual_seed(case.seed)
    return fusion_plugins().get("fusion", name).build(case.dims, **params)


def inputs(
    case: Case, fusion: Fusion, absent: float = 0.0
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor | None]]:
    """Features, presence masks (each sample absent with probability ``absent``; with absence, sample 0 has no
    modality at all) and token masks (random padding, possibly a whole sequence), in ``case.order``."""
    generator = torch.Generator().manual_seed(case.seed)
    features: dict[str, torch.Tensor] = {}
    present: dict[str, torch.Tensor] = {}
    token_masks: dict[str, torch.Tensor | None] = {}
    for name in case.order:
        length = case.lengths[name] if fusion.accepts_tokens else 0
        shape = (case.batch, length, case.dims[name]) if length else (case.batch, case.dims[name])
        features[name] = torch.randn(shape, generator=generator)
        present[name] = torch.rand(case.batch, generator=generator) >= absent
        if absent > 0:
            present[name][0] = False
        token_masks[name] = (
            torch.rand(case.batch, length, generator=generator) < 0.7 if length and absent > 0 else None
        )
    return features, present, token_masks


def fewest(name: str) -> int:
    return OPERATORS[name][1]


def tokens(name: str) -> bool:
    return name in {"cross-attention", "transformer"}


def test_the_table_lists_every_registered_fusion() -> None:
    registered = set(fusion_plugins().registry("fusion").names())
    expected = set(OPERATORS) if attention_plugin is not None else set(OPERATORS) - ATTENTION
    assert registered == expected


@pytest.mark.parametrize("name", ALL)
def test_output_has_the_declared_width(name: str) -> None:
    @SETTINGS
    @given(case=cases(fewest(name), tokens(name)))
    def check(case: Case) -> None:
        fusion = build(name, case)
        features, present, token_masks = inputs(case, fusion)
        assert fusion(features).shape == (case.batch, fusion.output_dim)
        assert fusion(features, present, token_masks).shape == (case.batch, fusion.output_dim)

    check()


@pytest.mark.parametrize("name", ALL)
def test_result_does_not_depend_on_dict_order(name: str) -> None:
    @SETTINGS
    @given(case=cases(fewest(name), tokens(name)))
    def check(case: Case) -> None:
        fusion = build(name, case).eval()
        features, present, token_masks = inputs(case, fusion, absent=0.3)
        reordered = random.Random(case.seed).sample(case.order, len(case.order))
        with torch.no_grad():
            first = fusion(features, present, token_masks)
            second = fusion(
                {m: features[m] for m in reordered},
                {m: present[m] for m in reordered},
                {m: token_masks[m] for m in reordered},
            )
        assert torch.equal(first, second)

    check()


@pytest.mark.parametrize("name", ALL)
def test_every_parameter_receives_a_gradient(name: str) -> None:
    @SETTINGS
    @given(case=cases(fewest(name), tokens(name)))
    def check(case: Case) -> None:
        fusion = build(name, case)
        features, _, _ = inputs(case, fusion)
        out = fusion(features)
        (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(1))).sum().backward()
        for parameter_name, parameter in fusion.named_parameters():
            assert parameter.grad is not None, f"{name}: {parameter_name} is not connected to the output"
            assert torch.isfinite(parameter.grad).all(), f"{name}: {parameter_name} has a non-finite gradient"

    check()


@pytest.mark.parametrize("name", ALL)
def test_every_parameter_learns_from_a_typical_batch(name: str) -> None:
    """Not only connected: at a realistic batch each parameter's gradient is non-zero."""
    case = Case({"image": 6, "text": 5, "audio": 4}, 32, {"image": 3, "text": 2, "audio": 0},
                ["text", "image", "audio"], 7, "text")
    fusion = build(name, case)
    features, _, _ = inputs(case, fusion)
    out = fusion(features)
    (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(1))).sum().backward()
    silent = [n for n, p in fusion.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not silent, f"{name}: no gradient reaches {silent}"


@pytest.mark.parametrize("name", ALL)
def test_absent_modalities_give_finite_output_and_gradients(name: str) -> None:
    @SETTINGS
    @given(case=cases(fewest(name), tokens(name)))
    def check(case: Case) -> None:
        fusion = build(name, case)
        features, present, token_masks = inputs(case, fusion, absent=0.5)  # sample 0 has no modality
        for mode in (fusion.train, fusion.eval):
            mode()
            fusion.zero_grad()
            out = fusion(features, present, token_masks)
            assert torch.isfinite(out).all()
            out.square().sum().backward()
            for parameter_name, parameter in fusion.named_parameters():
                if parameter.grad is not None:
                    assert torch.isfinite(parameter.grad).all(), f"{name}: NaN gradient in {parameter_name}"

    check()


@pytest.mark.parametrize("name", ALL)
def test_absent_features_do_not_leak_into_the_result(name: str) -> None:
    """What an absent modality (or a padding token) holds must not matter: modality dropout keeps the real
    features of a dropped modality in the batch, and only ``present`` says to ignore them."""

    @SETTINGS
    @given(case=cases(fewest(name), tokens(name)))
    def check(case: Case) -> None:
        fusion = build(name, case).eval()
        features, present, token_masks = inputs(case, fusion, absent=0.5)
        scrambled = {}
        for m, value in features.items():
            hidden = ~present[m].view(-1, *([1] * (value.dim() - 1)))
            if token_masks[m] is not None:
                hidden = hidden | ~token_masks[m].unsqueeze(-1)
            scrambled[m] = torch.where(hidden, 100 * torch.randn_like(value), value)
        with torch.no_grad():
            expected = fusion(features, present, token_masks)
            actual = fusion(scrambled, present, token_masks)
        torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)

    check()


@pytest.mark.parametrize("name", ALL)
def test_every_weight_is_registered(name: str) -> None:
    """Weights outside ``parameters()`` neither train nor save (MultiBench's low-rank tensor fusion): a fresh
    instance loaded from the state dict must compute the same function, also after a dtype move."""
    case = Case({"image": 4, "text": 3}, 5, {"image": 2, "text": 0}, ["text", "image"], 3, "text")
    fusion = build(name, case).eval()
    other = build(name, Case(**{**case.__dict__, "seed": 99})).eval()
    other.load_state_dict(fusion.state_dict())
    features, present, token_masks = inputs(case, fusion, absent=0.3)
    with torch.no_grad():
        torch.testing.assert_close(other(features, present, token_masks), fusion(features, present, token_masks))
        double = {m: v.double() for m, v in features.items()}
        assert fusion.double()(double, present, token_masks).dtype == torch.float64
