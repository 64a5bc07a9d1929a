"""What transmodal survives: damaged run state, wrong files, clashing or escaping run names, a full or unwritable
disk, and data it cannot read. Each case ends with a one-line error and the CLI's exit status (2: the user's input,
1: a failure while running), no traceback, nothing changed outside the run directory, and no good data lost."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from conftest import interrupt_training_at, tiny_experiment_dict
from transmodal.cli import main
from transmodal.config import parse_experiment
from transmodal.run_dir import create_run_dir

STEPS_PER_EPOCH = 256 // 32  # the tiny experiment: 256 training samples in batches of 32


def write_config(folder: Path, *overrides: str, raw: dict | None = None) -> Path:
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw if raw is not None else tiny_experiment_dict(folder, *overrides)))
    return path


def run_cli(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str]:
    """Exit status and stderr; stderr never holds a traceback."""
    status = main(list(argv))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return status, err


def files_outside(root: Path, run_dir: Path | None = None) -> dict[str, tuple[int, int, bytes]]:
    """Every file under ``root`` but outside ``run_dir``, with its size, mtime and content."""
    return {
        str(path.relative_to(root)): (path.stat().st_size, path.stat().st_mtime_ns, path.read_bytes())
        for path in sorted(root.rglob("*"))
        if path.is_file() and (run_dir is None or run_dir not in path.parents)
    }


@pytest.fixture(scope="module")
def stopped_run_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-epoch run stopped by Ctrl-C in its second epoch: last.pt and best.pt of epoch 1, one metrics line."""
    folder = tmp_path_factory.mktemp("template")
    with pytest.MonkeyPatch.context() as monkeypatch:
        interrupt_training_at(monkeypatch, STEPS_PER_EPOCH + 3)
        assert main(["train", str(write_config(folder, "output.name=stopped")), "--quiet"]) == 130
    return folder / "runs" / "stopped"


@pytest.fixture
def stopped_run(stopped_run_template: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> Path:
    run_dir = tmp_path / "runs" / "stopped"
    shutil.copytree(stopped_run_template, run_dir)
    (tmp_path / "notes.txt").write_text("a file beside the run that nothing may touch\n")
    capsys.readouterr()
    return run_dir


def epochs_logged(run_dir: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# -- run state ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad_line", [b"{not json", b"\xff\xfe\x00binary\x9c", b'{"step": 8, "train": {}}',
                                      b'{"epoch": "1"}', b"[" * 100_000], ids=[
    "garbage", "binary", "no-epoch", "epoch-not-a-number", "nested-beyond-the-stack"])
def test_resume_sets_a_damaged_metrics_line_aside(stopped_run: Path, tmp_path: Path, capsys, bad_line: bytes):
    metrics = stopped_run / "metrics.jsonl"
    good = metrics.read_bytes()
    metrics.write_bytes(good + bad_line + b"\n")
    before = files_outside(tmp_path, stopped_run)
    status, err = run_cli(capsys, "train", "--resume", str(stopped_run), "--quiet")
    assert status == 0
    assert "1 damaged line" in err and "metrics.jsonl.damaged" in err
    assert (stopped_run / "metrics.jsonl.damaged").read_bytes() == bad_line + b"\n"
    assert metrics.read_bytes().startswith(good) and epochs_logged(stopped_run) == [1, 2]
    assert files_outside(tmp_path, stopped_run) == before


def test_an_empty_metrics_log_resumes(stopped_run: Path, capsys):
    (stopped_run / "metrics.jsonl").write_bytes(b"")
    status, err = run_cli(capsys, "train", "--resume", str(stopped_run), "--quiet")
    assert status == 0 and err == "" and epochs_logged(stopped_run) == [2]


@pytest.mark.parametrize("plant", ["link-outside", "folder"])
def test_resume_never_sets_damaged_lines_aside_through_a_link_or_into_a_folder(stopped_run: Path, tmp_path: Path,
                                                                                capsys, plant: str):
    aside = stopped_run / "metrics.jsonl.damaged"
    if plant == "folder":
        aside.mkdir()
    else:
        aside.symlink_to(tmp_path / "notes.txt")  # a planted link: appending would write beside the run
    metrics = stopped_run / "metrics.jsonl"
    metrics.write_bytes(metrics.read_bytes() + b"{not json\n")
    damaged_log = metrics.read_bytes()
    before = files_outside(tmp_path, stopped_run)
    status, err = run_cli(capsys, "train", "--resume", str(stopped_run), "--quiet")
    assert status == 1 and f"cannot set damaged lines aside in {aside}" in err
    assert ("it is a symbolic link" if plant == "link-outside" else "Is a directory") in err
    assert metrics.read_bytes() == damaged_log and files_outside(tmp_path, stopped_run) == before


