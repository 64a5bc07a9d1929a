"""transmodal-audio: WAV reading, the log-mel front end against a direct computation, the audio-cnn encoder's
contract, and a run on generated WAV folders with a shifted target domain."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import wave
from pathlib import Path

import pytest
import torch

pytest.importorskip("transmodal_audio")

import transmodal  # noqa: E402
from transmodal.config import parse_experiment, validate_components  # noqa: E402
from transmodal.data import ModalitySpec  # noqa: E402
from transmodal.errors import ConfigError, DataError  # noqa: E402
from transmodal.plugins import Plugins, reset_plugins  # noqa: E402
from transmodal.registry import FIRST_PARTY_PROVIDERS  # noqa: E402
from transmodal_audio import plugin as audio_plugin  # noqa: E402
from transmodal_audio.features import LogMelSpectrogram  # noqa: E402
from transmodal_audio.params import LogMelParams  # noqa: E402
from transmodal_audio.wav import read_wav  # noqa: E402

RATE = 8000
SMALL = {"sample_rate": RATE, "window": 0.025, "hop": 0.010, "n_mels": 20, "f_min": 100.0, "f_max": 3800.0}


@pytest.fixture
def plugins() -> Plugins:
    return Plugins(entry_points=[], extra_plugins=[("transmodal-audio", audio_plugin)])


def write_wav(path: Path, samples: list[list[int]], width: int = 2, rate: int = RATE) -> Path:
    """``samples``: one list of integer sample values per frame (one per channel), little-endian PCM."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as file:
        file.setnchannels(len(samples[0]))
        file.setsampwidth(width)
        file.setframerate(rate)
        signed = width > 1
        file.writeframes(b"".join(value.to_bytes(width, "little", signed=signed) for frame in samples
                                  for value in frame))
    return path


def tone(frequency: float, seconds: float, amplitude: float = 0.5, noise: float = 0.0, seed: int = 0) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    t = torch.arange(round(seconds * RATE)) / RATE
    signal = amplitude * torch.sin(2 * math.pi * frequency * t) + noise * torch.randn(len(t), generator=generator)
    return (signal.clamp(-1, 1) * 32767).round().int().tolist()


