"""What each fusion operator promises beyond the shared contract: its treatment of absent modalities, its
errors, and what it exposes."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from transmodal.errors import ConfigError
from transmodal.plugins import Plugins

try:
    from transmodal_attention import plugin as attention_plugin
except ImportError:
    attention_plugin = None

needs_attention = pytest.mark.skipif(attention_plugin is None, reason="transmodal-attention is not installed")



def build(name: str, input_dims: dict[str, int], **params):
    extra = [("transmodal-attention", attention_plugin)] if attention_plugin is not None else []
    return Plugins(entry_points=[], extra_plugins=extra).get("fusion", name).build(input_dims, **params)


def absent(batch: int) -> torch.Tensor:
    return torch.zeros(batch, dtype=torch.bool)


def everywhere(batch: int) -> torch.Tensor:
    return torch.ones(batch, dtype=torch.bool)


# -- FiLM ----------------------------------------------------------------------------------------------------


@settings(max_examples=15, deadline=None)
@given(dims=st.lists(st.integers(1, 6), min_size=2, max_size=4), batch=st.integers(1, 5), seed=st.integers(0, 999))
def test_film_is_the_identity_without_its_conditioning_modality(dims: list[int], batch: int, seed: int) -> None:
    names = ["audio", "image", "text", "video"][: len(dims)]
    input_dims = dict(zip(names, dims))
    torch.manual_seed(seed)
    fusion = build("film", input_dims, conditioning="text" if "text" in names else names[0])
    features = {m: torch.randn(batch, d) for m, d in input_dims.items()}
    present = {fusion.conditioning: absent(batch)}
    expected = torch.cat([features[m] for m in fusion.targets], dim=1)
    torch.testing.assert_close(fusion(features, present), expected)


def test_film_modulates_with_its_conditioning_modality() -> None:
    fusion = build("film", {"image": 4, "text": 3}, conditioning="text")
    features = {"image": torch.randn(6, 4), "text": torch.randn(6, 3)}
    assert fusion.output_dim == 4
    assert not torch.allclose(fusion(features), features["image"])


def test_film_names_a_missing_conditioning_modality() -> None:
    with pytest.raises(ConfigError, match=r"conditioning: 'text' is not a modality of this model \(audio, image\)"):
        build("film", {"image": 4, "audio": 3})


def test_film_needs_something_to_condition() -> None:
    with pytest.raises(ConfigError, match="only modality"):
        build("film", {"text": 4})


# -- tensor fusions ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tensor", "low-rank-tensor"])
def test_tensor_fusions_treat_an_absent_modality_as_the_zero_vector(name: str) -> None:
    """The appended 1 keeps the present modality's own terms: absent equals present-with-zeros."""
    fusion = build(name, {"image": 5, "text": 3}, dim=8)
    features = {"image": torch.randn(4, 5), "text": torch.randn(4, 3)}
    zeroed = {"image": features["image"], "text": torch.zeros(4, 3)}
    without_text = fusion(features, {"text": absent(4)})
    torch.testing.assert_close(without_text, fusion(zeroed))
    assert not torch.allclose(without_text, fusion(features))  # and the text does matter when present


def test_tensor_fusion_refuses_an_oversized_product_before_allocating() -> None:
    # 10,001^3 entries per sample: a following Linear would need ~10^14 weights, so reaching the error at all
    # shows the check comes first.
    with pytest.raises(ConfigError) as raised:
        build("tensor", {"audio": 10_000, "image": 10_000, "text": 10_000})
    message = str(raised.value)
    assert "1,000,300,030,001 entries per sample" in message
    assert "max_size=262,144" in message
    assert "project=63" in message and "low-rank-tensor" in message


def test_tensor_fusion_projection_suggested_by_the_error_fits() -> None:
    fusion = build("tensor", {"audio": 10_000, "image": 10_000, "text": 10_000}, project=63)
    assert fusion.product_size == 64**3 <= 262_144
    out = fusion({m: torch.randn(2, 10_000) for m in ("audio", "image", "text")})
    assert out.shape == (2, 128)


def test_tensor_fusion_max_size_is_configurable() -> None:
    with pytest.raises(ConfigError, match="more than max_size=100"):
        build("tensor", {"image": 10, "text": 10}, max_size=100)
    assert build("tensor", {"image": 10, "text": 10}, max_size=121).product_size == 121