def test_resume_rewrites_its_logs_without_following_a_planted_temporary_file_link(stopped_run: Path, tmp_path: Path,
                                                                               capsys):
    """metrics.jsonl (and the loggers' files) are rewritten through a temporary file beside them: a link planted
    under the name such a file once had must not make the rewrite land outside the run."""
    (stopped_run / ".metrics.jsonl.tmp").symlink_to(tmp_path / "notes.txt")
    before = files_outside(tmp_path, stopped_run)
    status, _ = run_cli(capsys, "train", "--resume", str(stopped_run), "--quiet")
    assert status == 0 and files_outside(tmp_path, stopped_run) == before


def test_a_metrics_log_that_cannot_be_read_is_named(stopped_run: Path, tmp_path: Path, capsys):
    metrics = stopped_run / "metrics.jsonl"
    metrics.unlink()
    metrics.mkdir()
    before = files_outside(tmp_path)
    status, err = run_cli(capsys, "train", "--resume", str(stopped_run), "--quiet")
    assert status == 1 and f"cannot read {metrics}: Is a directory" in err
    assert files_outside(tmp_path) == before


def _weights_over_last(run_dir: Path) -> None:
    shutil.copy(run_dir / "checkpoints" / "best.pt", run_dir / "checkpoints" / "last.pt")


def _edit_last(edit):
    def apply(run_dir: Path) -> None:
        path = run_dir / "checkpoints" / "last.pt"
        torch.save(edit(torch.load(path, weights_only=True)), path)
    return apply


def _truncate_last(fraction: float):
    def apply(run_dir: Path) -> None:  # a copy or a write that stopped part-way
        path = run_dir / "checkpoints" / "last.pt"
        path.write_bytes(path.read_bytes()[: int(path.stat().st_size * fraction)])
    return apply


@pytest.mark.parametrize("damage, message", [
    (_weights_over_last, "holds weights only (a copy of best.pt?)"),
    (_edit_last(lambda state: {}), "it lacks 'epoch', 'model'"),
    (_edit_last(lambda state: [state]), "it holds a list, not a dict"),
    (_edit_last(lambda state: {**state, "tokenizers": {"text": "not json {"}}),
     "its 'text' tokenizer cannot be restored (JSONDecodeError"),
    (_edit_last(lambda state: {**state, "rng": {"torch": [1, 2, 3]}}), "'rng.torch' should be a uint8 tensor"),
    (_edit_last(lambda state: {**state, "format": 99}), "format 99, from a newer transmodal"),
    (_edit_last(lambda state: {**state, "epoch": -3}), "'epoch' should be 0 or more, found -3"),
    (_edit_last(lambda state: {**state, "model": {name: torch.zeros(1) for name in state["model"]}}),
     "checkpoint does not fit this model: Error(s) in loading state_dict"),
    (_edit_last(lambda state: {**state, "classes": state["classes"][::-1]}),
     "the classes are in another order: output 0 is"),
    (_truncate_last(0.5), "it is truncated or damaged"),
    (_truncate_last(0), "it is empty (0 bytes)"),
    (lambda run_dir: (run_dir / "checkpoints" / "last.pt").write_bytes(b"hello world, not a checkpoint"),
     "it is damaged or not a checkpoint"),
], ids=["best-over-last", "empty-dict", "list", "tokenizer-not-json", "rng-wrong-type", "newer-format",
        "negative-epoch", "wrong-shapes", "classes-changed", "truncated", "empty-file", "other-bytes"])
def test_resume_names_what_is_wrong_with_a_checkpoint_and_which_file(stopped_run: Path, tmp_path: Path, capsys,
                                                                      damage, message: str):
    damage(stopped_run)
    before = files_outside(tmp_path)
    status, err = run_cli(capsys, "train", "--resume", str(stopped_run), "--quiet")
    assert status == 1 and len(err.strip().splitlines()) == 1
    assert str(stopped_run / "checkpoints" / "last.pt") in err and message in err
    assert files_outside(tmp_path) == before  # the run directory too: nothing was trained or rewritten


