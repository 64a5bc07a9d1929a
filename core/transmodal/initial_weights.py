"""Starting a new run from another run's trained weights (``model.init_from``): a second training stage, such as
DIRT-T's refinement of a VADA run (Shu et al., 2018), or fine-tuning a trained model on other data."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transmodal.checkpoint import class_difference, read_checkpoint, restoring_from
from transmodal.domain_norm import TargetStatistics
from transmodal.errors import CheckpointError, ConfigError
from transmodal.model import TransmodalModel
from transmodal.run_dir import CHECKPOINTS
from transmodal.trainer import load_model_weights


@dataclass(frozen=True)
class InitialWeights:
    checkpoint: Path
    state: dict[str, Any]

    @property
    def tokenizer_states(self) -> dict[str, str]:
        """The first run's tokenizers: its text embeddings are indexed by their vocabularies."""
        return dict(self.state["tokenizers"])

    def load_into(self, model: TransmodalModel, classes: list[str]) -> None:
        difference = class_difference(list(self.state["classes"]), list(classes))
        if difference is not None:
            raise CheckpointError(f"model.init_from: {self.checkpoint} was trained on other classes than this run's "
                                  f"data gives ({difference}); start from a run on the same classes")
        with restoring_from(self.checkpoint):
            load_model_weights(model, self.state["model"])

    def load_target_statistics(self, statistics: TargetStatistics | None) -> None:
        """With per-domain BatchNorm in both runs, the first run's target statistics too: the target is then
        normalised from the first step as the first run left it."""
        if statistics is None or "target_batchnorm" not in self.state:
            return
        try:
            statistics.load_state_dict(self.state["target_batchnorm"])
        except (ValueError, KeyError, RuntimeError) as error:
            raise CheckpointError(f"model.init_from: {self.checkpoint}: its target BatchNorm statistics do not fit "
                                  f"this model ({error})") from None


def read_initial_weights(run_dir: str) -> InitialWeights:
    """The weights a run directory kept as ``best.pt`` (the checkpoint its validator chose)."""
    checkpoint = Path(run_dir).expanduser() / CHECKPOINTS / "best.pt"
    if not checkpoint.is_file():
        raise ConfigError(f"model.init_from: no {CHECKPOINTS}/best.pt in {Path(run_dir).expanduser()}; name the run "
                          f"directory of a run that has saved a checkpoint")
    return InitialWeights(checkpoint, read_checkpoint(checkpoint))
