"""Rendering: each glyph of each font is drawn once by FreeType (through Pillow); the samples of a split are then
placed, inked and degraded as whole batches of tensors, with no per-sample Python.

A sample is one character, centred with jitter, scaled, rotated and sheared, on a background of its domain, in an
ink of its domain, then blurred and noised as the domain's capture would. ``signs`` also shows the neighbouring
characters of a house number, cut by the frame, as photographed digits are (SVHN).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont
from torch.nn import functional as F

ATLAS_SIZE = 64  # glyphs are drawn at this size, then resampled twice the output size and averaged down
GLYPH_EXTENT = 0.75  # a glyph's taller side, as a fraction of the atlas tile


def glyph_atlas(fonts: list[Path], characters: str, size: int = ATLAS_SIZE) -> torch.Tensor:
    """(fonts, characters, size, size) ink coverage in [0, 1], each glyph centred on its ink and scaled so that
    its taller side is ``GLYPH_EXTENT`` of the tile (so every font's digits share one height)."""
    atlas = torch.zeros(len(fonts), len(characters), size, size)
    for f, path in enumerate(fonts):
        font = ImageFont.truetype(str(path), size=2 * size)
        for k, character in enumerate(characters):
            canvas = Image.new("L", (4 * size, 4 * size), 0)
            ImageDraw.Draw(canvas).text((size, size), character, fill=255, font=font)
            box = canvas.getbbox()
            if box is None:
                raise ValueError(f"font {path.name} has no glyph for {character!r}")
            glyph = canvas.crop(box)
            scale = GLYPH_EXTENT * size / max(glyph.size)
            width, height = max(1, round(glyph.size[0] * scale)), max(1, round(glyph.size[1] * scale))
            glyph = glyph.resize((width, height), Image.LANCZOS)
            tile = Image.new("L", (size, size), 0)
            tile.paste(glyph, ((size - width) // 2, (size - height) // 2))
            atlas[f, k] = torch.frombuffer(bytearray(tile.tobytes()), dtype=torch.uint8).view(size, size) / 255.0
    return atlas


@dataclass(frozen=True)
class DomainStyle:
    """How a domain places, inks and degrades its glyphs. Ranges are (low, high), sampled uniformly per sample."""

    scale: tuple[float, float]  # glyph height relative to the frame's
    rotation: float  # degrees, +-
    shear: float  # +-
    shift: float  # centre jitter, fraction of the frame, +-
    background: str  # paper | aged | ruled | plate
    ink: str  # black | faded | pen | contrast
    stroke: tuple[float, float, float]  # probabilities of thinner, unchanged, bolder strokes
    blur: tuple[float, float]  # Gaussian sigma in output pixels
    noise: tuple[float, float]  # standard deviation of pixel noise
    neighbours: bool = False  # neighbouring characters at both sides, cut by the frame


STYLES: dict[str, DomainStyle] = {
    "print": DomainStyle(scale=(0.7, 0.85), rotation=4, shear=0.05, shift=0.04, background="paper", ink="black",
                         stroke=(0.0, 1.0, 0.0), blur=(0.0, 0.3), noise=(0.0, 0.02)),
    "scan": DomainStyle(scale=(0.65, 0.85), rotation=8, shear=0.15, shift=0.06, background="aged", ink="faded",
                        stroke=(0.3, 0.3, 0.4), blur=(0.5, 1.1), noise=(0.03, 0.08)),
    "handwritten": DomainStyle(scale=(0.6, 0.9), rotation=15, shear=0.3, shift=0.08, background="ruled", ink="pen",
                               stroke=(0.0, 0.4, 0.6), blur=(0.2, 0.6), noise=(0.01, 0.04)),
    "signs": DomainStyle(scale=(0.6, 0.8), rotation=10, shear=0.2, shift=0.05, background="plate", ink="contrast",
                         stroke=(0.0, 0.7, 0.3), blur=(0.4, 1.4), noise=(0.02, 0.06), neighbours=True),
}


def render(atlas: torch.Tensor, labels: torch.Tensor, style: DomainStyle, image_size: int,
           generator: torch.Generator, chunk: int = 1024) -> torch.Tensor:
    """(N, 3, image_size, image_size) uint8 images of the characters ``labels`` (indices into the atlas's
    characters) in fonts drawn at random from the atlas, in ``style``."""
    images = torch.empty(len(labels), 3, image_size, image_size, dtype=torch.uint8)
    for start in range(0, len(labels), chunk):
        part = labels[start : start + chunk]
        images[start : start + chunk] = _render_chunk(atlas, part, style, image_size, generator)
    return images


def _uniform(generator: torch.Generator, n: int, low: float, high: float, *shape: int) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, *shape, generator=generator)


def _render_chunk(atlas: torch.Tensor, labels: torch.Tensor, style: DomainStyle, image_size: int,
                  generator: torch.Generator) -> torch.Tensor:
    n, fonts, characters = len(labels), atlas.shape[0], atlas.shape[1]
    font = torch.randint(fonts, (n,), generator=generator)
    grid = _placement(n, style, 2 * image_size, generator)
    coverage = F.grid_sample(atlas[font, labels].unsqueeze(1), grid, align_corners=False)
    if style.neighbours:
        # Neighbours of the same font, one glyph pitch to each side, in the same placement.
        for side in (-1.0, 1.0):
            other = torch.randint(characters, (n,), generator=generator)
            pitch = _uniform(generator, n, 1.05, 1.3)
            shifted = grid.clone()
            shifted[..., 0] += side * pitch.view(n, 1, 1) * 2 * GLYPH_EXTENT * 0.62
            coverage = torch.maximum(coverage, F.grid_sample(atlas[font, other].unsqueeze(1), shifted,
                                                             align_corners=False))
    coverage = _stroke(coverage, style.stroke, generator)
    coverage = F.avg_pool2d(coverage, 2)  # anti-aliasing: rendered at twice the size
    background = _background(style.background, n, image_size, generator)
    ink, opacity = _ink(style.ink, background, generator)
    alpha = coverage * opacity.view(n, 1, 1, 1)
    image = background * (1 - alpha) + ink.view(n, 3, 1, 1) * alpha
    image = _blur(image, _uniform(generator, n, *style.blur))
    image = image + _uniform(generator, n, *style.noise).view(n, 1, 1, 1) * torch.randn(
        image.shape, generator=generator)
    return (image.clamp(0, 1) * 255).round().to(torch.uint8)


def _placement(n: int, style: DomainStyle, size: int, generator: torch.Generator) -> torch.Tensor:
    """Sampling grid (n, size, size, 2) that maps each output pixel to its point in the glyph tile."""
    scale = _uniform(generator, n, *style.scale) / GLYPH_EXTENT  # tile units per frame
    angle = _uniform(generator, n, -style.rotation, style.rotation) * math.pi / 180
    shear = _uniform(generator, n, -style.shear, style.shear)
    shift = _uniform(generator, n, -style.shift, style.shift, 2) * 2
    cos, sin = torch.cos(angle), torch.sin(angle)
    # forward map A = scale * R(angle) @ [[1, shear], [0, 1]]; the grid needs its inverse
    forward = torch.stack([torch.stack([cos, cos * shear - sin], 1), torch.stack([sin, sin * shear + cos], 1)], 1)
    forward = forward * scale.view(n, 1, 1)
    inverse = torch.linalg.inv(forward)
    theta = torch.cat([inverse, -(inverse @ shift.unsqueeze(2))], dim=2)
    return F.affine_grid(theta, [n, 1, size, size], align_corners=False)


def _stroke(coverage: torch.Tensor, probabilities: tuple[float, float, float],
            generator: torch.Generator) -> torch.Tensor:
    """Thinner (worn, faded ink), unchanged or bolder (ink bleed, felt pen) strokes, chosen per sample."""
    thinner = -F.max_pool2d(-coverage, 3, stride=1, padding=1)
    bolder = F.max_pool2d(coverage, 3, stride=1, padding=1)
    choice = torch.multinomial(torch.tensor(probabilities), len(coverage), replacement=True,
                               generator=generator).view(-1, 1, 1, 1)
    return torch.where(choice == 0, thinner, torch.where(choice == 2, bolder, coverage))


def _smooth_field(n: int, channels: int, size: int, cells: int, generator: torch.Generator) -> torch.Tensor:
    """Low-frequency random field in [-1, 1]: uneven lighting, paper stains."""
    coarse = torch.rand(n, channels, cells, cells, generator=generator) * 2 - 1
    return F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=True).clamp(-1, 1)


def _background(kind: str, n: int, size: int, generator: torch.Generator) -> torch.Tensor:
    if kind == "paper":
        tone = _uniform(generator, n, 0.9, 1.0).view(n, 1, 1, 1)
        return (tone + 0.02 * _smooth_field(n, 1, size, 3, generator)).expand(n, 3, size, size)
    if kind == "aged":
        base = torch.tensor([0.86, 0.8, 0.64]).view(1, 3, 1, 1) + 0.06 * torch.randn(n, 1, 1, 1, generator=generator)
        lighting = 0.12 * _smooth_field(n, 1, size, 3, generator)
        stains = 0.05 * _smooth_field(n, 1, size, 6, generator)
        return base + lighting + stains
    if kind == "ruled":
        paper = _uniform(generator, n, 0.92, 1.0).view(n, 1, 1, 1).expand(n, 3, size, size).clone()
        spacing = _uniform(generator, n, 0.28, 0.4) * size
        phase = _uniform(generator, n, 0, 1) * spacing
        rows = torch.arange(size).view(1, size)
        distance = torch.remainder(rows - phase.view(n, 1), spacing.view(n, 1))
        line = (distance < 1.0).float().view(n, 1, size, 1)
        rule = torch.tensor([0.55, 0.7, 0.95]).view(1, 3, 1, 1)
        return paper * (1 - 0.6 * line) + rule * 0.6 * line
    if kind == "plate":
        colour = torch.rand(n, 3, 1, 1, generator=generator)
        return colour + 0.1 * _smooth_field(n, 1, size, 2, generator)
    raise ValueError(f"unknown background {kind!r}")


def _luminance(rgb: torch.Tensor) -> torch.Tensor:
    return (rgb * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, *([1] * (rgb.dim() - 2)))).sum(1)


