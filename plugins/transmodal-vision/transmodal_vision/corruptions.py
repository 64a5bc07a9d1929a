"""CIFAR-10-C corruptions as batched tensor operations.

Hendrycks and Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and
Perturbations", ICLR 2019. Each function follows the paper's definition with the CIFAR severity
parameters the authors published (their make_cifar_c.py). Randomness comes from a ``torch.Generator``
seeded from (seed, corruption, severity), so a corrupted set is a deterministic function of its inputs.
As in the reference, the float result is clipped to [0, 1] and truncated to uint8.

Not included: the corruptions whose reference depends on ImageMagick (motion blur, snow), on image files
shipped with the benchmark (frost), or on per-pixel Python loops (glass blur), and the rest of the extra set.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import get_args

import torch
from torch.nn import functional

from transmodal_vision.params import CorruptionName

# Severity 1..5 parameters for 32x32 images, from the benchmark's CIFAR code.
SEVERITIES: dict[str, tuple] = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),  # noise standard deviation
    "shot_noise": (500, 250, 100, 75, 50),  # photons per unit intensity (Poisson rate scale)
    "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),  # share of values set to 0 or 1
    "speckle_noise": (0.06, 0.10, 0.12, 0.16, 0.20),  # multiplicative noise standard deviation
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),  # sigma in pixels
    "defocus_blur": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1.0, 0.2), (1.5, 0.1)),  # disk radius, alias blur
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),  # factor towards each channel's mean
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),  # added to the HSV value
    "jpeg_compression": (80, 65, 58, 50, 40),  # JPEG quality
}

CORRUPTION_NAMES: tuple[str, ...] = get_args(CorruptionName)
_CHUNK = 2048  # images per batch of float work: bounds memory for the 10,000-image test set


def _gaussian_noise(x: torch.Tensor, c: float, generator: torch.Generator) -> torch.Tensor:
    return x + c * torch.randn(x.shape, generator=generator)


def _shot_noise(x: torch.Tensor, c: float, generator: torch.Generator) -> torch.Tensor:
    return torch.poisson(x * c, generator=generator) / c


def _impulse_noise(x: torch.Tensor, c: float, generator: torch.Generator) -> torch.Tensor:
    # Salt and pepper on every value independently, half of each (scikit-image's random_noise 's&p').
    hit = torch.rand(x.shape, generator=generator) <= c
    salt = torch.rand(x.shape, generator=generator) <= 0.5
    return torch.where(hit, salt.to(x.dtype), x)


def _speckle_noise(x: torch.Tensor, c: float, generator: torch.Generator) -> torch.Tensor:
    return x + x * c * torch.randn(x.shape, generator=generator)


def _blur(x: torch.Tensor, kernel: torch.Tensor, mode: str) -> torch.Tensor:
    """Correlate every channel with a small 2-D kernel (odd sides), padding with ``mode``: a weighted sum of
    shifted copies, which for these few taps is faster on the CPU than a convolution."""
    height, width = x.shape[-2:]
    rows, cols = kernel.shape[0] // 2, kernel.shape[1] // 2
    padded = functional.pad(x, (cols, cols, rows, rows), mode=mode)
    result = torch.zeros_like(x)
    for (row, col), weight in zip(kernel.nonzero().tolist(), kernel[kernel != 0].tolist(), strict=True):
        result += weight * padded[..., row : row + height, col : col + width]
    return result


def _gaussian_kernel_1d(sigma: float, radius: int) -> torch.Tensor:
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    weights = torch.exp(-0.5 * offsets**2 / sigma**2)
    return weights / weights.sum()


def _gaussian_blur(x: torch.Tensor, sigma: float, generator: torch.Generator) -> torch.Tensor:
    # scipy's gaussian_filter as scikit-image calls it: truncated at 4 sigma, edge values repeated.
    line = _gaussian_kernel_1d(sigma, int(4.0 * sigma + 0.5))
    return _blur(_blur(x, line.view(1, -1), mode="replicate"), line.view(-1, 1), mode="replicate")


def disk_kernel(radius: float, alias_blur: float) -> torch.Tensor:
    """The benchmark's defocus kernel: a normalised disk on a 17x17 grid, smoothed by a 3x3 Gaussian,
    trimmed to its non-zero support (which leaves the filtering unchanged)."""
    grid = torch.arange(-8, 9, dtype=torch.float64)
    disk = ((grid.view(-1, 1) ** 2 + grid.view(1, -1) ** 2) <= radius**2).to(torch.float64)
    disk /= disk.sum()
    line = _gaussian_kernel_1d(alias_blur, 1).view(1, 1, 3)
    smoothed = functional.conv2d(
        functional.conv2d(disk.view(1, 1, 17, 17), line.view(1, 1, 1, 3), padding=(0, 1)),
        line.view(1, 1, 3, 1), padding=(1, 0),
    )[0, 0]
    rows = smoothed.abs().sum(dim=1).nonzero()
    half = int(max(8 - rows.min(), rows.max() - 8))
    return smoothed[8 - half : 9 + half, 8 - half : 9 + half]


def _defocus_blur(x: torch.Tensor, c: tuple[float, float], generator: torch.Generator) -> torch.Tensor:
    # OpenCV's filter2D default border is reflect-101, which is torch's "reflect".
    return _blur(x, disk_kernel(*c), mode="reflect")


def _contrast(x: torch.Tensor, c: float, generator: torch.Generator) -> torch.Tensor:
    means = x.mean(dim=(2, 3), keepdim=True)
    return (x - means) * c + means


def _brightness(x: torch.Tensor, c: float, generator: torch.Generator) -> torch.Tensor:
    # Raising the HSV value keeps hue and saturation: every channel scales by new/old value; a black
    # pixel (value 0, saturation 0) becomes grey at the new value.
    value = x.amax(dim=1, keepdim=True)
    raised = (value + c).clamp(0.0, 1.0)
    return torch.where(value > 0, x * raised / value.clamp(min=1e-12), raised)


_FLOAT_CORRUPTIONS: dict[str, Callable[..., torch.Tensor]] = {
    "gaussian_noise": _gaussian_noise,
    "shot_noise": _shot_noise,
    "impulse_noise": _impulse_noise,
    "speckle_noise": _speckle_noise,
    "gaussian_blur": _gaussian_blur,
    "defocus_blur": _defocus_blur,
    "contrast": _contrast,
    "brightness": _brightness,
}


def _jpeg_compression(images: torch.Tensor, quality: int) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_jpeg, encode_jpeg

    decoded = []
    for start in range(0, images.shape[0], _CHUNK):
        encoded = encode_jpeg(list(images[start : start + _CHUNK]), quality=quality)
        decoded.extend(decode_jpeg(encoded, mode=ImageReadMode.RGB))
    return torch.stack(decoded)


def stream_seed(seed: int, name: str, severity: int) -> int:
    """A generator seed of its own for each (seed, corruption, severity)."""
    return zlib.crc32(f"{name}:{severity}:{seed}".encode())


def corrupt(images: torch.Tensor, name: str, severity: int, seed: int = 0) -> torch.Tensor:
    """Corrupt uint8 RGB images (N, 3, H, W); returns a new uint8 tensor of the same shape."""
    if name not in SEVERITIES:
        raise ValueError(f"unknown corruption '{name}'; known: {', '.join(CORRUPTION_NAMES)}")
    if not 1 <= severity <= 5:
        raise ValueError(f"severity must be 1 to 5, got {severity}")
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected uint8 images (N, 3, H, W), got {images.dtype} {tuple(images.shape)}")
    parameter = SEVERITIES[name][severity - 1]
    if name == "jpeg_compression":
        return _jpeg_compression(images, parameter)
    function = _FLOAT_CORRUPTIONS[name]
    generator = torch.Generator().manual_seed(stream_seed(seed, name, severity))
    result = torch.empty_like(images)
    for start in range(0, images.shape[0], _CHUNK):
        x = images[start : start + _CHUNK].float() / 255.0
        corrupted = function(x, parameter, generator).clamp(0.0, 1.0)
        result[start : start + _CHUNK] = (corrupted * 255.0).to(torch.uint8)  # truncates, like np.uint8
    return result
