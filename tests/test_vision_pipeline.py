"""The batched image pipeline as a vision backbone configures it: uint8 batches to normalised floats, with
augmentations that do what they say (a flip is a flip, a crop stays in bounds) and a resize for
backbones pretrained at another resolution."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("torchvision")
pytest.importorskip("transmodal_vision")

from transmodal.data import ModalitySpec  # noqa: E402
from transmodal.encoder import ImageInput  # noqa: E402
from transmodal.plugins import Plugins  # noqa: E402
from transmodal_vision import plugin as vision_plugin  # noqa: E402

PADDING = 4


@pytest.fixture(scope="module")
def encoder():
    plugins = Plugins(entry_points=[], extra_plugins=[("transmodal-vision", vision_plugin)])
    return plugins.get("backbone", "resnet18").build(ModalitySpec("image", "image", (3, 32, 32)), input_size=64)


def pipeline(encoder, crop_padding: int = 0, hflip: bool = False, size: int | None = None) -> ImageInput:
    """What the experiment builds for an image modality with this backbone."""
    return ImageInput(encoder.input_mean, encoder.input_std, crop_padding, hflip, size)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randint(1, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=generator)  # no zeros: padding shows


def unnormalise(encoder, x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(encoder.input_mean).view(1, 3, 1, 1)
    std = torch.tensor(encoder.input_std).view(1, 3, 1, 1)
    return torch.round((x * std + mean) * 255)


def test_uint8_batches_become_normalised_floats(encoder, images):
    out = pipeline(encoder).eval()(images)
    assert out.dtype == torch.float32 and out.shape == images.shape
    expected = (images.float() / 255 - torch.tensor(encoder.input_mean).view(1, 3, 1, 1)) / torch.tensor(
        encoder.input_std).view(1, 3, 1, 1)
    assert torch.allclose(out, expected, atol=1e-6)


def test_flip_is_a_horizontal_flip(encoder, images):
    torch.manual_seed(0)
    out = unnormalise(encoder, pipeline(encoder, hflip=True).train()(images))
    same = (out == images.float()).flatten(1).all(dim=1)
    flipped = (out == images.float().flip(-1)).flatten(1).all(dim=1)
    assert torch.all(same | flipped)
    assert 0 < flipped.sum() < len(images)  # both outcomes happen in a batch of 64


def test_crop_is_a_window_of_the_padded_image(encoder, images):
    torch.manual_seed(0)
    out = unnormalise(encoder, pipeline(encoder, crop_padding=PADDING).train()(images))
    padded = torch.nn.functional.pad(images.float(), (PADDING,) * 4)
    offsets = set()
    for index in range(len(images)):
        matches = [
            (top, left)
            for top in range(2 * PADDING + 1)
            for left in range(2 * PADDING + 1)
            if torch.equal(out[index], padded[index, :, top : top + 32, left : left + 32])
        ]
        assert matches, f"sample {index} is not a 32x32 window of its zero-padded image"
        offsets.add(matches[0])
    assert len(offsets) > 10  # each sample gets its own offset


def test_evaluation_applies_no_augmentation(encoder, images):
    augmenting = pipeline(encoder, crop_padding=PADDING, hflip=True).eval()
    assert torch.equal(augmenting(images), pipeline(encoder).eval()(images))


def test_resize_to_the_backbone_input_size(encoder, images):
    assert encoder.input_size == 64
    out = pipeline(encoder, size=encoder.input_size).eval()(images)
    assert out.shape == (64, 3, 64, 64)
    flat = torch.full((1, 3, 32, 32), 128, dtype=torch.uint8)
    resized = pipeline(encoder, size=encoder.input_size).eval()(flat)
    assert torch.allclose(unnormalise(encoder, resized), torch.full((1, 3, 64, 64), 128.0))
