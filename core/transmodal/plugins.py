"""Plugin discovery: the built-in plugin plus every ``transmodal`` entry point, each loaded on its own.

pluggy's ``load_setuptools_entrypoints`` stops at the first plugin that fails to import; here a broken
plugin costs only its own components and a warning that says how to remove it.
"""

from __future__ import annotations

import importlib
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy
from pydantic import BaseModel

from transmodal import hookspecs
from transmodal.errors import PluginLoadError
from transmodal.registry import KINDS, Component, NoParams, Registry

ENTRY_POINT_GROUP = "transmodal"
CORE_DISTRIBUTION = "transmodal"
# The core's own plugins: modules with hook implementations, registered like installed plugins.
BUILTIN_PLUGINS: tuple[str, ...] = ("transmodal.builtin", "transmodal.builtin.adaptation")

# hook name for each kind: register_<plural>
HOOK_FOR_KIND: dict[str, str] = {kind: f"register_{kind}s" for kind in KINDS}
HOOK_FOR_KIND["strategy"] = "register_strategies"


class PluginWarning(UserWarning):
    """A plugin could not be loaded; the rest of transmodal works without it."""


@dataclass(frozen=True)
class PluginFailure:
    distribution: str
    version: str
    error: str

    def describe(self) -> str:
        return (
            f"Plugin {self.distribution} {self.version} failed to load: {self.error}. "
            f"Its components are unavailable; the rest works. To remove it: pip uninstall {self.distribution} "
            f"(or set TRANSMODAL_DISABLE_PLUGINS={self.distribution})."
        )


@dataclass
class PluginInfo:
    distribution: str
    version: str
    registered: dict[str, list[str]] = field(default_factory=dict)


def _env_names(variable: str) -> set[str] | None:
    value = os.environ.get(variable)
    if value is None:
        return None
    return {name.strip() for name in value.split(",") if name.strip()}


def _strict() -> bool:
    return os.environ.get("TRANSMODAL_STRICT_PLUGINS", "").strip().lower() in {"1", "true", "yes", "on"}


def _describe_error(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


class Plugins:
    """The loaded plugins and the registries they filled."""

    def __init__(
        self,
        entry_points: Iterable[metadata.EntryPoint] | None = None,
        extra_plugins: Iterable[tuple[str, Any]] = (),
        include_builtin: bool = True,
    ) -> None:
        self.manager = pluggy.PluginManager(hookspecs.PROJECT)
        self.manager.add_hookspecs(hookspecs)
        self.registries: dict[str, Registry] = {
            kind: Registry(kind, failure_notes=self._failure_notes) for kind in KINDS
        }
        self.failures: list[PluginFailure] = []
        self.infos: dict[str, PluginInfo] = {}
        self._strict = _strict()

        if include_builtin:
            for module in BUILTIN_PLUGINS:
                self._register_plugin(CORE_DISTRIBUTION, _version_of(CORE_DISTRIBUTION), importlib.import_module(module))
        for distribution, plugin in extra_plugins:
            self._register_plugin(distribution, _version_of(distribution), plugin)
        if entry_points is None:
            entry_points = metadata.entry_points(group=ENTRY_POINT_GROUP)
        self._load_entry_points(entry_points)

    # -- loading ------------------------------------------------------------------------------------------

    def _load_entry_points(self, entry_points: Iterable[metadata.EntryPoint]) -> None:
        allow = _env_names("TRANSMODAL_LOAD_PLUGINS")
        block = _env_names("TRANSMODAL_DISABLE_PLUGINS") or set()
        for entry_point in entry_points:
            distribution = entry_point.dist.name if entry_point.dist is not None else entry_point.name
            if (allow is not None and distribution not in allow) or distribution in block:
                continue
            version = entry_point.dist.version if entry_point.dist is not None else "unknown"
            try:
                plugin = entry_point.load()
            except Exception as error:  # a broken plugin must not stop the others
                self._record_failure(distribution, version, error)
                continue
            self._register_plugin(distribution, version, plugin)

    def _register_plugin(self, distribution: str, version: str, plugin: Any) -> None:
        """Run the plugin's registration hooks; commit its components only if all of them succeed."""
        staged: list[Component] = []
        try:
            self.manager.register(plugin)
            for kind in KINDS:
                caller = getattr(self.manager.hook, HOOK_FOR_KIND[kind])
                for impl in caller.get_hookimpls():
                    if impl.plugin is plugin:
                        impl.function(register=self._register_callback(kind, distribution, staged))
        except Exception as error:
            if self.manager.is_registered(plugin):
                self.manager.unregister(plugin)
            self._record_failure(distribution, version, error)
            return
        info = self.infos.setdefault(distribution, PluginInfo(distribution, version))
        for component in staged:
            self.registries[component.kind].add(component)
            info.registered.setdefault(component.kind, []).append(component.name)

    @staticmethod
    def _register_callback(kind: str, distribution: str, staged: list[Component]) -> hookspecs.Register:
        def register(
            name: str,
            factory: Any,
            params: type[BaseModel] = NoParams,
            description: str = "",
        ) -> None:
            if not isinstance(name, str) or not name:
                raise TypeError(f"{kind} names must be non-empty strings, got {name!r}")
            if not (callable(factory) or (isinstance(factory, str) and ":" in factory)):
                raise TypeError(f"{kind} '{name}': factory must be a callable or a 'module:attr' string")
            if params.model_config.get("extra") != "forbid":
                raise TypeError(f"{kind} '{name}': its parameter model must set extra='forbid'")
            staged.append(Component(kind, name, factory, params, description.strip(), distribution))

        return register

    def _record_failure(self, distribution: str, version: str, error: BaseException) -> None:
        failure = PluginFailure(distribution, version, _describe_error(error))
        if self._strict:
            raise PluginLoadError(failure.describe() + " (TRANSMODAL_STRICT_PLUGINS is set)") from error
        self.failures.append(failure)
        warnings.warn(failure.describe(), PluginWarning, stacklevel=2)

    def _failure_notes(self) -> list[str]:
        return [f"Note: {failure.describe()}" for failure in self.failures]

    # -- lookup -------------------------------------------------------------------------------------------

    def registry(self, kind: str) -> Registry:
        return self.registries[kind]

    def get(self, kind: str, name: str) -> Component:
        return self.registries[kind].get(name)

    def find(self, name: str) -> list[Component]:
        """Every component with this name, whatever its kind."""
        return [reg.components[name] for reg in self.registries.values() if name in reg]


def _version_of(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "unknown"


_loaded: Plugins | None = None


def get_plugins() -> Plugins:
    """The process-wide plugins, loaded on first use."""
    global _loaded
    if _loaded is None:
        _loaded = Plugins()
    return _loaded


def reset_plugins(plugins: Plugins | None = None) -> None:
    """Replace (or forget, to reload on next use) the process-wide plugins; for tests and embedding."""
    global _loaded
    _loaded = plugins