def test_low_rank_tensor_factors_are_trained_and_saved() -> None:
    fusion = build("low-rank-tensor", {"image": 5, "text": 3}, rank=2, dim=4)
    names = {name for name, _ in fusion.named_parameters()}
    assert {"factors.image", "factors.text", "rank_weights", "bias"} <= names
    assert fusion.factors["image"].shape == (2, 6, 4)
    before = fusion.factors["text"].detach().clone()
    optimizer = torch.optim.SGD(fusion.parameters(), lr=0.1)
    fusion({"image": torch.randn(8, 5), "text": torch.randn(8, 3)}).square().mean().backward()
    optimizer.step()
    assert not torch.equal(before, fusion.factors["text"])
    assert "factors.text" in fusion.state_dict()


# -- products and sums ---------------------------------------------------------------------------------------


def test_bilinear_without_a_modality_uses_the_others_alone() -> None:
    """The product's identity, not zero: with text absent the output still depends on the image."""
    fusion = build("bilinear", {"image": 5, "text": 3}, rank=6, dim=4)
    text_absent = {"text": absent(3)}
    first = fusion({"image": torch.randn(3, 5), "text": torch.randn(3, 3)}, text_absent)
    second = fusion({"image": torch.randn(3, 5), "text": torch.randn(3, 3)}, text_absent)
    assert not torch.allclose(first, second)


def test_mean_and_gated_ignore_an_absent_modality_entirely() -> None:
    for name in ("mean", "gated"):
        fusion = build(name, {"image": 5, "text": 3}, dim=4)
        image = torch.randn(3, 5)
        with_zero_text = fusion({"image": image, "text": torch.zeros(3, 3)}, {"text": absent(3)})
        with_other_text = fusion({"image": image, "text": torch.randn(3, 3)}, {"text": absent(3)})
        torch.testing.assert_close(with_zero_text, with_other_text)


def test_mean_over_no_modality_is_zero_not_nan() -> None:
    fusion = build("mean", {"image": 5, "text": 3}, dim=4)
    out = fusion({"image": torch.randn(2, 5), "text": torch.randn(2, 3)}, {"image": absent(2), "text": absent(2)})
    assert torch.equal(out, torch.zeros(2, 4))


# -- attention plugin ----------------------------------------------------------------------------------------


@needs_attention
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_cross_attention_with_every_key_masked_falls_back_to_the_residual(mode: str) -> None:
    fusion = build("cross-attention", {"image": 6, "text": 5}, dim=8, heads=2)
    getattr(fusion, mode)()
    image = torch.randn(3, 4, 6, requires_grad=True)
    features = {"image": image, "text": torch.randn(3, 2, 5)}
    present = {"text": absent(3)}
    out = fusion(features, present)
    # Text is absent everywhere, so the image's queries have no key: what remains is LayerNorm(q_image).
    queries = fusion.tokens.projections["image"](image) + fusion.tokens.type_embeddings[0]
    expected = fusion.norms["image"](queries).mean(dim=1)
    torch.testing.assert_close(out, expected)
    out.sum().backward()
    assert torch.isfinite(image.grad).all()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in fusion.parameters())


@needs_attention
def test_cross_attention_never_asks_for_a_softmax_over_no_key() -> None:
    """Whether a fully masked row gives NaN depends on the torch version and attention backend (the weights
    path gives NaN in torch 2.14); the operator never hands attention such a row, so no version can."""
    fusion = build("cross-attention", {"audio": 4, "image": 6, "text": 5}, dim=8, heads=2)
    masks: list[torch.Tensor] = []
    for attention in fusion.attention.values():
        attention.register_forward_pre_hook(
            lambda module, args, kwargs: masks.append(kwargs["key_padding_mask"]), with_kwargs=True
        )
    present = {"audio": torch.tensor([False, True, False]), "image": torch.tensor([False, False, True]),
               "text": torch.tensor([False, False, False])}
    out = fusion({"audio": torch.randn(3, 4), "image": torch.randn(3, 2, 6), "text": torch.randn(3, 3, 5)}, present)
    assert torch.isfinite(out).all()
    assert len(masks) == 3 and all(not mask.all(dim=1).any() for mask in masks)