def test_discovery_registers_both_components_without_importing_torch():
    code = ("import json, sys, transmodal\n"
            "plugins = transmodal.get_plugins()\n"
            "assert 'torch' not in sys.modules, 'discovery imported torch'\n"
            "print(json.dumps(plugins.infos['transmodal-audio'].registered))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    registered = json.loads(result.stdout.splitlines()[-1])
    assert registered["encoder"] == ["audio-cnn"] and registered["dataset"] == ["audio-folder"]
    assert {FIRST_PARTY_PROVIDERS["encoder"]["audio-cnn"], FIRST_PARTY_PROVIDERS["dataset"]["audio-folder"]} == {
        "transmodal-audio"}


# -- WAV files ------------------------------------------------------------------------------------------------


def test_wav_files_of_each_sample_width_read_as_mono_floats(tmp_path):
    stereo = write_wav(tmp_path / "stereo.wav", [[16384, -16384], [32767, 32767], [-32768, 0]])
    assert read_wav(stereo, RATE, 5).tolist() == pytest.approx([0.0, 32767 / 32768, -0.5, 0.0, 0.0])
    eight = write_wav(tmp_path / "8bit.wav", [[0], [128], [255]], width=1)
    assert read_wav(eight, RATE, 3).tolist() == pytest.approx([-1.0, 0.0, 127 / 128])
    deep = write_wav(tmp_path / "24bit.wav", [[-(2**23)], [2**22], [-1]], width=3)
    assert read_wav(deep, RATE, 3).tolist() == pytest.approx([-1.0, 0.5, -1 / 2**23])
    assert read_wav(write_wav(tmp_path / "long.wav", [[1000]] * 10), RATE, 4).shape == (4,)  # cut after 4


def test_unreadable_or_other_rate_files_are_data_errors(tmp_path):
    with pytest.raises(DataError, match=r"sampled at 16000 Hz, not the dataset's sample_rate 8000.*sox"):
        read_wav(write_wav(tmp_path / "fast.wav", [[0]], rate=16000), RATE, 4)
    (tmp_path / "fake.wav").write_text("not audio")
    with pytest.raises(DataError, match=r"Cannot read .*fake\.wav as a PCM WAV file"):
        read_wav(tmp_path / "fake.wav", RATE, 4)


# -- the log-mel front end ------------------------------------------------------------------------------------


def direct_log_mel(signal: torch.Tensor, params: LogMelParams) -> torch.Tensor:
    """The same spectrogram from the definitions, in float64 and without torch.stft or the plugin's filterbank:
    the signal reflected by half an FFT at each end, a periodic Hann window of the window's length centred in each
    FFT frame, the DFT as explicit sums of cosines and sines, triangular filters from the HTK mel formula."""
    window = round(params.window * params.sample_rate)
    n_fft = 2 ** math.ceil(math.log2(window))
    hop = round(params.hop * params.sample_rate)
    x = signal.double().tolist()
    half = n_fft // 2
    padded = [x[half - i] for i in range(half)] + x + [x[len(x) - 2 - i] for i in range(half)]
    hann = [0.0] * n_fft
    left = (n_fft - window) // 2
    for n in range(window):
        hann[left + n] = 0.5 - 0.5 * math.cos(2 * math.pi * n / window)
    frames = 1 + len(x) // hop
    n = torch.arange(n_fft, dtype=torch.float64)
    k = torch.arange(n_fft // 2 + 1, dtype=torch.float64)
    angle = 2 * math.pi * k[:, None] * n[None, :] / n_fft
    windowed = torch.tensor([[padded[t * hop + i] * hann[i] for i in range(n_fft)] for t in range(frames)],
                            dtype=torch.float64)
    magnitude = ((windowed @ angle.cos().T) ** 2 + (windowed @ angle.sin().T) ** 2).sqrt()  # (frames, bins)

    def mel(hz: float) -> float:
        return 2595 * math.log10(1 + hz / 700)

    def hz(m: float) -> float:
        return 700 * (10 ** (m / 2595) - 1)

    low, high = mel(params.f_min), mel(params.f_max)
    corners = [hz(low + (high - low) * i / (params.n_mels + 1)) for i in range(params.n_mels + 2)]
    filters = torch.zeros(n_fft // 2 + 1, params.n_mels, dtype=torch.float64)
    for band in range(params.n_mels):
        a, b, c = corners[band:band + 3]
        for bin_ in range(n_fft // 2 + 1):
            f = bin_ * params.sample_rate / n_fft
            if a < f <= b:
                filters[bin_, band] = (f - a) / (b - a)
            elif b < f < c:
                filters[bin_, band] = (c - f) / (c - b)
    return torch.log(magnitude @ filters + params.log_offset).T  # (mels, frames)


def test_log_mel_spectrogram_matches_a_direct_computation():
    params = LogMelParams(**SMALL)
    signal = torch.randn(700, generator=torch.Generator().manual_seed(0)) * 0.3
    signal += 0.5 * torch.sin(2 * math.pi * 440 * torch.arange(700) / RATE)
    got = LogMelSpectrogram(params)(signal[None])[0]
    expected = direct_log_mel(signal, params)
    assert got.shape == expected.shape == (params.n_mels, 1 + 700 // 80)
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-4)


def test_a_pure_tone_lights_the_band_around_its_frequency():
    params = LogMelParams(**SMALL)
    spectrogram = LogMelSpectrogram(params)
    for frequency in (300.0, 1000.0, 3000.0):
        signal = torch.sin(2 * math.pi * frequency * torch.arange(RATE // 2) / RATE)
        loudest = int(spectrogram(signal[None])[0].mean(dim=1).argmax())
        corners = [700 * (10 ** (m / 2595) - 1) for m in torch.linspace(
            2595 * math.log10(1 + 100 / 700), 2595 * math.log10(1 + 3800 / 700), params.n_mels + 2).tolist()]
        assert corners[loudest] < frequency < corners[loudest + 2]


def test_front_end_parameters_are_checked():
    with pytest.raises(ConfigError, match=r"model\.encoders\.audio.*f_max <= sample_rate / 2 \(4000 Hz\)"):
        validate_components(parse_experiment({"model": {"encoders": {"audio": {
            "name": "audio-cnn", "sample_rate": RATE, "f_max": 7500}}}}),
            Plugins(entry_points=[], extra_plugins=[("transmodal-audio", audio_plugin)]))


# -- the encoder ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tokens", [False, True])
def test_encoder_contract(plugins, tokens):
    encoder = plugins.get("encoder", "audio-cnn").build(ModalitySpec("audio", "vector", (2000,)), **SMALL,
                                                        channels=[4, 8], tokens=tokens)
    output = encoder(torch.randn(3, 2000))
    assert output.shape[0] == 3 and output.shape[-1] == encoder.out_dim == 8 and output.dim() == 2 + tokens
    grouped = [p for _, group in encoder.layer_groups() for p in group.parameters()]
    assert len({id(p) for p in grouped}) == len(grouped) == len(list(encoder.parameters()))
    output.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.parameters())


def test_encoder_refuses_what_is_not_a_waveform(plugins):
    build = plugins.get("encoder", "audio-cnn").build
    with pytest.raises(ConfigError, match="audio-cnn takes waveforms .* 'text' is text"):
        build(ModalitySpec("text", "text", vocab_size=10))
    with pytest.raises(ConfigError, match="clips of 100 samples are shorter than one STFT window"):
        build(ModalitySpec("audio", "vector", (100,)), **SMALL)


# -- the dataset and a run ------------------------------------------------------------------------------------


def clips(root: Path, amplitude: float, noise: float, count: int = 12) -> Path:
    """Two classes told apart by pitch: 'low' at 300-400 Hz, 'high' at 1500-2000 Hz."""
    for index in range(count):
        for name, base in (("low", 300.0), ("high", 1500.0)):
            frequency = base * (1 + index / (3 * count))
            write_wav(root / name / f"{index}.wav", [[v] for v in tone(frequency, 0.3, amplitude, noise, index)])
    return root


def test_audio_folder_splits_and_clip_length(tmp_path, plugins):
    root = clips(tmp_path / "studio", 0.5, 0.0, count=5)
    bundle = plugins.get("dataset", "audio-folder").build(0, root=str(root), sample_rate=RATE, duration=0.25,
                                                          val_fraction=0.2, test_fraction=0.0)
    assert bundle.classes == ["high", "low"] and bundle.modalities == {"audio": "vector"}
    assert bundle.train.data["audio"].shape == (8, 2000) and len(bundle.evaluation["source/val"]) == 2
    padded = plugins.get("dataset", "audio-folder").build(0, root=str(root), sample_rate=RATE, duration=0.5)
    assert padded.train.data["audio"][:, 2400:].eq(0).all()  # 0.3 s clips padded with silence to 0.5 s
    with pytest.raises(DataError, match="no .wav files in"):
        (tmp_path / "studio" / "silent").mkdir()
        plugins.get("dataset", "audio-folder").build(0, root=str(root), sample_rate=RATE)


def test_a_run_on_wav_folders_with_a_noisy_target_domain(tmp_path):
    reset_plugins(Plugins(entry_points=[], extra_plugins=[("transmodal-audio", audio_plugin)]))
    source, target = clips(tmp_path / "studio", 0.5, 0.0), clips(tmp_path / "street", 0.2, 0.1)
    experiment = parse_experiment({
        "name": "audio",
        "data": {"dataset": {"name": "audio-folder", "root": str(source), "target_root": str(target),
                             "sample_rate": RATE, "duration": 0.25}},
        "model": {"encoders": {"audio": {"name": "audio-cnn", **SMALL, "channels": [8, 16]}},
                  "fusion": {"name": "concat"}},
        "adaptation": [{"name": "dann", "hidden": 16}],
        "optimizer": {"lr": 0.01},
        "trainer": {"epochs": 3, "batch_size": 8, "num_threads": 1, "device": "cpu"},
        "output": {"dir": str(tmp_path / "runs")},
    })
    summary, run_dir = transmodal.train(experiment, quiet=True)
    assert summary["epochs"] == 3 and set(summary["final"]) >= {"source/val", "target/test"}
    model = transmodal.load(run_dir)
    waveform = read_wav(source / "low" / "0.wav", RATE, 2000)
    assert model.predict({"audio": [waveform.tolist()]})[0]["prediction"] in ("low", "high")
