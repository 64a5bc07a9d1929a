"""Parameters of the audio components. Imported at plugin discovery: pydantic only, no torch."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator

DEFAULT_RATE = 16_000


class AudioFolderParams(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    root: Path = Field(description="Source domain: one sub-folder of .wav files per class (relative to the working "
                                   "directory; ~ accepted).")
    target_root: Path | None = Field(None, description="Target domain with the same class folders: unlabelled "
                                                       "training clips and target/test.")
    sample_rate: int = Field(DEFAULT_RATE, ge=1000, le=384_000,
                             description="Every file must have this rate (no resampling); the encoder's "
                                         "sample_rate must match it.")
    duration: float = Field(1.0, gt=0.0, le=60.0, description="Seconds kept per clip: longer clips are cut after "
                                                              "them, shorter ones padded with silence.")
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="Share of source clips held out as source/val.")
    test_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="Share of source clips held out as source/test.")
    target_test_fraction: float = Field(0.5, gt=0.0, lt=1.0,
                                        description="Share of target clips kept (labelled) as target/test.")
    seed: int = Field(0, description="Seed of the splits (independent of the training seed).")

    @model_validator(mode="after")
    def _some_training_data(self) -> AudioFolderParams:
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError("val_fraction + test_fraction must leave some clips for training (sum below 1)")
        return self


class LogMelParams(BaseModel):
    """The front end. Defaults are VGGish's (Hershey et al., "CNN Architectures for Large-Scale Audio
    Classification", ICASSP 2017): 25 ms windows, 10 ms hop, 64 mel bands from 125 to 7500 Hz, log(mel + 0.01)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    sample_rate: int = Field(DEFAULT_RATE, ge=1000, le=384_000, description="Rate of the waveforms (the dataset's).")
    window: float = Field(0.025, gt=0.0, le=1.0, description="STFT window length in seconds (Hann).")
    hop: float = Field(0.010, gt=0.0, le=1.0, description="STFT hop in seconds.")
    n_mels: int = Field(64, ge=1, le=512, description="Mel bands.")
    f_min: float = Field(125.0, ge=0.0, description="Lowest frequency of the mel bands, Hz.")
    f_max: float = Field(7500.0, gt=0.0, description="Highest frequency of the mel bands, Hz (at most half the rate).")
    log_offset: float = Field(0.01, gt=0.0, description="Added to the mel magnitudes before the log.")

    @model_validator(mode="after")
    def _bands_fit_the_rate(self) -> LogMelParams:
        if not self.f_min < self.f_max <= self.sample_rate / 2:
            raise ValueError(f"need f_min < f_max <= sample_rate / 2 ({self.sample_rate / 2:g} Hz); got f_min "
                             f"{self.f_min:g}, f_max {self.f_max:g}")
        if round(self.window * self.sample_rate) < 2 or round(self.hop * self.sample_rate) < 1:
            raise ValueError("window and hop must each span at least a couple of samples at this sample_rate")
        return self


class AudioCNNParams(LogMelParams):
    channels: list[PositiveInt] = Field([16, 32, 64], min_length=1, description="Output channels of each conv "
                                                                               "block (each halves time and "
                                                                               "frequency).")
    tokens: bool = Field(False, description="Return (B, T, C) tokens, one per time step of the last feature map "
                                            "(averaged over frequency), for attention fusions.")