@needs_attention
def test_cross_attention_masks_padding_keys() -> None:
    fusion = build("cross-attention", {"image": 6, "text": 5}, dim=8, heads=2).eval()
    text = torch.randn(2, 4, 5)
    real = torch.tensor([[True, True, False, False], [True, True, True, False]])
    changed = text.clone()
    changed[~real] = 50.0
    image = torch.randn(2, 3, 6)
    with torch.no_grad():
        first = fusion({"image": image, "text": text}, None, {"text": real})
        second = fusion({"image": image, "text": changed}, None, {"text": real})
    torch.testing.assert_close(first, second)


@needs_attention
def test_cross_attention_takes_vectors_and_sequences_alike() -> None:
    fusion = build("cross-attention", {"image": 6, "text": 5}, dim=8, heads=2).eval()
    image, text = torch.randn(3, 6), torch.randn(3, 5)
    with torch.no_grad():
        as_vectors = fusion({"image": image, "text": text})
        as_one_token = fusion({"image": image.unsqueeze(1), "text": text.unsqueeze(1)})
    torch.testing.assert_close(as_vectors, as_one_token)


@needs_attention
def test_transformer_gives_a_sample_without_modalities_a_finite_constant() -> None:
    fusion = build("transformer", {"image": 6, "text": 5}, dim=8, heads=2, layers=1).eval()
    none = {"image": absent(2), "text": absent(2)}
    with torch.no_grad():
        out = fusion({"image": torch.randn(2, 3, 6), "text": torch.randn(2, 5)}, none)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[0], out[1])  # only the CLS token was there to attend to


@needs_attention
def test_modality_attention_weights_renormalise_over_the_modalities_present() -> None:
    fusion = build("modality-attention", {"audio": 4, "image": 6, "text": 5}, dim=8)
    features = {"audio": torch.randn(3, 4), "image": torch.randn(3, 6), "text": torch.randn(3, 5)}
    present = {
        "audio": torch.tensor([True, False, False]),
        "image": torch.tensor([True, True, False]),
        "text": torch.tensor([True, False, False]),
    }
    fused, weights = fusion.forward_with_weights(features, present)
    stacked = torch.stack([weights[m] for m in ("audio", "image", "text")], dim=1)
    torch.testing.assert_close(stacked.sum(dim=1), torch.tensor([1.0, 1.0, 0.0]))
    assert stacked[1].tolist() == [0.0, 1.0, 0.0]  # only the image: all the weight
    assert torch.equal(fused[2], torch.zeros(8))  # nothing present: zero, not NaN
    torch.testing.assert_close(fused[1], fusion.projections["image"](features["image"][1]))
    assert (stacked[0] > 0).all()


@needs_attention
def test_modality_attention_keeps_the_last_weights_for_inspection() -> None:
    fusion = build("modality-attention", {"image": 6, "text": 5}, dim=8)
    fusion({"image": torch.randn(4, 6), "text": torch.randn(4, 5)})
    assert set(fusion.last_weights) == {"image", "text"}
    assert fusion.last_weights["image"].shape == (4,) and not fusion.last_weights["image"].requires_grad
    torch.testing.assert_close(fusion.last_weights["image"] + fusion.last_weights["text"], torch.ones(4))


@needs_attention
@pytest.mark.parametrize("name", ["cross-attention", "modality-attention"])
def test_operators_that_need_two_modalities_say_so(name: str) -> None:
    with pytest.raises(ConfigError, match=r"one modality \(image\).*add a second encoder"):
        build(name, {"image": 6})


@needs_attention
@pytest.mark.parametrize("name", ["cross-attention", "transformer"])
def test_heads_must_divide_the_width(name: str) -> None:
    with pytest.raises(ConfigError, match="dim=10 is not divisible by heads=4"):
        build(name, {"image": 6, "text": 5}, dim=10, heads=4)


@needs_attention
def test_attention_plugin_registers_through_its_entry_point() -> None:
    from importlib import metadata

    points = [p for p in metadata.entry_points(group="transmodal") if p.dist and p.dist.name == "transmodal-attention"]
    assert [p.value for p in points] == ["transmodal_attention.plugin"]
    plugins = Plugins(entry_points=points)
    for name in ("cross-attention", "transformer", "modality-attention"):
        assert plugins.get("fusion", name).distribution == "transmodal-attention"