def test_evaluate_refuses_a_run_whose_data_changed_its_classes(stopped_run: Path, capsys):
    """A label renamed in the data after training shifts the class order: scoring the old weights would misread
    every prediction. transmodal.evaluate_run takes the path as a string too."""
    import transmodal
    from transmodal.errors import CheckpointError

    best = stopped_run / "checkpoints" / "best.pt"
    state = torch.load(best, weights_only=True)
    torch.save({**state, "classes": ["zz " + state["classes"][0], *state["classes"][1:]]}, best)
    with pytest.raises(CheckpointError, match="the data changed since training"):
        transmodal.evaluate_run(str(stopped_run))


def test_evaluate_refuses_a_best_checkpoint_of_the_wrong_structure(stopped_run: Path, capsys):
    torch.save({"epoch": 1}, stopped_run / "checkpoints" / "best.pt")
    status, err = run_cli(capsys, "evaluate", str(stopped_run))
    assert status == 1
    assert f"{stopped_run / 'checkpoints' / 'best.pt'} is not a transmodal checkpoint: it lacks 'model'" in err


@pytest.mark.skipif(not hasattr(os, "fchmod"), reason="POSIX permissions")
def test_files_written_whole_then_renamed_get_the_usual_permissions(stopped_run_template: Path):
    """Checkpoints and config.yaml are written to a temporary file first: they must not stay private to their
    owner as such files are made, or colleagues sharing a machine could not read a run."""
    umask = os.umask(0)
    os.umask(umask)
    for name in ("config.yaml", "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (stopped_run_template / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


def test_a_checkpoint_without_a_format_version_still_resumes(stopped_run: Path, capsys):
    _edit_last(lambda state: {k: v for k, v in state.items() if k != "format"})(stopped_run)
    status, _ = run_cli(capsys, "train", "--resume", str(stopped_run), "--quiet")
    assert status == 0 and epochs_logged(stopped_run) == [1, 2]


class CodeObject:
    """Unpickling an instance imports and calls this module's code: what a malicious checkpoint does."""


def test_a_checkpoint_that_would_run_code_is_refused_as_untrusted(stopped_run: Path, tmp_path: Path, capsys):
    torch.save({"model": CodeObject()}, stopped_run / "checkpoints" / "last.pt")
    before = files_outside(tmp_path)
    status, err = run_cli(capsys, "train", "--resume", str(stopped_run))
    assert status == 1
    assert "last.pt is not a transmodal checkpoint and must not be trusted" in err and "CodeObject" in err
    assert "weights_only" not in err  # torch's own advice to load it anyway is not repeated
    assert files_outside(tmp_path) == before


def test_runs_started_together_never_share_a_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import transmodal.run_dir

    monkeypatch.setattr(transmodal.run_dir.time, "strftime", lambda _: "20260101-120000")  # the same second
    experiment = parse_experiment(tiny_experiment_dict(tmp_path))
    first = tmp_path / "runs" / f"{experiment.name}-20260101-120000"
    real_mkdir = os.mkdir

    def other_run_gets_there_first(path, *args, **kwargs):
        if Path(path) == first and not first.exists():
            real_mkdir(path)  # another process, started in the same second, takes the name just now
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", other_run_gets_there_first)
    assert create_run_dir(experiment) == first.with_name(first.name + "-2")
    assert create_run_dir(experiment) == first.with_name(first.name + "-3")


def test_an_explicit_run_name_that_exists_is_refused(tmp_path: Path, capsys):
    taken = tmp_path / "runs" / "taken"
    taken.mkdir(parents=True)  # made by another run a moment ago, not yet written to
    config = write_config(tmp_path, "output.name=taken")
    before = files_outside(tmp_path)
    status, err = run_cli(capsys, "train", str(config), "--quiet")
    assert status == 2 and f"run directory {taken} already exists" in err
    assert taken.is_dir() and files_outside(tmp_path) == before


@pytest.mark.parametrize("override, field, reason", [
    ("output.name=../escaped", "output.name", "single folder name"),
    ("output.name={tmp_path}/escaped", "output.name", "single folder name"),
    ("name=../escaped", "name", "single folder name"),
    ("name=a\0b", "name", "NUL"),
    ("output.name=" + "x" * 256, "output.name", "longer than the 255 bytes"),
    ("output.dir={tmp_path}/a\0b", "output.dir", "NUL"),
], ids=["dot-dot", "absolute", "experiment-name", "nul", "too-long", "nul-in-output-dir"])
def test_a_run_name_that_would_leave_output_dir_is_refused(tmp_path: Path, capsys, override: str, field: str,
                                                           reason: str):
    config = write_config(tmp_path, override.format(tmp_path=tmp_path))  # every escape would land in tmp_path
    before = files_outside(tmp_path)
    for command in (["config", "validate", str(config)], ["train", str(config), "--quiet"]):
        status, err = run_cli(capsys, *command)
        assert status == 2 and f"{field}: Value error" in err and reason in err
    assert files_outside(tmp_path) == before and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("encoder, field", [
    ({"name": "small-cnn", "channels": [0]}, "channels.0"),
    ({"name": "small-cnn", "channels": [8, -1]}, "channels.1"),
    ({"name": "mlp", "hidden": [0]}, "hidden.0"),
], ids=["cnn-zero", "cnn-negative", "mlp-zero"])
def test_config_validate_refuses_sizes_that_train_would_crash_on(tmp_path: Path, capsys, encoder: dict, field: str):
    raw = tiny_experiment_dict(tmp_path)
    raw["model"]["encoders"]["image"] = encoder
    status, err = run_cli(capsys, "config", "validate", str(write_config(tmp_path, raw=raw)))
    assert status == 2 and f"model.encoders.image.{field}: Input should be greater than 0" in err


def test_resume_of_a_run_stopped_before_its_first_checkpoint_starts_it_again(tmp_path: Path, capsys,
                                                                              monkeypatch: pytest.MonkeyPatch):
    original_step = interrupt_training_at(monkeypatch, 3)
    config = write_config(tmp_path, "output.name=early", "trainer.epochs=1")
    assert main(["train", str(config), "--quiet"]) == 130
    monkeypatch.setattr("transmodal.Trainer.train_step", original_step)
    run_dir = tmp_path / "runs" / "early"
    saved_config = (run_dir / "config.yaml").read_text()
    (tmp_path / "notes.txt").write_text("a file beside the run that nothing may touch\n")
    tokenizer = run_dir / "tokenizers" / "text.json"
    tokenizer.unlink()
    tokenizer.symlink_to(tmp_path / "notes.txt")  # planted: rewriting the tokenizer must not write through it
    before = files_outside(tmp_path, run_dir)
    status, err = run_cli(capsys, "train", "--resume", str(run_dir), "--quiet")
    assert status == 0 and "stopped before its first checkpoint" in err and "from the beginning" in err
    assert epochs_logged(run_dir) == [1] and (run_dir / "checkpoints" / "last.pt").is_file()
    assert (run_dir / "config.yaml").read_text() == saved_config and not tokenizer.is_symlink()
    assert files_outside(tmp_path, run_dir) == before


def test_a_full_disk_while_saving_a_checkpoint_keeps_the_previous_one(stopped_run: Path, tmp_path: Path, capsys,
                                                                       monkeypatch: pytest.MonkeyPatch):
    checkpoints = {path.name: path.read_bytes() for path in (stopped_run / "checkpoints").iterdir()}

    def full_disk(state, file) -> None:  # what torch raises when a write fails part-way
        file.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(torch, "save", full_disk)
    before = files_outside(tmp_path, stopped_run)
    status, err = run_cli(capsys, "train", "--resume", str(stopped_run), "--quiet")
    assert status == 1
    assert "cannot write checkpoint" in err and "the disk is full" in err and "previous checkpoint is unchanged" in err
    assert {path.name: path.read_bytes() for path in (stopped_run / "checkpoints").iterdir()} == checkpoints
    assert files_outside(tmp_path, stopped_run) == before


def full_disk_for_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk fills up when an epoch's line is appended to metrics.jsonl (before its checkpoint is written)."""
    def write_epoch(self, record, improved) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.run_dir / "metrics.jsonl"))

    monkeypatch.setattr("transmodal.Trainer._write_epoch", write_epoch)


