"""The ``audio-cnn`` encoder: waveforms to log-mel spectrograms on the device, then conv blocks."""

from __future__ import annotations

import torch
from torch import nn
from transmodal.data import ModalitySpec
from transmodal.encoder import Encoder
from transmodal.errors import ConfigError

from transmodal_audio.features import LogMelSpectrogram
from transmodal_audio.params import AudioCNNParams


class AudioCNN(Encoder):
    """Log-mel spectrogram, BatchNorm over the mel bands (as the CNNs of PANNs do: Kong et al., "PANNs: Large-Scale
    Pretrained Audio Neural Networks for Audio Pattern Recognition", 2020), then Conv-BN-ReLU blocks that each
    halve time and frequency, and the mean over both (or over frequency only, for tokens along time)."""

    def __init__(self, params: AudioCNNParams) -> None:
        super().__init__()
        self.spectrogram = LogMelSpectrogram(params)
        self.bands = nn.BatchNorm1d(params.n_mels)
        self.blocks = nn.ModuleList()
        previous = 1
        for width in params.channels:
            self.blocks.append(nn.Sequential(
                nn.Conv2d(previous, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                nn.MaxPool2d(2, ceil_mode=True),
            ))
            previous = width
        self.out_dim = previous
        self.returns_tokens = params.tokens

    def layer_groups(self) -> list[tuple[str, nn.Module]]:
        return [("bands", self.bands), *((f"block{i + 1}", block) for i, block in enumerate(self.blocks))]

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        x = self.bands(self.spectrogram(waveforms)).unsqueeze(1)  # (B, 1, mels, frames)
        for block in self.blocks:
            x = block(x)
        if self.returns_tokens:
            return x.mean(dim=2).transpose(1, 2)  # (B, frames, C)
        return x.mean(dim=(2, 3))


def build_audio_cnn(params: AudioCNNParams, modality: ModalitySpec) -> AudioCNN:
    if modality.kind != "vector" or len(modality.shape) != 1:
        raise ConfigError(f"model.encoders.{modality.name}: audio-cnn takes waveforms (a vector modality of "
                          f"samples, as audio-folder gives), but '{modality.name}' is {modality.kind}")
    window = round(params.window * params.sample_rate)
    if modality.shape[0] < window:
        raise ConfigError(f"model.encoders.{modality.name}: clips of {modality.shape[0]} samples are shorter than "
                          f"one STFT window ({window} samples at {params.sample_rate} Hz); keep longer clips")
    return AudioCNN(params)
