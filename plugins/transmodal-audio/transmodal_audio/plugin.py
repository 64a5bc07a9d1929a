"""The plugin's hooks. Imported at discovery: parameter models and lazy "module:attr" factories only."""

from __future__ import annotations

from transmodal import hookimpl
from transmodal.hookspecs import Register

from transmodal_audio.params import AudioCNNParams, AudioFolderParams

_HERE = "transmodal_audio"


@hookimpl
def register_encoders(register: Register) -> None:
    register("audio-cnn", f"{_HERE}.encoder:build_audio_cnn", AudioCNNParams,
             "Waveforms to a log-mel spectrogram (torch.stft, on the device), then a small CNN.")


@hookimpl
def register_datasets(register: Register) -> None:
    register("audio-folder", f"{_HERE}.dataset:build_audio_folder", AudioFolderParams,
             "WAV files in one sub-folder per class; a second folder can be the target domain.")
