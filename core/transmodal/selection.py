"""Every label-free validator's choice beside the oracle's: which epoch each would keep, and what that costs.

A run keeps ``best.pt`` by its one validator, and which validator to trust depends on the data. So after each
epoch the trainer also scores every built-in validator that needs no target labels and that the data allows
(``trainer.score_validators``), on at most ``SAMPLES`` samples per split, through the same ValidationContext as
the run's validator: one forward pass per split serves them all. The epoch records keep the scores; the summary
gives, for each validator, the epoch it would have chosen, the target/test accuracy there, and its regret: the
accuracy of the epoch chosen on target labels (the oracle, an upper bound) minus that accuracy.
"""

from __future__ import annotations

import math
from typing import Any

from transmodal.errors import DataError
from transmodal.experiment import PreparedData
from transmodal.plugins import get_plugins
from transmodal.validator import SOURCE_VAL, ValidationContext, Validator

SAMPLES = 2000  # per split: bounds the forward passes, SND's N x N similarities and DEV's domain classifier
ORACLE_SPLIT = "target/test"


def build_panel(data: PreparedData) -> dict[str, Validator]:
    """The built-in label-free validators that ``data`` can feed, with their default parameters except for the
    sample bound; a name that no loaded plugin registers is left out."""
    has_val, has_target = SOURCE_VAL in data.evaluation, data.unlabelled is not None
    wanted: dict[str, tuple[dict[str, Any], bool]] = {
        "source-val": ({}, has_val),
        "entropy": ({"max_samples": SAMPLES}, has_target),
        "infomax": ({"max_samples": SAMPLES}, has_target),
        "snd": ({"max_samples": SAMPLES}, has_target),
        "dev": ({"max_samples": SAMPLES}, has_target and has_val),
    }
    registry = get_plugins().registries["validator"]
    return {name: registry.get(name).build(**params)
            for name, (params, allowed) in wanted.items() if allowed and name in registry}


def score_panel(panel: dict[str, Validator], context: ValidationContext) -> dict[str, float]:
    """Each validator's score; one that the data cannot feed this epoch (too few samples) or that comes out
    non-finite is left out rather than stopping the run for a diagnostic."""
    scores: dict[str, float] = {}
    for name, validator in panel.items():
        try:
            value = float(validator.score(context))
        except DataError:
            continue
        if math.isfinite(value):
            scores[name] = value
    return scores


def _tiebreak(record: dict[str, Any]) -> float:
    """Between epochs of equal score, the lower source/val loss wins, as it does for the run's own validator
    when it scores source/val accuracy (which saturates once the source is learnt)."""
    return -record.get(SOURCE_VAL, {}).get("loss", 0.0)


def panel_choices(history: list[dict[str, Any]]) -> dict[str, Any] | None:
    """For each validator scored in ``history``: the epoch it picks (the first best after the tie-break, as the
    trainer keeps),
    and, where target/test is labelled, the accuracy there and the regret against the oracle epoch."""
    scored = [record for record in history if record.get("validators")]
    if not scored:
        return None
    oracle = max((record[ORACLE_SPLIT]["accuracy"] for record in history if ORACLE_SPLIT in record), default=None)
    choices: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(name for record in scored for name in record["validators"]):
        pick = max((record for record in scored if name in record["validators"]),
                   key=lambda record: (record["validators"][name], _tiebreak(record)))
        choice: dict[str, Any] = {"epoch": pick["epoch"]}
        if oracle is not None and ORACLE_SPLIT in pick:
            accuracy = pick[ORACLE_SPLIT]["accuracy"]
            choice.update({f"{ORACLE_SPLIT} accuracy": accuracy, "regret": oracle - accuracy})
        choices[name] = choice
    return {
        "note": f"the epoch each label-free validator would keep (scored on at most {SAMPLES} samples per split) "
                f"and its regret: the oracle's {ORACLE_SPLIT} accuracy minus the accuracy at that epoch",
        "by_validator": choices,
    }