def test_a_full_disk_while_resuming_says_how_to_continue(stopped_run: Path, tmp_path: Path, capsys,
                                                          monkeypatch: pytest.MonkeyPatch):
    full_disk_for_metrics(monkeypatch)
    last = (stopped_run / "checkpoints" / "last.pt").read_bytes()
    status, err = run_cli(capsys, "train", "--resume", str(stopped_run), "--quiet")
    assert status == 1 and f"cannot write {stopped_run / 'metrics.jsonl'}: the disk is full" in err
    assert err.strip().endswith(f"Free some space, then continue with: transmodal train --resume {stopped_run}")
    assert (stopped_run / "checkpoints" / "last.pt").read_bytes() == last
    monkeypatch.undo()
    assert run_cli(capsys, "train", "--resume", str(stopped_run), "--quiet")[0] == 0
    assert epochs_logged(stopped_run) == [1, 2]


def test_a_full_disk_before_the_first_checkpoint_says_to_train_again(tmp_path: Path, capsys,
                                                                     monkeypatch: pytest.MonkeyPatch):
    full_disk_for_metrics(monkeypatch)
    status, err = run_cli(capsys, "train", str(write_config(tmp_path, "output.name=full")), "--quiet")
    run_dir = tmp_path / "runs" / "full"
    assert status == 1 and "the disk is full" in err
    assert err.strip().endswith(f"train again from the beginning with: transmodal train --resume {run_dir}")


