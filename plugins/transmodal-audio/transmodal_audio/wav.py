"""WAV files read with the standard library's ``wave`` module: integer PCM of 8, 16, 24 or 32 bits, any number
of channels (averaged to mono), as float32 in [-1, 1]."""

from __future__ import annotations

import wave
from pathlib import Path

import torch
from transmodal.errors import DataError


def read_wav(path: Path, sample_rate: int, samples: int) -> torch.Tensor:
    """The first ``samples`` samples of ``path`` (zeros after its end), mono float32. A file at another rate is
    refused: resampling well needs a filter that is out of scope here."""
    try:
        with wave.open(str(path), "rb") as file:
            rate, width, channels = file.getframerate(), file.getsampwidth(), file.getnchannels()
            wanted = min(samples, file.getnframes())  # frames the header promises within the clip
            frames = file.readframes(wanted)
    except (wave.Error, EOFError, OSError) as error:
        raise DataError(f"Cannot read {path} as a PCM WAV file ({error}); convert it to 16-bit PCM, e.g. "
                        f"sox IN -b 16 OUT.wav") from None
    if rate != sample_rate:
        raise DataError(f"{path} is sampled at {rate} Hz, not the dataset's sample_rate {sample_rate}; convert it "
                        f"(sox IN -r {sample_rate} OUT.wav) or set sample_rate: {rate} (and the encoder's)")
    frame = width * channels
    if len(frames) < wanted * frame:  # the data ends before its header says: cut short while written or copied
        raise DataError(f"{path} is truncated: its header promises {wanted} frames of {frame} bytes ({channels} "
                        f"channel(s) of {8 * width} bits) here, its data holds {len(frames) / frame:g}; replace it "
                        f"with a complete copy, or remove it from the folder")
    raw = torch.frombuffer(bytearray(frames), dtype=torch.uint8) if frames else torch.zeros(0, dtype=torch.uint8)
    if width == 1:  # unsigned 8-bit
        values = (raw.float() - 128.0) / 128.0
    else:  # little-endian signed integers of `width` bytes, assembled byte by byte (24-bit has no dtype)
        parts = raw.view(-1, width).long()
        assembled = sum(parts[:, i] << (8 * i) for i in range(width))
        sign = 1 << (8 * width - 1)
        values = ((assembled ^ sign) - sign).float() / sign
    mono = values.view(-1, channels).mean(dim=1)
    clip = torch.zeros(samples)
    clip[:len(mono)] = mono
    return clip
