"""The encoder contract: one modality's batch tensor in, features out.

An encoder returns (B, D) features, or (B, T, D) tokens when ``returns_tokens`` is set (for attention
fusion). ``layer_groups`` lists its layers from input to output; freezing, gradual unfreezing and
layer-wise learning rates work on these groups.
"""

from __future__ import annotations

import torch
from torch import nn


class Encoder(nn.Module):
    """Base class of encoders and backbones. Subclasses set ``out_dim`` and implement ``forward``."""

    out_dim: int
    returns_tokens: bool = False

    def layer_groups(self) -> list[tuple[str, nn.Module]]:
        """(name, module) pairs from input to output. Default: the direct children in order."""
        return list(self.named_children())

    def token_mask(self, inputs: torch.Tensor) -> torch.Tensor | None:
        """For token outputs: (B, T) True where a token is real. None means every token is real."""
        return None


class ImageInput(nn.Module):
    """uint8 images to normalised floats on the training device, with batched augmentation in training.

    Whole-batch tensor ops replace per-sample PIL transforms: random crop (zero padding) and horizontal flip as
    one gather on the uint8 batch, random inversion, optional resize, then normalisation in place with a
    precomputed scale and shift, so the float batch is written only once or twice.

    ``per_image`` standardises each channel of each image by its own mean and standard deviation after that, in
    training and evaluation alike: the instance-normalised input with which Shu et al. (2018, "A DIRT-T Approach
    to Unsupervised Domain Adaptation") report their digit shifts, and the per-image standardisation of French et
    al. (2018, "Self-ensembling for visual domain adaptation").
    """

    def __init__(
        self,
        mean: tuple[float, ...] = (0.5, 0.5, 0.5),
        std: tuple[float, ...] = (0.5, 0.5, 0.5),
        crop_padding: int = 0,
        hflip: bool = False,
        size: int | None = None,
        invert: float = 0.0,
        per_image: bool = False,
    ) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        # (x / 255 - mean) / std == x * scale - shift
        self.register_buffer("scale", 1.0 / (255.0 * self.std), persistent=False)
        self.register_buffer("shift", self.mean / self.std, persistent=False)
        self.crop_padding = crop_padding
        self.hflip = hflip
        self.size = size
        self.invert = invert
        self.per_image = per_image

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.training and (self.crop_padding > 0 or self.hflip):
            images = random_crop_flip(images, self.crop_padding, self.hflip)
        x = images.to(torch.float32, copy=True)
        if images.dtype != torch.uint8:  # floats in [0, 1]
            x.mul_(255.0)
        if self.training and self.invert > 0:
            inverted = torch.rand(x.shape[0], 1, 1, 1, device=x.device) < self.invert
            x = torch.where(inverted, 255.0 - x, x)
        if self.size is not None and x.shape[-1] != self.size:
            x = nn.functional.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        x = x.mul_(self.scale).sub_(self.shift)
        if self.per_image:
            x = nn.functional.instance_norm(x, eps=1e-5)
        return x


def random_crop_flip(images: torch.Tensor, padding: int, hflip: bool) -> torch.Tensor:
    """Per sample: pad by ``padding`` with zeros, cut a random window of the original size, and mirror it
    with probability 1/2 if ``hflip``. One gather for the whole batch, in the input's dtype."""
    batch, channels, height, width = images.shape
    device = images.device
    padded = nn.functional.pad(images, (padding, padding, padding, padding)) if padding else images
    offsets = torch.randint(0, 2 * padding + 1, (2, batch), device=device)
    columns = torch.arange(width, device=device).expand(batch, width)
    if hflip:
        flip = torch.rand(batch, device=device) < 0.5
        columns = torch.where(flip.view(-1, 1), columns.flip(-1), columns)
    rows = (offsets[0].view(batch, 1) + torch.arange(height, device=device)).view(batch, 1, height, 1)
    cols = (offsets[1].view(batch, 1) + columns).view(batch, 1, 1, width)
    index = (rows * (width + 2 * padding) + cols).expand(batch, channels, height, width).reshape(batch, channels, -1)
    return padded.flatten(2).gather(2, index).view(batch, channels, height, width)
