"""What the command line says about plugins: a clash or a broken plugin costs one plain warning line, never the
command; a bug in a plugin's factory exits 1 naming the plugin, with the traceback only on request."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from conftest import tiny_experiment_dict
from test_plugins import DuplicateConcat, RaisingFactory, broken_load, entry_point
from transmodal import plugins as plugin_loading
from transmodal.cli import main


@pytest.fixture
def installed(monkeypatch: pytest.MonkeyPatch):
    """``installed(*entry_points)``: what the CLI discovers as installed plugins."""

    def install(*points: Any) -> None:
        monkeypatch.setattr(plugin_loading.metadata, "entry_points", lambda group: list(points))

    return install


@pytest.mark.parametrize("command", [["plugins"], ["components"], ["components", "fusion", "concat"]])
def test_a_clash_never_stops_a_command(installed, capsys: pytest.CaptureFixture, command: list[str]):
    installed(entry_point("transmodal-dup", lambda: DuplicateConcat()))
    assert main(command) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("transmodal: warning: fusion 'concat' of plugin transmodal-dup")
    assert "PluginWarning" not in err and "warnings.warn" not in err


def test_strict_mode_makes_a_clash_exit_1(installed, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TRANSMODAL_STRICT_PLUGINS", "1")
    installed(entry_point("transmodal-dup", lambda: DuplicateConcat()))
    assert main(["plugins"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: fusion 'concat' of plugin transmodal-dup") and "Traceback" not in err


def test_a_broken_plugin_is_one_plain_line(installed, capsys: pytest.CaptureFixture):
    installed(entry_point("transmodal-broken", broken_load, version="0.3"))
    assert main(["plugins"]) == 0
    captured = capsys.readouterr()
    assert "FAILED transmodal-broken 0.3" in captured.out
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("transmodal: warning: plugin transmodal-broken 0.3 failed to load")
    assert lines[0].endswith("TRANSMODAL_DISABLE_PLUGINS=transmodal-broken")


@pytest.mark.parametrize("debug", [False, True])
def test_a_bug_in_a_factory_exits_1_naming_the_plugin(tmp_path, capsys: pytest.CaptureFixture, debug: bool):
    plugin_loading.reset_plugins(plugin_loading.Plugins(extra_plugins=[("transmodal-buggy", RaisingFactory())]))
    config = tmp_path / "buggy.yaml"
    config.write_text(yaml.safe_dump(tiny_experiment_dict(tmp_path, "model.fusion={name: raises}")))
    assert main([*(["--debug"] if debug else []), "train", str(config), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "error: fusion 'raises' from transmodal-buggy failed while being built: ZeroDivisionError" in err
    assert ("Traceback" in err) == debug