def test_a_full_disk_before_the_run_wrote_anything_says_to_run_it_again(tmp_path: Path, capsys,
                                                                         monkeypatch: pytest.MonkeyPatch):
    def train(experiment, quiet, run_dir):
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT), str(run_dir / "config.yaml"))

    monkeypatch.setattr("transmodal.run.train", train)
    status, err = run_cli(capsys, "train", str(write_config(tmp_path, "output.name=full")), "--quiet")
    assert status == 1 and "the disk is full" in err and err.strip().endswith("run the same command again")
    assert not (tmp_path / "runs" / "full").exists()


@pytest.mark.parametrize("where", ["file", "dev-null", "read-only"])
def test_an_output_dir_that_cannot_hold_runs_is_refused_before_training(tmp_path: Path, capsys, where: str,
                                                                        monkeypatch: pytest.MonkeyPatch):
    import transmodal.run

    output = {"file": tmp_path / "a-file", "dev-null": Path(os.devnull), "read-only": tmp_path / "read-only"}[where]
    if where == "file":
        output.write_text("not a folder\n")
    if where == "read-only":  # chmod does not stop root, so the refusal a read-only folder gives is simulated
        output.mkdir()
        real_mkdir = os.mkdir

        def read_only_mkdir(path, *args, **kwargs):
            if Path(path).parent == output:
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real_mkdir(path, *args, **kwargs)

        monkeypatch.setattr(os, "mkdir", read_only_mkdir)
    monkeypatch.setattr(transmodal.run, "assemble", lambda *a, **k: pytest.fail("training started"))
    config = write_config(tmp_path, f"output.dir={output}")
    before = files_outside(tmp_path)
    status, err = run_cli(capsys, "train", str(config), "--quiet")
    assert status == 2 and f"output.dir {output}" in err
    assert ("Permission denied" if where == "read-only" else "is not a folder") in err
    assert files_outside(tmp_path) == before


def test_resume_never_trains_a_run_again_over_its_results_when_last_pt_is_gone(stopped_run: Path, tmp_path: Path,
                                                                               capsys):
    metrics = stopped_run / "metrics.jsonl"
    record = json.loads(metrics.read_text())
    metrics.write_text(json.dumps(record) + "\n" + json.dumps({**record, "epoch": 2}) + "\n")  # a finished run
    (stopped_run / "checkpoints" / "last.pt").unlink()  # deleted by hand to save space
    before = files_outside(tmp_path)
    status, err = run_cli(capsys, "train", "--resume", str(stopped_run), "--quiet")
    assert status == 1 and "last.pt is missing, though" in err and "records 2 epochs" in err and "put it back" in err
    assert files_outside(tmp_path) == before  # best.pt and both metrics lines are kept


@pytest.mark.parametrize("damage, message", [
    (lambda run_dir: (run_dir / "config.yaml").write_text(""), "config.yaml is empty"),
    (lambda run_dir: (shutil.rmtree(run_dir / "checkpoints"), (run_dir / "checkpoints").write_text("x")),
     "checkpoints is not a folder"),
], ids=["empty-config", "checkpoints-a-file"])
def test_resume_refuses_a_run_directory_missing_its_parts(stopped_run: Path, tmp_path: Path, capsys, damage,
                                                          message: str):
    damage(stopped_run)  # an empty config.yaml would otherwise read as the default experiment
    before = files_outside(tmp_path)
    status, err = run_cli(capsys, "train", "--resume", str(stopped_run), "--quiet")
    assert status == 1 and f"{stopped_run}/{message}" in err
    assert files_outside(tmp_path) == before


def test_a_trained_model_is_not_loaded_from_a_run_with_an_empty_config(stopped_run: Path):
    """predict and export load the model through transmodal.load: an empty config.yaml would build the default
    experiment's model instead of this run's."""
    import transmodal
    from transmodal.errors import CheckpointError

    (stopped_run / "config.yaml").write_text("")
    with pytest.raises(CheckpointError, match="config.yaml is empty"):
        transmodal.load(stopped_run)


