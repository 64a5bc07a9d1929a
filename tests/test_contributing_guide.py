"""CONTRIBUTING.md's plugin guide is complete and true: its code blocks, written out as a package and registered
in-process (as an installed entry point would be), train; every hook and every error class is documented."""

from __future__ import annotations

import importlib
import re
import runpy
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from transmodal import errors
from transmodal.plugins import HOOK_FOR_KIND, Plugins, reset_plugins

ROOT = Path(__file__).resolve().parents[1]
GUIDE = (ROOT / "CONTRIBUTING.md").read_text()
FILES = dict(re.findall(r"```\w+ file=(\S+)\n(.*?)```", GUIDE, flags=re.S))


@pytest.fixture
def guide_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name, code in FILES.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)  # the guide's script writes runs/ into the working directory
    yield tmp_path
    for module in [m for m in sys.modules if m.startswith("transmodal_blobs")]:
        del sys.modules[module]


def test_the_guide_has_the_files_of_a_plugin():
    assert {"pyproject.toml", "transmodal_blobs/plugin.py", "transmodal_blobs/components.py",
            "train_blobs.py"} <= set(FILES)


def test_the_guide_plugin_trains_through_its_own_entry_point(guide_package: Path):
    group = FILES["pyproject.toml"].split("[project.entry-points.transmodal]\n", 1)[1]
    module = re.match(r'\w+ = "([\w.]+)"', group).group(1)  # what discovery would import
    plugin = importlib.import_module(module)
    assert "transmodal_blobs.components" not in sys.modules  # discovery stays light
    plugins = Plugins(entry_points=[], extra_plugins=[("transmodal-blobs", plugin)])
    assert plugins.infos["transmodal-blobs"].registered == {
        "encoder": ["blobs-mlp"], "fusion": ["blobs-sum"], "dataset": ["blobs"]}
    reset_plugins(plugins)
    result = runpy.run_path(str(guide_package / "train_blobs.py"))
    summary, run_dir = result["summary"], result["run_dir"]
    assert summary["epochs"] == 2 and run_dir.parts[0] == "runs"
    assert (guide_package / run_dir / "summary.json").is_file()
    assert summary["best"]["target/test"]["accuracy"] > 1 / 3  # better than chance over the three classes


def test_every_hook_and_error_class_is_documented():
    for hook in HOOK_FOR_KIND.values():
        assert f"| `{hook}` |" in GUIDE, hook
    for name, value in vars(errors).items():
        if isinstance(value, type) and issubclass(value, errors.TransmodalError) and value.__bases__ != (Exception,):
            assert f"`{name}`" in GUIDE, name
    assert "register(name, factory, params=NoParams, description=\"\")" in GUIDE


@pytest.mark.parametrize("name, pyproject", [
    ("the guide", FILES["pyproject.toml"]),
    *[(path.parent.name, path.read_text()) for path in sorted(ROOT.glob("plugins/*/pyproject.toml"))],
    ("the template", (ROOT / "examples" / "plugin_template" / "pyproject.toml").read_text()),
])
def test_a_plugin_depending_on_transmodal_is_satisfied_by_the_installed_core(name: str, pyproject: str):
    """pip installs a plugin beside the core only if its requirement on the core names the core's distribution
    and admits its version (a plugin installed as published ones would be, with its dependencies)."""
    dependencies = re.search(r"^dependencies = \[(.*?)\]", pyproject, flags=re.S | re.M).group(1)
    requirements = [Requirement(text) for text in re.findall(r'"([^"]+)"', dependencies)]
    on_core = [r for r in requirements if r.name == "transmodal"]
    assert len(on_core) == 1, f"{name} must declare a dependency on transmodal"
    core = metadata.distribution(on_core[0].name)
    assert core.metadata["Name"] == "transmodal" and on_core[0].specifier.contains(core.version), name


def test_the_guides_validator_is_registered_by_name_scored_every_epoch_and_selects(tmp_path: Path):
    """The validator example of the guide, registered as a plugin would (no name set): the run selects with it,
    logs its score every epoch beside the built-in validators and reports its regret."""
    import json

    import transmodal
    from conftest import tiny_experiment_dict

    blocks = re.findall(r"```python\n(.*?)```", GUIDE, flags=re.S)
    block = next(code for code in blocks if "(transmodal.Validator)" in code)
    namespace: dict = {}
    exec(block, namespace)  # noqa: S102 - the guide's own code

    class ConfidencePlugin:
        @transmodal.hookimpl
        def register_validators(self, register):
            register("confidence", lambda params: namespace["Confidence"]())

    reset_plugins(Plugins(extra_plugins=[("transmodal-confidence", ConfidencePlugin())]))
    summary, run_dir = transmodal.train(tiny_experiment_dict(tmp_path, "validator.name=confidence"), quiet=True)
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert summary["selected_by"] == "confidence"
    assert all({"confidence", "source-val", "entropy"} <= set(record["validators"]) for record in history)
    assert summary["validators"]["by_validator"]["confidence"]["epoch"] == summary["best_epoch"]


def test_the_guides_plugin_tests_pass(guide_package: Path):
    block = next(code for code in re.findall(r"```python\n(.*?)```", GUIDE, flags=re.S) if "def test_" in code)
    namespace: dict = {}
    exec(block, namespace)  # noqa: S102 - the guide's own code
    tests = [name for name in namespace if name.startswith("test_") and name != "test_trains_end_to_end"]
    assert "test_a_wrong_parameter_is_refused_with_its_path" in tests
    for name in tests:
        namespace[name]()
