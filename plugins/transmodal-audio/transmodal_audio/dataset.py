"""``audio-folder``: WAV clips in one sub-folder per class, optionally a second folder as the target domain.

Each clip becomes a waveform of ``duration`` seconds (cut or padded with silence) in a vector modality named
``audio``; the ``audio-cnn`` encoder turns batches of them into spectrograms on the training device.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transmodal.data import DatasetBundle, Split
from transmodal.errors import DataError

from transmodal_audio.params import AudioFolderParams
from transmodal_audio.wav import read_wav

MODALITY = "audio"


def scan(root: Path, what: str) -> dict[str, list[Path]]:
    """.wav files per class folder (sorted); hidden files and folders skipped."""
    if not root.is_dir():
        raise DataError(f"audio-folder {what} {root} is not a folder; it should hold one sub-folder of .wav files "
                        f"per class")
    classes = sorted(entry.name for entry in root.iterdir() if entry.is_dir() and not entry.name.startswith("."))
    files = {name: sorted(path for path in (root / name).rglob("*.wav") if path.is_file()
                          and not any(part.startswith(".") for part in path.relative_to(root).parts))
             for name in classes}
    empty = [name for name, paths in files.items() if not paths]
    if not classes or empty:
        raise DataError(f"audio-folder {what} {root}: expected {root}/<class>/<clip>.wav; "
                        f"{'no class folders' if not classes else 'no .wav files in ' + ', '.join(empty)}")
    return files


def _load(files: dict[str, list[Path]], classes: list[str], params: AudioFolderParams,
          ) -> tuple[torch.Tensor, torch.Tensor]:
    samples = round(params.duration * params.sample_rate)
    clips = [read_wav(path, params.sample_rate, samples) for paths in files.values() for path in paths]
    labels = [classes.index(name) for name, paths in files.items() for _ in paths]
    return torch.stack(clips), torch.tensor(labels, dtype=torch.int64)


def _split(clips: torch.Tensor, labels: torch.Tensor | None, index: torch.Tensor) -> Split:
    index = index.sort().values
    return Split({MODALITY: clips[index], **({"label": labels[index]} if labels is not None else {})})


def build_audio_folder(params: AudioFolderParams, seed: int = 0) -> DatasetBundle:
    # Splits follow params.seed, so runs with different training seeds share them.
    source = scan(params.root.expanduser(), "root")
    classes = list(source)
    clips, labels = _load(source, classes, params)
    generator = torch.Generator().manual_seed(params.seed)
    order = torch.randperm(len(labels), generator=generator)
    n_val, n_test = round(len(order) * params.val_fraction), round(len(order) * params.test_fraction)
    if len(order) - n_val - n_test < 1:
        raise DataError(f"audio-folder: {len(order)} clips leave none for training after the val and test fractions")
    evaluation = {name: _split(clips, labels, index)
                  for name, index in (("source/val", order[:n_val]), ("source/test", order[n_val:n_val + n_test]))
                  if len(index)}
    train = order[n_val + n_test:]
    unlabelled = None
    description = f"{len(classes)} classes from {params.root}: {len(train)} training clips"
    if params.target_root is not None:
        target = scan(params.target_root.expanduser(), "target_root")
        unknown = sorted(set(target) - set(classes))
        if unknown:
            raise DataError(f"audio-folder: target_root class folders {', '.join(unknown)} are not among the source "
                            f"classes ({', '.join(classes)}); the two folders must use the same class names")
        target_clips, target_labels = _load(target, classes, params)
        target_order = torch.randperm(len(target_labels), generator=generator)
        n_target_test = round(len(target_order) * params.target_test_fraction)
        if not 0 < n_target_test < len(target_order):
            raise DataError(f"audio-folder: {len(target_order)} target clips cannot be split into unlabelled "
                            f"training clips and target/test with target_test_fraction {params.target_test_fraction}")
        evaluation["target/test"] = _split(target_clips, target_labels, target_order[:n_target_test])
        unlabelled = _split(target_clips, None, target_order[n_target_test:])
        description += f"; target {params.target_root}: {len(unlabelled)} unlabelled, {n_target_test} test"
    return DatasetBundle(modalities={MODALITY: "vector"}, classes=classes, train=_split(clips, labels, train),
                         evaluation=evaluation, unlabelled=unlabelled, description=description)
