"""The command line: each command on a tiny run, exit statuses, and messages without tracebacks."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import transmodal
from conftest import interrupt_training_at, tiny_experiment_dict
from transmodal.checkpoint import read_checkpoint
from transmodal.cli import main


def write_config(tmp_path: Path, *overrides: str) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_experiment_dict(tmp_path, *overrides)))
    return path


def test_train_then_evaluate(tmp_path: Path, capsys: pytest.CaptureFixture):
    config = write_config(tmp_path, "output.name=cli", "trainer.epochs=1")
    assert main(["train", str(config), "--quiet", "--set", "adaptation.0.weight=0.5"]) == 0
    out = capsys.readouterr().out
    assert "best by source-val (source/val accuracy)" in out and "target/test" in out and "oracle" in out
    run_dir = tmp_path / "runs" / "cli"
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["adaptation"][0]["weight"] == 0.5

    assert main(["evaluate", str(run_dir), "--json", "--drop-modality", "text"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["dropped"] == ["text"] and set(report["metrics"]) == {"source/val", "target/test"}

    assert main(["train", "--resume", str(run_dir), "--quiet"]) == 0
    assert main(["train", str(config), "--resume", str(run_dir)]) == 2
    assert "--resume continues a run" in capsys.readouterr().err


def test_config_errors_exit_2_with_a_message_and_no_traceback(tmp_path: Path, capsys: pytest.CaptureFixture):
    config = write_config(tmp_path)
    assert main(["train", str(config), "--set", "model.fusion.name=concatt"]) == 2
    err = capsys.readouterr().err
    assert "Unknown fusion 'concatt'. Did you mean: concat?" in err
    assert "Traceback" not in err
    assert main(["config", "validate", str(config), "--set", "trainer.epochs=zero"]) == 2
    assert "trainer.epochs: Input should be a valid integer" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "missing.yaml")]) == 2
    assert not (tmp_path / "runs").exists()  # the config error was found before the run began


def test_wrong_paths_exit_2_and_suggest_a_near_match(tmp_path: Path, capsys: pytest.CaptureFixture):
    config = write_config(tmp_path)
    assert main(["train", str(tmp_path / "tiny.yml")]) == 2
    assert f"Config file not found: {tmp_path / 'tiny.yml'}. Did you mean: {config}?" in capsys.readouterr().err
    (tmp_path / "runs" / "shapes-1").mkdir(parents=True)
    assert main(["evaluate", str(tmp_path / "runs" / "shapes-2")]) == 2
    assert f"Did you mean: {tmp_path / 'runs' / 'shapes-1'}?" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "nowhere")]) == 2
    assert "No run directory" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err
    config.write_text("trainer:\n  epochs: 2\n   batch_size: 4\n")
    assert main(["config", "validate", str(config)]) == 2
    assert f'in "{config}", line 3' in capsys.readouterr().err


@pytest.mark.parametrize("every, message, batch", [
    # Step checkpoints every 2 of the 8 steps: the one due after a non-finite step is not written.
    ("trainer.checkpoint_every=2", "the mean loss of epoch 2 (steps 9-12) is nan; the last good checkpoint is "
                                   "{last} (epoch 2, step 2 of 8)", 2),
    ("trainer.checkpoint_every=null", "the mean loss of epoch 2 (steps 9-16) is nan; the last good checkpoint is "
                                      "{last} (end of epoch 1)", None),
])
def test_a_run_diverging_later_names_its_last_good_checkpoint_and_keeps_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, every: str, message: str,
        batch: int | None):
    original_step = transmodal.Trainer.train_step

    def step_going_nan(self, source, target=None):
        terms = original_step(self, source, target)
        return {name: value * float("nan") for name, value in terms.items()} if self.step > 10 else terms

    monkeypatch.setattr(transmodal.Trainer, "train_step", step_going_nan)
    config = write_config(tmp_path, "output.name=diverged", "trainer.epochs=3", every)
    assert main(["train", str(config), "--quiet"]) == 1
    last = tmp_path / "runs" / "diverged" / "checkpoints" / "last.pt"
    assert message.format(last=last) in capsys.readouterr().err
    state = read_checkpoint(last, resumable=True)
    position = state.get("position")
    assert state["epoch"] == 1 and (position["batch"] if position else None) == batch
    assert position is None or all(torch.isfinite(total) for total in position["totals"].values())


@pytest.mark.parametrize("stop_at_step, message", [
    (3, "interrupted before the first checkpoint; train again from the beginning with: "
        "transmodal train --resume {run_dir}"),
    (256 // 32 + 3, "interrupted; continue with: transmodal train --resume {run_dir}"),
])
def test_ctrl_c_says_how_to_continue_this_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture, stop_at_step: int, message: str):
    interrupt_training_at(monkeypatch, stop_at_step)
    assert main(["train", str(write_config(tmp_path, "output.name=stopped")), "--quiet"]) == 130
    assert message.format(run_dir=tmp_path / "runs" / "stopped") in capsys.readouterr().err


def test_sigterm_says_how_to_continue_this_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture):
    """``kill``, a scheduler's preemption, or torchrun stopping the other ranks once one fails: the same message as
    Ctrl-C, exit status 143, and the process's own SIGTERM handling back afterwards."""
    original_step = transmodal.Trainer.train_step

    def terminated_step(self, source, target=None):
        if self.step == 256 // 32 + 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return original_step(self, source, target)

    monkeypatch.setattr(transmodal.Trainer, "train_step", terminated_step)
    handler_before = signal.getsignal(signal.SIGTERM)
    assert main(["train", str(write_config(tmp_path, "output.name=stopped")), "--quiet"]) == 143
    run_dir = tmp_path / "runs" / "stopped"
    assert (f"terminated (SIGTERM); continue with: transmodal train --resume {run_dir}"
            in capsys.readouterr().err)
    assert signal.getsignal(signal.SIGTERM) is handler_before
    monkeypatch.undo()
    assert main(["train", "--resume", str(run_dir), "--quiet"]) == 0