def _ink(kind: str, background: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 3) ink colours and (n,) opacities."""
    n = len(background)
    if kind == "black":
        return _uniform(generator, n, 0.0, 0.15).view(n, 1).expand(n, 3), torch.ones(n)
    if kind == "faded":
        brown = torch.tensor([0.25, 0.18, 0.12]).view(1, 3) * _uniform(generator, n, 0.3, 1.2).view(n, 1)
        return brown, _uniform(generator, n, 0.55, 0.95)
    if kind == "pen":
        pens = torch.tensor([[0.1, 0.15, 0.55], [0.05, 0.05, 0.1], [0.2, 0.25, 0.75], [0.6, 0.1, 0.12]])
        choice = torch.multinomial(torch.tensor([0.45, 0.3, 0.15, 0.1]), n, replacement=True, generator=generator)
        return pens[choice] + 0.05 * torch.randn(n, 3, generator=generator), _uniform(generator, n, 0.75, 1.0)
    if kind == "contrast":
        # Light-on-dark or dark-on-light at random, always at least 0.35 apart in luminance from the plate.
        plate = _luminance(background.mean(dim=(2, 3), keepdim=True)).view(n)
        target = torch.where(plate > 0.5, _uniform(generator, n, 0.0, 0.15), _uniform(generator, n, 0.85, 1.0))
        hue = torch.rand(n, 3, generator=generator)
        colour = hue + (target - _luminance(hue.view(n, 3, 1, 1)).view(n)).view(n, 1)
        return colour.clamp(0, 1), torch.ones(n)
    raise ValueError(f"unknown ink {kind!r}")


def _blur(images: torch.Tensor, sigma: torch.Tensor, radius: int = 3) -> torch.Tensor:
    """Separable Gaussian blur with one sigma per image (grouped convolution: one pass for the batch)."""
    n, channels, height, width = images.shape
    offsets = torch.arange(-radius, radius + 1, dtype=images.dtype)
    kernel = torch.exp(-offsets.view(1, -1) ** 2 / (2 * sigma.clamp(min=1e-3).view(-1, 1) ** 2))
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(channels, 0)
    flat = F.pad(images.reshape(1, n * channels, height, width), (radius,) * 4, mode="replicate")
    flat = F.conv2d(flat, kernel.view(n * channels, 1, 1, -1), groups=n * channels)
    flat = F.conv2d(flat, kernel.view(n * channels, 1, -1, 1), groups=n * channels)
    return flat.view(n, channels, height, width)
