"""Contracts of the core's built-in components, the model, the input pipeline and the batch loader."""

from __future__ import annotations

import pytest
import torch

from transmodal.data import PAD_ID, BatchLoader, ModalitySpec
from transmodal.encoder import ImageInput, random_crop_flip
from transmodal.plugins import get_plugins
from transmodal.tokenizer import WordTokenizerParams, build_word_tokenizer


def build(kind: str, name: str, *context, **params):
    return get_plugins().get(kind, name).build(*context, **params)


def assert_every_parameter_gets_a_gradient(module: torch.nn.Module, loss: torch.Tensor) -> None:
    loss.backward()
    missing = [n for n, p in module.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert missing == []


@pytest.mark.parametrize("tokens", [False, True])
def test_small_cnn_contract(tokens: bool):
    encoder = build("encoder", "small-cnn", ModalitySpec("image", "image", shape=(3, 32, 32)),
                    channels=[4, 8], tokens=tokens)
    output = encoder(torch.randn(5, 3, 32, 32))
    expected = (5, 8 * 8, encoder.out_dim) if tokens else (5, encoder.out_dim)
    assert output.shape == expected and encoder.out_dim == 8
    assert [name for name, _ in encoder.layer_groups()] == ["block1", "block2"]
    assert_every_parameter_gets_a_gradient(encoder, output.square().mean())


def test_mlp_contract():
    encoder = build("encoder", "mlp", ModalitySpec("x", "vector", shape=(6,)), hidden=[7, 3])
    output = encoder(torch.randn(4, 6))
    assert output.shape == (4, 3) and encoder.out_dim == 3
    assert [name for name, _ in encoder.layer_groups()] == ["layer1", "layer2"]
    assert_every_parameter_gets_a_gradient(encoder, output.square().mean())


def test_bag_of_words_ignores_padding_and_trains():
    encoder = build("encoder", "bow", ModalitySpec("text", "text", vocab_size=20), embedding_dim=8, out_dim=5)
    ids = torch.tensor([[3, 4, 5, PAD_ID, PAD_ID]])
    assert torch.allclose(encoder(ids), encoder(ids[:, :3]))
    output = encoder(torch.randint(1, 20, (6, 9)))
    assert output.shape == (6, 5)
    assert_every_parameter_gets_a_gradient(encoder, output.square().mean())


def test_encoder_for_the_wrong_modality_kind_says_so():
    from transmodal.errors import ConfigError

    with pytest.raises(ConfigError, match="encoder 'bow' takes text input, but modality 'image' is image"):
        build("encoder", "bow", ModalitySpec("image", "image", shape=(3, 32, 32)))


@pytest.mark.parametrize("hidden", [0, 16])
def test_linear_head(hidden: int):
    head = build("head", "linear", 10, 4, hidden=hidden)
    output = head(torch.randn(3, 10))
    assert output.shape == (3, 4)
    assert_every_parameter_gets_a_gradient(head, output.square().mean())


def test_word_tokenizer_round_trip_and_unknown_words():
    params = WordTokenizerParams(max_length=6)
    tokenizer = build_word_tokenizer(params, ["A calm red circle.", "An angry<br />square!"])
    restored = build_word_tokenizer(params, [], state=tokenizer.state())
    texts = ["a calm square", "an unseen word, here and there and more"]
    assert torch.equal(tokenizer.encode_batch(texts), restored.encode_batch(texts))
    ids = tokenizer.encode_batch(texts)
    assert ids.shape == (2, 6)  # truncated at max_length
    assert ids[1, 1].item() == 1  # unseen word -> <unk>
    assert "br" not in tokenizer.vocabulary()  # HTML line breaks removed


def test_image_input_normalises_and_flips():
    images = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8)
    pipeline = ImageInput(mean=(0.5,) * 3, std=(0.25,) * 3, hflip=True)
    pipeline.eval()
    expected = (images.float() / 255 - 0.5) / 0.25
    assert torch.allclose(pipeline(images), expected, atol=1e-5)  # no augmentation in eval mode
    pipeline.train()
    flipped = pipeline(images)
    same = torch.isclose(flipped, expected, atol=1e-5).flatten(1).all(1)
    mirrored = torch.isclose(flipped, expected.flip(-1), atol=1e-5).flatten(1).all(1)
    assert bool((same | mirrored).all()) and 10 < int(mirrored.sum()) < 54  # every sample one or the other


def test_random_crop_stays_in_bounds_and_shifts_content():
    image = torch.arange(36.0).view(1, 1, 6, 6).repeat(200, 1, 1, 1)
    cropped = random_crop_flip(image, padding=2, hflip=False)
    assert cropped.shape == image.shape
    # Each crop is the original shifted by (dy, dx) in [-2, 2] with zeros coming in: find the shift and check.
    padded = torch.nn.functional.pad(image[:1], (2, 2, 2, 2))[0, 0]
    for sample in cropped[:, 0]:
        matches = [(dy, dx) for dy in range(5) for dx in range(5) if torch.equal(padded[dy:dy + 6, dx:dx + 6], sample)]
        assert matches
    assert len({tuple(s.flatten().tolist()) for s in cropped[:, 0]}) > 10


def test_image_input_resizes_for_backbones_pretrained_at_another_size():
    pipeline = ImageInput(size=16).eval()
    assert pipeline(torch.zeros(2, 3, 8, 8, dtype=torch.uint8)).shape == (2, 3, 16, 16)