def test_config_validate_and_schema(tmp_path: Path, capsys: pytest.CaptureFixture):
    assert main(["config", "validate", str(write_config(tmp_path))]) == 0
    assert "valid" in capsys.readouterr().out
    assert main(["config", "schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert {"data", "model", "adaptation", "trainer", "optimizer", "schedule", "output"} <= set(schema["properties"])


def test_components_and_plugins(capsys: pytest.CaptureFixture):
    assert main(["components", "fusion", "c*"]) == 0
    out = capsys.readouterr().out
    assert "concat" in out and "mean" not in out
    assert main(["components", "show", "dann"]) == 0
    out = capsys.readouterr().out
    assert "strategy" in out and "weight: float, default 1.0" in out
    assert main(["components", "show", "dan"]) == 2
    assert "Did you mean: dann" in capsys.readouterr().err
    assert main(["plugins", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    core = next(p for p in payload["plugins"] if p["distribution"] == "transmodal")
    assert "synthetic-shapes" in core["registers"]["dataset"]


def test_core_only_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    """With every plugin disabled the default experiment still runs, and resnet18 says what to install, or, where
    its plugin is installed, which switch keeps it out."""
    monkeypatch.setenv("TRANSMODAL_LOAD_PLUGINS", "")
    config = write_config(tmp_path, "trainer.epochs=1")
    assert main(["train", str(config), "--quiet"]) == 0
    assert main(["train", str(config), "--set", "model.encoders.image={name: resnet18}"]) == 2
    err = capsys.readouterr().err
    if importlib.util.find_spec("transmodal_vision") is None:
        assert "pip install -e plugins/transmodal-vision" in err
    else:
        assert "transmodal-vision, which is installed but not listed in TRANSMODAL_LOAD_PLUGINS" in err
        assert "pip install" not in err


def test_help_and_exit_status_of_the_installed_command():
    result = subprocess.run([sys.executable, "-m", "transmodal.cli", "train", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "--resume" in result.stdout
    result = subprocess.run([sys.executable, "-m", "transmodal.cli", "frobnicate"], capture_output=True, text=True)
    assert result.returncode == 2 and "invalid choice" in result.stderr


def test_import_does_not_load_heavy_plugin_dependencies():
    code = (
        "import sys, transmodal; transmodal.get_plugins(); "
        "print(sorted(m for m in ('torchvision', 'tokenizers', 'peft') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_a_diverging_run_stops_with_the_epoch_and_keeps_no_checkpoint_of_it(tmp_path: Path,
                                                                            capsys: pytest.CaptureFixture):
    config = write_config(tmp_path, "output.name=diverged", "optimizer.lr=1e9")
    assert main(["train", str(config), "--quiet"]) == 1
    message = capsys.readouterr().err
    assert "training diverged: the mean loss of epoch 1 (steps 1-8)" in message
    assert "no checkpoint was written" in message and "lower optimizer.lr" in message
    run_dir = tmp_path / "runs" / "diverged"
    assert not (run_dir / "checkpoints" / "last.pt").exists() and not (run_dir / "metrics.jsonl").exists()


def test_a_closed_pipe_on_stdout_stops_quietly():
    """`transmodal components | head`: the reader is gone, which is no error of the user's or of transmodal's."""
    import subprocess
    import sys

    # `true` leaves without reading: the reader is gone before the listing is written, however short it is
    result = subprocess.run(f"{sys.executable} -m transmodal components | true; echo \"${{PIPESTATUS[0]}}\"",
                            shell=True, executable="/bin/bash", capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == ["141"] and result.stderr == ""