def test_a_model_json_naming_a_class_twice_is_refused(stopped_run: Path):
    """Two outputs with one name: a prediction would not say which class it means."""
    import transmodal
    from transmodal.errors import CheckpointError

    info = json.loads((stopped_run / "model.json").read_text())
    info["classes"][1] = info["classes"][0]
    (stopped_run / "model.json").write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match=f"classes name \\['{info['classes'][0]}'\\] more than once"):
        transmodal.load(stopped_run)


def test_resume_of_a_file_says_it_is_not_a_run_directory(tmp_path: Path, capsys):
    (tmp_path / "notes.txt").write_text("not a run\n")
    before = files_outside(tmp_path)
    status, err = run_cli(capsys, "train", "--resume", str(tmp_path / "notes.txt"), "--quiet")
    assert status == 2 and f"{tmp_path / 'notes.txt'} is not a run directory (it is a file, not a folder)" in err
    assert files_outside(tmp_path) == before


def test_resume_removes_temporary_checkpoint_files_left_by_a_kill(stopped_run: Path, capsys):
    leftover = stopped_run / "checkpoints" / ".last.pt.k1ll3d.tmp"
    leftover.write_bytes(b"half a checkpoint")
    status, _ = run_cli(capsys, "train", "--resume", str(stopped_run), "--quiet")
    assert status == 0 and not leftover.exists() and not list(stopped_run.rglob("*.tmp"))


# -- data (plugins) ----------------------------------------------------------------------------------------------


def text_csv_config(folder: Path, data: Path, **dataset) -> Path:
    raw = {
        "name": "reviews",
        "data": {"dataset": {"name": "text-csv", "path": str(data), **dataset}},
        "model": {"encoders": {"text": {"name": "bow", "embedding_dim": 8}}},
        "adaptation": [{"name": "finetune"}],
        "trainer": {"epochs": 1, "batch_size": 8, "num_threads": 1},
        "output": {"dir": str(folder / "runs")},
    }
    return write_config(folder, raw=raw)


def review_rows(count: int = 20) -> list[tuple[str, str]]:
    return [(f"great film number {i}", "pos") if i % 2 else (f"dull film number {i}", "neg") for i in range(count)]


@pytest.mark.parametrize("suffix", ["csv", "jsonl"])
def test_text_csv_in_another_encoding_names_the_line_and_the_encoding_option(tmp_path: Path, capsys, suffix: str):
    pytest.importorskip("tokenizers")
    pytest.importorskip("transmodal_text")
    rows = review_rows()
    rows[1] = ("un café très réussi", "pos")  # latin-1 bytes on line 3 of the CSV, line 2 of the JSONL
    if suffix == "csv":
        text = "text,label\n" + "".join(f"{t},{label}\n" for t, label in rows)
    else:
        text = "".join(json.dumps({"text": t, "label": label}, ensure_ascii=False) + "\n" for t, label in rows)
    data = tmp_path / f"reviews.{suffix}"
    data.write_bytes(text.encode("latin-1"))
    config = text_csv_config(tmp_path, data)
    before = files_outside(tmp_path)
    status, err = run_cli(capsys, "train", str(config), "--quiet")
    assert status == 1
    line = 3 if suffix == "csv" else 2
    assert f"{data} line {line} is not utf-8 text" in err and "set data.dataset.encoding" in err
    assert not (tmp_path / "runs").exists()  # the failed start left no folder behind
    assert files_outside(tmp_path) == before
    status, _ = run_cli(capsys, "train", str(text_csv_config(tmp_path, data, encoding="latin-1")), "--quiet")
    assert status == 0


def test_text_csv_in_utf16_suggests_utf16(tmp_path: Path, capsys):
    pytest.importorskip("tokenizers")
    pytest.importorskip("transmodal_text")
    data = tmp_path / "reviews.csv"  # what a spreadsheet's "Unicode text" export writes: UTF-16 with a BOM
    data.write_bytes(("text,label\n" + "".join(f"{t},{label}\n" for t, label in review_rows())).encode("utf-16"))
    status, err = run_cli(capsys, "train", str(text_csv_config(tmp_path, data)), "--quiet")
    assert status == 1 and f"{data} line 1 is not utf-8 text" in err and "e.g. utf-16" in err
    status, _ = run_cli(capsys, "train", str(text_csv_config(tmp_path, data, encoding="utf-16")), "--quiet")
    assert status == 0