def test_per_image_normalisation_removes_brightness_contrast_and_colour_cast():
    pipeline = ImageInput(per_image=True).eval()
    images = torch.randint(0, 64, (4, 3, 8, 8), dtype=torch.uint8)
    out = pipeline(images)
    assert out.mean(dim=(2, 3)).abs().max() < 1e-5
    assert torch.allclose(out.var(dim=(2, 3), unbiased=False), torch.ones(4, 3), atol=1e-3)
    recast = images * 2 + torch.tensor([0, 40, 100], dtype=torch.uint8).view(1, 3, 1, 1)  # stays below 256
    assert torch.allclose(pipeline(recast), out, atol=1e-3)  # up to the epsilon under the variance


def test_invert_flips_polarity_in_training_only():
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    always = ImageInput(invert=1.0)
    assert torch.allclose(always.train()(images), ImageInput()(255 - images))
    assert torch.allclose(always.eval()(images), ImageInput()(images))
    half = ImageInput(invert=0.5).train()(torch.zeros(400, 3, 1, 1, dtype=torch.uint8))[:, 0]
    assert 100 < int((half > 0).sum()) < 300  # about half the images inverted, each whole


def test_model_handles_missing_and_absent_modalities(tiny):
    from transmodal.experiment import assemble

    assembled = assemble(tiny())
    model = assembled.model.eval()
    batch = next(assembled.data.evaluation["source/val"].epoch())
    full = model(batch)
    without_text = model({k: v for k, v in batch.items() if k != "text"})
    marked_absent = model(batch, present={"text": torch.zeros(len(batch["label"]), dtype=torch.bool)})
    assert full.logits.shape == (len(batch["label"]), 9)
    assert torch.isfinite(without_text.logits).all()
    assert torch.allclose(without_text.logits, marked_absent.logits, atol=1e-6)
    assert not torch.allclose(full.logits, without_text.logits)


def test_modality_dropout_never_drops_every_modality(tiny):
    from transmodal.experiment import assemble

    model = assemble(tiny("model.modality_dropout=0.9")).model.train()
    present = model._drop_modalities({}, 1000, torch.device("cpu"))
    kept = torch.stack([present["image"], present["text"]], dim=1)
    assert kept.any(dim=1).all()
    assert 0.05 < present["image"].float().mean() < 0.6


def test_batch_loader_order_depends_only_on_seed_and_epoch():
    columns = {"x": torch.arange(10), "label": torch.arange(10)}
    loader = BatchLoader(columns, batch_size=4, shuffle=True, drop_last=True, seed=3)
    first = [b["x"].tolist() for b in loader.epoch(1)]
    assert first == [b["x"].tolist() for b in BatchLoader(columns, 4, True, True, seed=3).epoch(1)]
    assert first != [b["x"].tolist() for b in loader.epoch(2)]
    assert len(first) == len(loader) == 2
    stream = loader.stream(start=3)  # the 4th batch overall: epoch 1, batch 1
    assert next(stream)["x"].tolist() == first[1]


def test_batch_loader_trims_text_padding_and_buckets_by_length():
    lengths = torch.tensor([1, 8, 2, 7, 3, 6, 4, 5] * 4)
    ids = (torch.arange(8).expand(32, 8) < lengths[:, None]).long() * 5
    loader = BatchLoader({"text": ids, "label": torch.zeros(32, dtype=torch.long)}, 4, shuffle=True,
                         seed=0, text_keys=("text",), bucket=True)
    widths = []
    for batch in loader.epoch(0):
        widths.append(batch["text"].shape[1])
        assert batch["text"].shape[1] == int((batch["text"] != PAD_ID).sum(1).max())
    # bucketed: the padding in the batches is far below the unsorted worst case of 8 columns each
    assert sum(widths) < 8 * len(widths) * 0.8


def test_late_fusion_averages_probabilities_over_present_modalities(tiny):
    from transmodal.experiment import assemble
    from transmodal.model import LateFusionHeads

    model = assemble(tiny("model.late_fusion=true")).model.eval()
    assert isinstance(model.head, LateFusionHeads) and sorted(model.head.heads) == ["image", "text"]
    features = {"image": torch.randn(4, model.encoders["image"].out_dim),
                "text": torch.randn(4, model.encoders["text"].out_dim)}
    image_probs = model.head.heads["image"](features["image"]).softmax(1)
    text_probs = model.head.heads["text"](features["text"]).softmax(1)
    both = model.head(features, None, {}).exp()
    assert torch.allclose(both, (image_probs + text_probs) / 2, atol=1e-5)
    present = {"image": torch.tensor([True, True, False, False]), "text": torch.tensor([True, False, True, False])}
    mixed = model.head(features, present, {}).exp()
    assert torch.allclose(mixed[1], image_probs[1], atol=1e-5) and torch.allclose(mixed[2], text_probs[2], atol=1e-5)
    assert torch.allclose(mixed[3], torch.ones(9))  # no modality: exp(0), a flat score, not NaN


def test_late_fusion_trains_end_to_end(tiny):
    import transmodal

    summary, _ = transmodal.train(tiny("model.late_fusion=true", "trainer.epochs=1"), quiet=True)
    assert 0.0 <= summary["final"]["target/test"]["accuracy"] <= 1.0
