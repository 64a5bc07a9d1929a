"""The listing and validation commands start without importing torch (it costs seconds on every call), and none
imports matplotlib (only ``report`` draws, when it runs) or Hugging Face ``datasets`` (only ``hf-dataset`` reads
with it, when it builds)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import tiny_experiment_dict

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

# Runs the CLI in a fresh interpreter, then reports which heavy modules the command imported.
PROBE = """
import contextlib, io, json, sys
from transmodal.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    try:
        code = main(sys.argv[1:])
    except SystemExit as exit:  # --help
        code = exit.code
print(json.dumps({"code": code, "torch": "torch" in sys.modules, "numpy": "numpy" in sys.modules,
                  "matplotlib": "matplotlib" in sys.modules, "datasets": "datasets" in sys.modules}))
"""


@pytest.mark.parametrize("args", [
    ["--help"],
    ["report", "--help"],
    ["rank", "--help"],
    ["components"],
    ["components", "fusion", "c*"],
    ["plugins"],
    ["config", "validate", str(EXAMPLES / "shapes_fused.yaml")],
    ["config", "validate", str(EXAMPLES / "shapes_fused.yaml"), "--set", "model.fusion={name: tensor, project: 8}"],
    ["config", "validate"],
    ["config", "schema"],
    ["compare", "--help"],
])
def test_command_does_not_import_torch(args: list[str]):
    result = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=120)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"code": 0, "torch": False, "numpy": False, "matplotlib": False, "datasets": False}, \
        result.stderr


def test_a_command_that_imports_torch_does_not_warn_about_numpy(tmp_path: Path):
    """torch warns "Failed to initialize NumPy" at import where NumPy is missing (the core alone): nothing in the
    core needs NumPy, so a training command must not print it. NumPy is made unimportable, installed or not."""
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_experiment_dict(tmp_path, "trainer.epochs=1")))
    probe = ("import sys; sys.modules['numpy'] = None\n"
             "from transmodal.cli import main\n"
             "code = main(sys.argv[1:])\n"
             "assert 'torch' in sys.modules\n"
             "sys.exit(code)")
    result = subprocess.run([sys.executable, "-c", probe, "train", str(config), "--quiet"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_python_dash_m_runs_the_cli():
    result = subprocess.run([sys.executable, "-m", "transmodal", "components", "fusion", "concat"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "concat" in result.stdout


def test_every_public_name_resolves():
    import transmodal

    for name in transmodal.__all__:
        assert getattr(transmodal, name) is not None, name
    assert transmodal.Experiment.__module__ == "transmodal.config"
    assert set(transmodal.__all__) <= set(dir(transmodal))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        transmodal.nope  # noqa: B018