@pytest.mark.parametrize("suffix, cell, shown", [
    ("csv", "NaN", "'NaN'"), ("csv", "nan", "'nan'"), ("csv", "", "''"),
    ("csv", "   ", "'   '"), ("jsonl", None, "None"), ("jsonl", float("nan"), "nan"),
])
def test_text_csv_refuses_a_row_without_a_label_instead_of_making_it_a_class(tmp_path: Path, capsys, suffix: str,
                                                                              cell, shown: str):
    pytest.importorskip("tokenizers")
    pytest.importorskip("transmodal_text")
    from transmodal.plugins import get_plugins

    rows: list[tuple[str, object]] = list(review_rows())
    rows[4] = ("no one rated this one", cell)
    data = tmp_path / f"reviews.{suffix}"
    if suffix == "csv":
        data.write_text("text,label\n" + "".join(f"{t},{label}\n" for t, label in rows), encoding="utf-8")
    else:
        data.write_text("".join(json.dumps({"text": t, "label": label}) + "\n" for t, label in rows), encoding="utf-8")
    config = text_csv_config(tmp_path, data)
    before = files_outside(tmp_path)
    status, err = run_cli(capsys, "train", str(config), "--quiet")
    line = 6 if suffix == "csv" else 5
    assert status == 1 and f"{data} line {line}: no label in 'label' ({shown}; 1 such rows)" in err
    assert files_outside(tmp_path) == before
    assert "unlabelled_rows: skip" in err
    skipped = get_plugins().get("dataset", "text-csv").build(0, path=str(data), unlabelled_rows="skip")
    assert skipped.classes == ["neg", "pos"]
    assert len(skipped.train) + sum(len(split) for split in skipped.evaluation.values()) == len(rows) - 1


@pytest.mark.parametrize("line, message", [
    ({"text": "two labels at once", "label": ["pos", "neg"]}, "line 3: 'label' is a list"),
    ({"text": {"title": "a review in parts"}, "label": "pos"}, "line 3: 'text' is a dict"),
    (["not", "an", "object"], "line 3 must be a JSON object"),
    ("[" * 100_000, "line 3 nests JSON arrays or objects too deeply"),
], ids=["label-list", "text-dict", "not-an-object", "nested-beyond-the-stack"])
def test_text_csv_refuses_a_jsonl_line_of_the_wrong_shape(tmp_path: Path, capsys, line, message: str):
    pytest.importorskip("tokenizers")
    pytest.importorskip("transmodal_text")
    lines = [json.dumps({"text": t, "label": label}) for t, label in review_rows()]
    lines[2] = line if isinstance(line, str) else json.dumps(line)
    data = tmp_path / "reviews.jsonl"
    data.write_text("".join(text + "\n" for text in lines), encoding="utf-8")
    config = text_csv_config(tmp_path, data)
    before = files_outside(tmp_path)
    status, err = run_cli(capsys, "train", str(config), "--quiet")
    assert status == 1 and f"{data} {message}" in err
    assert files_outside(tmp_path) == before


def test_text_csv_labels_that_differ_only_in_spaces_are_one_class(tmp_path: Path):
    pytest.importorskip("tokenizers")
    pytest.importorskip("transmodal_text")
    from transmodal.plugins import get_plugins

    data = tmp_path / "reviews.csv"  # "text, label" rows, as typed with a space after each comma
    data.write_text("text,label\n" + "".join(f"{t}, {label}\n" for t, label in review_rows()), encoding="utf-8")
    assert get_plugins().get("dataset", "text-csv").build(0, path=str(data)).classes == ["neg", "pos"]


@pytest.mark.parametrize("value", ["vision", "transmodal-vision", "Transmodal_Vision"])
def test_a_plugin_disabled_by_its_short_name_is_reported_as_installed_but_disabled(tmp_path: Path, capsys,
                                                                                    monkeypatch, value: str):
    pytest.importorskip("transmodal_vision")
    monkeypatch.setenv("TRANSMODAL_DISABLE_PLUGINS", value)
    raw = tiny_experiment_dict(tmp_path)
    raw["model"]["encoders"]["image"] = {"name": "resnet18"}
    config = write_config(tmp_path, raw=raw)
    before = files_outside(tmp_path)
    for command in (["config", "validate", str(config)], ["train", str(config), "--quiet"]):
        status, err = run_cli(capsys, *command)
        assert status == 2 and "Unknown encoder 'resnet18'" in err
        assert "transmodal-vision, which is installed but disabled by TRANSMODAL_DISABLE_PLUGINS" in err
        assert "pip install" not in err
    assert files_outside(tmp_path) == before and not list((tmp_path / "runs").glob("*"))  # no run directory


