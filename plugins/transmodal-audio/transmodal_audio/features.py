"""Log-mel spectrograms in torch: ``torch.stft`` and a triangular mel filterbank, on whatever device the waveforms
are (torchaudio, which would provide both, has no build for the torch this project is tested with)."""

from __future__ import annotations

import math

import torch
from torch import nn

from transmodal_audio.params import LogMelParams


def hz_to_mel(hz: torch.Tensor) -> torch.Tensor:
    """The HTK mel scale: 2595 log10(1 + f / 700)."""
    return 2595.0 * torch.log10(1.0 + hz / 700.0)


def mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float) -> torch.Tensor:
    """(n_fft // 2 + 1, n_mels): triangular filters whose corners are equally spaced on the mel scale, each rising
    from its lower corner to its centre and falling to its upper corner, peak 1 (no area normalisation)."""
    bins = torch.linspace(0.0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    corners = mel_to_hz(torch.linspace(float(hz_to_mel(torch.tensor(f_min))), float(hz_to_mel(torch.tensor(f_max))),
                                       n_mels + 2, dtype=torch.float64))
    lower, centre, upper = corners[:-2], corners[1:-1], corners[2:]
    rising = (bins[:, None] - lower) / (centre - lower)
    falling = (upper - bins[:, None]) / (upper - centre)
    return torch.clamp(torch.minimum(rising, falling), min=0.0).float()


class LogMelSpectrogram(nn.Module):
    """(B, samples) waveforms to (B, n_mels, frames) log mel magnitudes: a centred STFT with a periodic Hann window
    (frames at every hop, the signal reflected at its ends), magnitudes, the mel filterbank, log(mel + offset)."""

    def __init__(self, params: LogMelParams) -> None:
        super().__init__()
        self.window_length = round(params.window * params.sample_rate)
        self.n_fft = 2 ** math.ceil(math.log2(self.window_length))  # the window zero-padded to a power of two
        self.hop_length = round(params.hop * params.sample_rate)
        self.log_offset = params.log_offset
        self.register_buffer("window", torch.hann_window(self.window_length, periodic=True), persistent=False)
        self.register_buffer("filterbank", mel_filterbank(params.sample_rate, self.n_fft, params.n_mels,
                                                          params.f_min, params.f_max), persistent=False)

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        spectrum = torch.stft(waveforms.float(), self.n_fft, self.hop_length, self.window_length, self.window,
                              center=True, pad_mode="reflect", return_complex=True).abs()  # (B, bins, frames)
        return torch.log(torch.einsum("bft,fm->bmt", spectrum, self.filterbank) + self.log_offset)
