"""Registries and plugin loading: isolation of broken plugins, switches, and errors that help."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import BaseModel

import transmodal
from transmodal.builtin.fusions import MeanParams
from transmodal.errors import ComponentBuildError, DuplicateComponentError, PluginLoadError, UnknownComponentError
from transmodal.plugins import Plugins, PluginWarning, get_plugins
from transmodal.registry import FIRST_PARTY_NEEDS, FIRST_PARTY_PROVIDERS


class GoodPlugin:
    @transmodal.hookimpl
    def register_fusions(self, register: Any) -> None:
        register("good-fusion", "transmodal.builtin.fusions:build_mean", MeanParams, "A fusion from a plugin.")

    @transmodal.hookimpl
    def register_strategies(self, register: Any) -> None:
        register("good-strategy", lambda params: None, description="A strategy from a plugin.")


class FailsHalfway:
    """Registers one component, then raises: none of its components may remain."""

    @transmodal.hookimpl
    def register_fusions(self, register: Any) -> None:
        register("half-fusion", "x:y")
        raise RuntimeError("registration exploded")


class DuplicateConcat:
    @transmodal.hookimpl
    def register_fusions(self, register: Any) -> None:
        register("concat", "x:y", description="clashes with the core's concat")
        register("dup-own", "transmodal.builtin.fusions:build_mean", MeanParams)


def entry_point(distribution: str, load: Any, version: str = "1.2.3") -> SimpleNamespace:
    """Stands in for importlib.metadata.EntryPoint (only .dist, .name and .load() are used)."""
    return SimpleNamespace(name=distribution, dist=SimpleNamespace(name=distribution, version=version), load=load)


def broken_load() -> Any:
    raise ImportError("No module named 'missing_dependency'")


def test_builtin_components_register_through_the_hooks():
    plugins = Plugins(entry_points=[])
    assert {"concat", "mean"} <= set(plugins.infos["transmodal"].registered["fusion"])
    assert plugins.get("dataset", "synthetic-shapes").distribution == "transmodal"
    assert plugins.registry("strategy").names("*") == sorted(plugins.registry("strategy").components)


def test_listing_with_wildcards():
    plugins = Plugins(entry_points=[])
    assert plugins.registry("encoder").names("s*") == ["small-cnn"]
    assert plugins.registry("strategy").names("*ann") == ["dann"]
    assert plugins.registry("fusion").names("zzz*") == []


def test_plugin_from_an_entry_point_is_loaded_and_its_components_build():
    plugins = Plugins(entry_points=[entry_point("transmodal-good", lambda: GoodPlugin())])
    component = plugins.get("fusion", "good-fusion")
    assert component.distribution == "transmodal-good"
    assert plugins.infos["transmodal-good"].version == "1.2.3"
    fusion = component.build({"image": 3, "text": 5}, dim=7)
    assert fusion.output_dim == 7


def test_broken_entry_point_warns_once_and_the_rest_keeps_working():
    with pytest.warns(PluginWarning) as caught:
        plugins = Plugins(entry_points=[
            entry_point("transmodal-broken", broken_load, version="0.3"),
            entry_point("transmodal-good", lambda: GoodPlugin()),
        ])
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "transmodal-broken 0.3" in message
    assert "missing_dependency" in message
    assert "pip uninstall transmodal-broken" in message
    assert "good-fusion" in plugins.registry("fusion")
    assert [f.distribution for f in plugins.failures] == ["transmodal-broken"]


def test_a_plugin_failing_during_registration_leaves_nothing_behind():
    with pytest.warns(PluginWarning, match="registration exploded"):
        plugins = Plugins(entry_points=[entry_point("transmodal-half", lambda: FailsHalfway())])
    assert "half-fusion" not in plugins.registry("fusion")
    assert "transmodal-half" not in plugins.infos


def test_strict_mode_turns_a_broken_plugin_into_an_error(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TRANSMODAL_STRICT_PLUGINS", "1")
    with pytest.raises(PluginLoadError, match="transmodal-broken") as raised:
        Plugins(entry_points=[entry_point("transmodal-broken", broken_load)])
    assert "the rest works" not in str(raised.value)
    assert "TRANSMODAL_STRICT_PLUGINS is set, so this stops transmodal" in str(raised.value)


def test_a_plugin_given_in_process_and_installed_loads_once(monkeypatch: pytest.MonkeyPatch):
    """A plugin's own tests pass its module to extra_plugins while its package is installed (pip install -e .):
    the entry point then finds the module already registered, which is neither a failure nor a clash."""
    monkeypatch.setenv("TRANSMODAL_STRICT_PLUGINS", "1")
    plugin = GoodPlugin()
    plugins = Plugins(extra_plugins=[("transmodal-good", plugin)],
                      entry_points=[entry_point("transmodal-good", lambda: plugin)])
    assert plugins.failures == [] and plugins.infos["transmodal-good"].registered["fusion"] == ["good-fusion"]


def test_allowlist_and_blocklist(monkeypatch: pytest.MonkeyPatch):
    points = [entry_point("transmodal-good", lambda: GoodPlugin()), entry_point("transmodal-broken", broken_load)]
    monkeypatch.setenv("TRANSMODAL_LOAD_PLUGINS", "transmodal-good")
    assert "good-fusion" in Plugins(entry_points=points).registry("fusion")

    monkeypatch.setenv("TRANSMODAL_LOAD_PLUGINS", "")  # empty: no plugin at all, the core still works
    plugins = Plugins(entry_points=points)
    assert "good-fusion" not in plugins.registry("fusion")
    assert "concat" in plugins.registry("fusion")

    monkeypatch.delenv("TRANSMODAL_LOAD_PLUGINS")
    monkeypatch.setenv("TRANSMODAL_DISABLE_PLUGINS", "transmodal-broken")
    plugins = Plugins(entry_points=points)
    assert plugins.failures == [] and "good-fusion" in plugins.registry("fusion")


def test_a_clash_costs_only_the_clashing_component_and_the_first_registered_wins():
    with pytest.warns(PluginWarning) as caught:
        plugins = Plugins(entry_points=[entry_point("transmodal-dup", lambda: DuplicateConcat())])
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "fusion 'concat' of plugin transmodal-dup is not registered: transmodal already registers" in message
    assert "TRANSMODAL_DISABLE_PLUGINS=transmodal-dup" in message
    assert plugins.get("fusion", "concat").distribution == "transmodal"
    assert plugins.get("fusion", "dup-own").distribution == "transmodal-dup"  # its other component is kept
    assert plugins.infos["transmodal-dup"].registered == {"fusion": ["dup-own"]}


def test_a_registry_used_directly_refuses_a_duplicate_naming_both_providers():
    plugins = Plugins(entry_points=[])
    concat = plugins.get("fusion", "concat")
    with pytest.raises(DuplicateComponentError, match="by transmodal and by other"):
        plugins.registry("fusion").add(replace(concat, distribution="other"))


def test_strict_mode_turns_a_clash_into_an_error(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TRANSMODAL_STRICT_PLUGINS", "1")
    with pytest.raises(PluginLoadError, match="transmodal already registers that name") as raised:
        Plugins(entry_points=[entry_point("transmodal-dup", lambda: DuplicateConcat())])
    assert "still load" not in str(raised.value) and "the rest works" not in str(raised.value)


def test_unknown_name_suggests_close_matches_and_how_to_list():
    plugins = Plugins(entry_points=[])
    with pytest.raises(UnknownComponentError) as raised:
        plugins.get("fusion", "concatt")
    message = str(raised.value)
    assert message.startswith("Unknown fusion 'concatt'. Did you mean: concat?")
    assert "transmodal components fusion" in message
    with pytest.raises(UnknownComponentError) as raised:
        plugins.get("fusion", "qqqq")
    assert "Did you mean" not in str(raised.value)


def test_unknown_first_party_name_says_what_to_install():
    plugins = Plugins(entry_points=[])
    with pytest.raises(UnknownComponentError) as raised:
        plugins.get("backbone", "resnet18")
    message = str(raised.value)
    assert "'resnet18' is provided by the plugin transmodal-vision." in message
    assert "pip install -e plugins/transmodal-vision" in message  # what works from a checkout (not on PyPI)



def test_the_install_hint_of_a_plugin_that_needs_another_installs_both():
    with pytest.raises(UnknownComponentError) as raised:
        Plugins(entry_points=[]).get("dataset", "hf-dataset")
    assert "pip install -e plugins/transmodal-text -e plugins/transmodal-hf " in str(raised.value)
    root = Path(__file__).resolve().parents[1]
    for plugin, needs in FIRST_PARTY_NEEDS.items():  # the table says what the plugins' own metadata says
        pyproject = (root / "plugins" / plugin / "pyproject.toml").read_text()
        assert all(f'"{need}>=' in pyproject for need in needs), plugin



def test_install_hints_name_plugin_folders_of_the_checkout():
    root = Path(__file__).resolve().parents[1]
    for provider in {p for names in FIRST_PARTY_PROVIDERS.values() for p in names.values()}:
        assert f'name = "{provider}"' in (root / "plugins" / provider / "pyproject.toml").read_text()


def test_every_component_of_an_installed_first_party_plugin_has_its_install_hint():
    """A name missing from FIRST_PARTY_PROVIDERS would get no hint when its plugin is absent or switched off."""
    first_party = {path.name for path in (Path(__file__).resolve().parents[1] / "plugins").iterdir()}
    installed = {d: info for d, info in get_plugins().infos.items() if d in first_party}
    if not installed:
        pytest.skip("no first-party plugin is installed")
    missing = [(d, kind, name) for d, info in installed.items() for kind, names in info.registered.items()
               for name in names if FIRST_PARTY_PROVIDERS.get(kind, {}).get(name) != d]
    assert missing == []


def test_unknown_name_mentions_plugins_that_failed():
    with pytest.warns(PluginWarning):
        plugins = Plugins(entry_points=[entry_point("transmodal-broken", broken_load)])
    with pytest.raises(UnknownComponentError, match="transmodal-broken 1.2.3 failed to load"):
        plugins.get("fusion", "something")


class Loose(BaseModel):
    width: int = 1


@pytest.mark.parametrize("params, expected", [
    (Loose, "parameter model Loose must set model_config = ConfigDict(extra='forbid')"),
    ({"width": 1}, "params must be a pydantic model class"),
    (MeanParams(), "params must be a pydantic model class"),
])
def test_a_rejected_component_costs_only_itself(params: Any, expected: str):
    class HalfGoodPlugin:
        @transmodal.hookimpl
        def register_fusions(self, register: Any) -> None:
            register("bad", "x:y", params)
            register("fine", "transmodal.builtin.fusions:build_mean", MeanParams)

    with pytest.warns(PluginWarning) as caught:
        plugins = Plugins(entry_points=[entry_point("transmodal-half-good", lambda: HalfGoodPlugin())])
    assert len(caught) == 1
    message = str(caught[0].message)
    assert message.startswith("fusion 'bad' of plugin transmodal-half-good is not registered")
    assert expected in message
    assert "bad" not in plugins.registry("fusion") and "fine" in plugins.registry("fusion")


def test_strict_mode_refuses_a_rejected_component_in_one_message(monkeypatch: pytest.MonkeyPatch):
    class NotPydantic:
        @transmodal.hookimpl
        def register_heads(self, register: Any) -> None:
            register("dict-params", "x:y", {"width": 1})

    monkeypatch.setenv("TRANSMODAL_STRICT_PLUGINS", "1")
    with pytest.raises(PluginLoadError) as raised:
        Plugins(entry_points=[entry_point("transmodal-dict", lambda: NotPydantic())])
    message = str(raised.value)
    assert message.startswith("head 'dict-params' of plugin transmodal-dict is not registered: params must be")
    assert message.count("TRANSMODAL_STRICT_PLUGINS is set") == 1 and "still load" not in message


def test_switches_accept_distribution_entry_point_and_short_names(monkeypatch: pytest.MonkeyPatch):
    point = SimpleNamespace(name="vision_ep", dist=SimpleNamespace(name="Transmodal_Vision", version="1"),
                            load=lambda: GoodPlugin())
    for value in ("transmodal-vision", "Transmodal_Vision", "vision_ep", "vision"):
        monkeypatch.setenv("TRANSMODAL_DISABLE_PLUGINS", value)
        assert "good-fusion" not in Plugins(entry_points=[point]).registry("fusion"), value
        monkeypatch.setenv("TRANSMODAL_LOAD_PLUGINS", value)
        monkeypatch.delenv("TRANSMODAL_DISABLE_PLUGINS")
        assert "good-fusion" in Plugins(entry_points=[point]).registry("fusion"), value
        monkeypatch.delenv("TRANSMODAL_LOAD_PLUGINS")


@pytest.mark.parametrize("variable", ["TRANSMODAL_DISABLE_PLUGINS", "TRANSMODAL_LOAD_PLUGINS"])
def test_a_switch_value_that_matches_nothing_is_named(monkeypatch: pytest.MonkeyPatch, variable: str):
    monkeypatch.setenv(variable, "transmodal-goood")
    with pytest.warns(PluginWarning) as caught:
        Plugins(entry_points=[entry_point("transmodal-good", lambda: GoodPlugin())])
    message = str(caught[0].message)
    effect = "loads nothing" if variable == "TRANSMODAL_LOAD_PLUGINS" else "disables nothing"
    assert f"{variable}: 'transmodal-goood' matches no installed plugin, so it {effect}" in message
    assert "did you mean transmodal-good?" in message


def test_unknown_name_of_a_disabled_first_party_plugin_says_so(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TRANSMODAL_DISABLE_PLUGINS", "vision")
    point = entry_point("transmodal-vision", lambda: GoodPlugin())
    with pytest.raises(UnknownComponentError) as raised:
        Plugins(entry_points=[point]).get("backbone", "resnet18")
    message = str(raised.value)
    assert "installed but disabled by TRANSMODAL_DISABLE_PLUGINS" in message
    assert "pip install" not in message


def test_unknown_name_while_a_third_party_plugin_is_switched_off_names_that_plugin(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TRANSMODAL_LOAD_PLUGINS", "transmodal-good")
    points = [entry_point("transmodal-good", lambda: GoodPlugin()), entry_point("acme-sequences", lambda: 1 / 0)]
    with pytest.raises(UnknownComponentError) as raised:
        Plugins(entry_points=points).get("dataset", "toy-sequences")  # acme's, maybe: nothing says without loading it
    assert "kept out, which may provide it: acme-sequences (not listed in TRANSMODAL_LOAD_PLUGINS" in str(raised.value)


class RaisingFactory:
    @transmodal.hookimpl
    def register_fusions(self, register: Any) -> None:
        register("raises", lambda params, input_dims: 1 / 0, description="A factory with a bug.")


def test_an_exception_in_a_factory_names_component_and_plugin():
    plugins = Plugins(entry_points=[entry_point("transmodal-buggy", lambda: RaisingFactory())])
    with pytest.raises(ComponentBuildError) as raised:
        plugins.get("fusion", "raises").build({"image": 4})
    message = str(raised.value)
    assert "fusion 'raises' from transmodal-buggy failed while being built: ZeroDivisionError" in message
    assert "--debug" in message
    assert isinstance(raised.value.__cause__, ZeroDivisionError)


def test_lazy_factory_is_not_imported_at_discovery():
    class NotImportable:
        @transmodal.hookimpl
        def register_encoders(self, register: Any) -> None:
            register("ghost", "module_that_does_not_exist:build")

    plugins = Plugins(entry_points=[entry_point("transmodal-ghost", lambda: NotImportable())])
    assert "ghost" in plugins.registry("encoder")  # registered without importing its module
    with pytest.raises(ModuleNotFoundError):
        plugins.get("encoder", "ghost").load_factory()