def test_a_plugin_switch_that_matches_nothing_is_named(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch):
    pytest.importorskip("transmodal_vision")
    monkeypatch.setenv("TRANSMODAL_DISABLE_PLUGINS", "visoin")
    status, err = run_cli(capsys, "config", "validate", str(write_config(tmp_path)))
    assert status == 0  # nothing was disabled, so the config stays valid; the typo is named
    assert "TRANSMODAL_DISABLE_PLUGINS: 'visoin' matches no installed plugin" in err and "did you mean vision?" in err


def test_a_cifar_archive_placed_by_hand_with_the_wrong_checksum_is_not_extracted(tmp_path: Path, capsys):
    pytest.importorskip("torchvision")
    pytest.importorskip("transmodal_vision")
    from test_vision_data import write_cifar10

    archive = write_cifar10(tmp_path / "data")  # its checksum is not CIFAR-10's
    raw = tiny_experiment_dict(tmp_path)
    raw["data"] = {"dataset": {"name": "cifar10", "root": str(tmp_path / "data"), "val_size": 10}}
    raw["model"]["encoders"] = {"image": {"name": "small-cnn", "channels": [8]}}
    raw["adaptation"] = [{"name": "finetune"}]
    config = write_config(tmp_path, raw=raw)
    before = files_outside(tmp_path)
    status, err = run_cli(capsys, "train", str(config), "--quiet")
    assert status == 1
    assert f"{archive} does not have the MD5 checksum of the CIFAR-10 python version" in err and "Delete it" in err
    assert files_outside(tmp_path) == before and not (tmp_path / "data" / "cifar-10-batches-py").exists()


def test_a_config_error_leaves_no_output_folder_that_train_made(tmp_path: Path, capsys):
    config = write_config(tmp_path, f"output.dir={tmp_path / 'new' / 'runs'}", "model.encoders.text.embedding_dim=-3")
    status, err = run_cli(capsys, "train", str(config), "--quiet")
    assert status == 2 and "embedding_dim" in err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["tiny.yaml"]  # neither new/ nor new/runs/
    kept = tmp_path / "kept"
    (kept / "earlier-run").mkdir(parents=True)  # output.dir in use: it and its runs stay
    config = write_config(tmp_path, f"output.dir={kept}", "model.encoders.text.embedding_dim=-3")
    assert run_cli(capsys, "train", str(config), "--quiet")[0] == 2
    assert [path.name for path in kept.iterdir()] == ["earlier-run"]


def test_a_validator_reading_a_split_or_metric_the_run_lacks_is_refused_before_training(tmp_path: Path, capsys):
    config = write_config(tmp_path, "validator.metric=bogus")
    status, err = run_cli(capsys, "config", "validate", str(config))
    assert status == 2 and "validator.metric" in err and "'accuracy', 'macro_f1' or 'loss'" in err
    config = write_config(tmp_path, f"output.dir={tmp_path / 'runs'}", "validator.split=nope/val")
    status, err = run_cli(capsys, "train", str(config), "--quiet")
    assert status == 2 and "split 'nope/val' is not evaluated in this run" in err and "source/val" in err
    assert not (tmp_path / "runs").exists()


def test_a_vocabulary_that_leaves_the_texts_empty_is_refused_before_training(tmp_path: Path, capsys):
    config = write_config(tmp_path, f"output.dir={tmp_path / 'runs'}", "data.tokenizer.min_freq=100000")
    status, err = run_cli(capsys, "train", str(config), "--quiet")
    assert status == 2 and "come out as padding and unknown words alone" in err and "min_freq" in err
    assert not (tmp_path / "runs").exists()


def test_a_class_difference_names_the_first_difference_however_many_classes():
    from transmodal.checkpoint import class_difference

    classes = [f"class {i}" for i in range(100)]
    renamed = [*classes[:50], "class 50 (new)", *classes[51:]]
    assert class_difference(classes, list(classes)) is None
    assert class_difference(classes, renamed) == ("the classes ['class 50'] of the checkpoint are not in the data, "
                                                  "['class 50 (new)'] of the data are not in the checkpoint")
    swapped = [classes[1], classes[0], *classes[2:]]
    assert "output 0 is 'class 0' in the checkpoint, 'class 1' in the data" in class_difference(classes, swapped)
    assert class_difference(classes, [*classes, *classes[:1]]) == "the checkpoint has 100 classes, the data 101"
