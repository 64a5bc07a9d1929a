"""Deterministic in-memory renderer for the "synthetic-shapes" paired image/caption dataset.

The class is ``attribute x shape``: the shape is visible only in the image and the attribute
word appears only in the caption, so neither modality alone can solve the task and fusion is
required. The "target" domain shifts the image statistics (textured, noisy, low-contrast
backgrounds and a shifted palette), giving domain adaptation something real to recover. Captions
follow the same templates in both domains: a caption shift would put unknown words in front of a
vocabulary fitted on the source, which no alignment of features can recover, and it gave the domain
discriminator of adversarial strategies a trivial cue that stalled the image pathway. Everything is drawn
from one ``torch.Generator`` so the same seed always yields identical tensors and captions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
ATTRIBUTES: tuple[str, ...] = ("calm", "angry", "sleepy")
CLASS_NAMES: tuple[str, ...] = tuple(f"{a} {s}" for s in SHAPES for a in ATTRIBUTES)
DOMAINS = ("source", "target")

# Canonical palette (RGB in [0, 1]); colour is a nuisance factor, drawn independently of the class.
_COLOUR_NAMES: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange", "cyan")
_PALETTE = torch.tensor(
    [
        [0.90, 0.15, 0.15],
        [0.15, 0.80, 0.20],
        [0.20, 0.35, 0.95],
        [0.95, 0.85, 0.15],
        [0.80, 0.20, 0.85],
        [0.98, 0.55, 0.10],
        [0.15, 0.85, 0.90],
    ]
)

# Half-extents in units of the sampled size, chosen so the three shapes have equal area
# (size must not leak the class): circle radius 1, square half-side sqrt(pi)/2,
# triangle circumradius sqrt(4 pi / (3 sqrt 3)).
_SQUARE_HALF = math.sqrt(math.pi) / 2
_TRIANGLE_R = math.sqrt(4 * math.pi / (3 * math.sqrt(3)))
_TRIANGLE_NORMALS = torch.tensor(
    [[math.cos(a), math.sin(a)] for a in (math.pi / 2 + k * 2 * math.pi / 3 for k in range(3))]
)

# Target-domain shift strength, tuned so a source-only CNN drops clearly but stays above chance.
_TARGET_BASE = (0.1, 0.4)
_STRIPE_AMP = 0.08
_GRADIENT_AMP = 0.08
_BLOB_AMP = 0.1
_NOISE_STD = 0.03
_CONTRAST = (0.8, 0.95)

# Pixels per rendering chunk: bounds memory (about 16 MB per intermediate) for any n and size.
_CHUNK_PIXELS = 4096 * 32 * 32

# Circle-equivalent radius range in [-1, 1] image units; captions name its tertiles.
_SIZE_RANGE = (0.35, 0.55)
_SIZE_WORDS = ("small", "medium", "large")

_TEMPLATES: tuple[str, ...] = (
    "a {size} {colour} thing that looks {attr} sits {pos}.",
    "this {colour} item {pos} appears {attr} to me.",
    "there is something {attr} and {colour} {pos}.",
    "an image with a {size} {attr} figure {pos}.",
    "the {colour} object {pos} feels {attr} today.",
)


@dataclass(frozen=True)
class RenderedSplit:
    """One generated split; ``labels[i] == shape * len(ATTRIBUTES) + attribute``."""

    images: torch.Tensor  # uint8 (N, 3, S, S)
    captions: list[str]
    labels: torch.Tensor  # int64 (N,)


def render_split(domain: str, n: int, seed: int, image_size: int = 32, caption_shape: bool = False) -> RenderedSplit:
    """Render ``n`` paired samples of ``domain``; identical output for identical arguments. ``caption_shape``
    ends each caption with a sentence naming the shape ("it is a circle."), drawing nothing more from the
    generator, so images, labels and the rest of each caption stay as without it."""
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; valid domains: {', '.join(DOMAINS)}")
    g = torch.Generator().manual_seed(seed)
    target = domain == "target"

    shape = torch.randint(len(SHAPES), (n,), generator=g)
    attr = torch.randint(len(ATTRIBUTES), (n,), generator=g)
    colour = torch.randint(len(_PALETTE), (n,), generator=g)
    lo, hi = _SIZE_RANGE
    size = lo + (hi - lo) * torch.rand(n, generator=g)
    # Keep the triangle's (largest) circumradius mostly inside the frame.
    margin = (1 - 0.9 * _TRIANGLE_R * size).unsqueeze(1)
    centre = (2 * torch.rand(n, 2, generator=g) - 1) * margin
    angle = 2 * math.pi * torch.rand(n, generator=g)

    background = _target_background if target else _source_background
    images = torch.empty(n, 3, image_size, image_size, dtype=torch.uint8)
    # Big (N, 3, S, S) tensors are updated in place: allocation, not arithmetic, dominates here.
    chunk = max(1, _CHUNK_PIXELS // image_size**2)
    for start in range(0, n, chunk):
        sl = slice(start, start + chunk)
        m = len(shape[sl])
        alpha = _shape_alpha(shape[sl], centre[sl], size[sl], angle[sl], image_size)
        fg = _shape_colours(colour[sl], target, g)
        img = background(m, image_size, g).lerp_(fg[:, :, None, None], alpha)
        if target:
            _degrade_(img, g)
        images[sl] = img.clamp_(0, 1).mul_(255).round_()

    captions = _captions(attr, colour, size, centre, g)
    if caption_shape:
        captions = [f"{caption} it is a {SHAPES[k]}." for caption, k in zip(captions, shape.tolist())]
    labels = shape * len(ATTRIBUTES) + attr
    return RenderedSplit(images=images, captions=captions, labels=labels)


def _grid(s: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-centre coordinates (y, x), each (S, S), in [-1, 1]."""
    coords = (torch.arange(s, dtype=torch.float32) + 0.5) * (2 / s) - 1
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    return y, x


def _shape_alpha(
    shape: torch.Tensor, centre: torch.Tensor, size: torch.Tensor, angle: torch.Tensor, s: int
) -> torch.Tensor:
    """Anti-aliased coverage (N, 1, S, S) from per-shape signed distances on a shared grid."""
    y, x = _grid(s)
    dx = x - centre[:, 0, None, None]
    dy = y - centre[:, 1, None, None]
    cos, sin = angle.cos()[:, None, None], angle.sin()[:, None, None]
    r = size[:, None, None]
    u = torch.addcmul(cos * dx, sin, dy).div_(r)
    v = torch.addcmul(cos * dy, -sin, dx).div_(r)

    dist = torch.empty_like(u)
    circle, square, triangle = (shape == k for k in range(3))
    dist[circle] = torch.hypot(u[circle], v[circle]) - 1
    dist[square] = torch.maximum(u[square].abs(), v[square].abs()) - _SQUARE_HALF
    uv = torch.stack((u[triangle], v[triangle]), dim=-1)
    dist[triangle] = (uv @ _TRIANGLE_NORMALS.T).amax(dim=-1) - _TRIANGLE_R / 2
    # Distance in pixels -> one-pixel soft edge, so small shapes do not alias into each other.
    pixels = dist.mul_(r * (s / 2))
    return pixels.neg_().add_(0.5).clamp_(0, 1).unsqueeze(1)


def _shape_colours(colour: torch.Tensor, target: bool, g: torch.Generator) -> torch.Tensor:
    """Palette colour per sample with jitter; target rotates hue partly and desaturates."""
    palette = _PALETTE
    if target:
        palette = 0.6 * palette + 0.4 * palette.roll(1, dims=1)
        palette = 0.7 * palette + 0.3 * palette.mean(dim=1, keepdim=True)
    jitter = 0.1 * torch.rand(colour.shape[0], 3, generator=g) - 0.05
    return (palette[colour] + jitter).clamp(0, 1)


def _source_background(n: int, s: int, g: torch.Generator) -> torch.Tensor:
    """Near-uniform dark, slightly tinted background with faint noise."""
    base = 0.05 + 0.2 * torch.rand(n, 1, 1, 1, generator=g)
    tint = 0.06 * torch.rand(n, 3, 1, 1, generator=g) - 0.03
    return torch.randn(n, 3, s, s, generator=g).mul_(0.01).add_(base + tint)


def _target_background(n: int, s: int, g: torch.Generator) -> torch.Tensor:
    """Mid-tone background of random-colour stripes, a gradient and soft blobs."""
    y, x = _grid(s)

    def direction() -> tuple[torch.Tensor, torch.Tensor]:
        theta = 2 * math.pi * torch.rand(n, 1, 1, 1, generator=g)
        return theta.cos(), theta.sin()

    def colour_amp(scale: float) -> torch.Tensor:
        return scale * (2 * torch.rand(n, 3, 1, 1, generator=g) - 1)

    lo, hi = _TARGET_BASE
    base = lo + (hi - lo) * torch.rand(n, 3, 1, 1, generator=g)
    c, sn = direction()
    freq = math.pi * (2 + 4 * torch.rand(n, 1, 1, 1, generator=g))
    phase = 2 * math.pi * torch.rand(n, 1, 1, 1, generator=g)
    stripes = torch.addcmul(c * x, sn, y).mul_(freq).add_(phase).sin_()
    bg = colour_amp(_STRIPE_AMP) * stripes
    bg.add_(base)
    c, sn = direction()
    bg.addcmul_(colour_amp(_GRADIENT_AMP), torch.addcmul(c * x, sn, y))
    for _ in range(3):
        centre = 2 * torch.rand(n, 2, 1, 1, generator=g) - 1
        width = 0.15 + 0.3 * torch.rand(n, 1, 1, 1, generator=g)
        d2 = (x - centre[:, :1]).square_().add_((y - centre[:, 1:]).square_())
        bg.addcmul_(colour_amp(_BLOB_AMP), d2.div_(-2 * width**2).exp_())
    return bg


def _degrade_(img: torch.Tensor, g: torch.Generator) -> None:
    """In place: per-image contrast reduction towards its mean plus pixel noise."""
    lo, hi = _CONTRAST
    contrast = lo + (hi - lo) * torch.rand(img.shape[0], 1, 1, 1, generator=g)
    mean = img.mean(dim=(1, 2, 3), keepdim=True)
    img.mul_(contrast).add_(mean * (1 - contrast))
    img.add_(torch.randn(img.shape, generator=g), alpha=_NOISE_STD)


def _captions(
    attr: torch.Tensor,
    colour: torch.Tensor,
    size: torch.Tensor,
    centre: torch.Tensor,
    g: torch.Generator,
) -> list[str]:
    """Templated captions that describe nuisance factors and always contain the attribute word.

    The attribute is always a standalone lower-case token (never touching punctuation) so any
    whitespace or regex tokenizer recovers it; the shape is never named or hinted.
    """
    templates = _TEMPLATES
    choice = torch.randint(len(templates), (attr.shape[0],), generator=g).tolist()
    lo, hi = _SIZE_RANGE
    size_bin = ((size - lo) / (hi - lo) * 3).long().clamp(0, 2).tolist()
    horiz = _bin3(centre[:, 0], ("left", "", "right"))
    vert = _bin3(centre[:, 1], ("top", "", "bottom"))
    attr_idx, colour_idx = attr.tolist(), colour.tolist()
    captions = []
    for i, t in enumerate(choice):
        where = " ".join(w for w in (vert[i], horiz[i]) if w)
        pos = f"toward the {where}" if where else "in the centre"
        captions.append(
            templates[t].format(
                size=_SIZE_WORDS[size_bin[i]],
                colour=_COLOUR_NAMES[colour_idx[i]],
                attr=ATTRIBUTES[attr_idx[i]],
                pos=pos,
            )
        )
    return captions


def _bin3(values: torch.Tensor, words: tuple[str, str, str]) -> list[str]:
    """Map coordinates in [-1, 1] to a three-way position word ('' for the middle)."""
    idx = (values > -0.15).long() + (values > 0.15).long()
    return [words[k] for k in idx.tolist()]
