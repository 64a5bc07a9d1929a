"""Plugin discovery: the built-in plugin plus every ``transmodal`` entry point, each loaded on its own.

pluggy's ``load_setuptools_entrypoints`` stops at the first plugin that fails to import; here a broken
plugin costs only its own components, and a rejected or clashing component only itself, each with one warning
that says what to do. ``TRANSMODAL_STRICT_PLUGINS`` turns every such warning into an error.
"""

from __future__ import annotations

import difflib
import importlib
import os
import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy
from pydantic import BaseModel

from transmodal import hookspecs
from transmodal.errors import DuplicateComponentError, PluginLoadError
from transmodal.registry import KINDS, Component, NoParams, Registry

ENTRY_POINT_GROUP = "transmodal"
CORE_DISTRIBUTION = "transmodal"
# The core's own plugins: modules with hook implementations, registered like installed plugins.
BUILTIN_PLUGINS: tuple[str, ...] = ("transmodal.builtin", "transmodal.builtin.adaptation")
LOAD_VARIABLE, DISABLE_VARIABLE, STRICT_VARIABLE = (
    "TRANSMODAL_LOAD_PLUGINS", "TRANSMODAL_DISABLE_PLUGINS", "TRANSMODAL_STRICT_PLUGINS")

# hook name for each kind: register_<plural>
HOOK_FOR_KIND: dict[str, str] = {kind: f"register_{kind}s" for kind in KINDS}
HOOK_FOR_KIND["strategy"] = "register_strategies"


class PluginWarning(UserWarning):
    """A plugin or one of its components could not be loaded; the rest of transmodal works without it."""


@dataclass(frozen=True)
class PluginFailure:
    distribution: str
    version: str
    error: str

    def describe(self, strict: bool = False) -> str:
        consequence = (f"{STRICT_VARIABLE} is set, so this stops transmodal" if strict
                       else "Its components are unavailable; the rest works")
        return (f"plugin {self.distribution} {self.version} failed to load: {self.error}. {consequence}. "
                f"To remove it: pip uninstall {self.distribution}, or set {DISABLE_VARIABLE}={self.distribution}")


@dataclass
class PluginInfo:
    distribution: str
    version: str
    registered: dict[str, list[str]] = field(default_factory=dict)


def normalize(name: str) -> str:
    """A distribution or entry-point name as PEP 503 compares them: "Transmodal_Vision" is "transmodal-vision"."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class _Candidate:
    """An entry point, and the names a user may give it in the environment switches."""

    entry_point: Any  # importlib.metadata.EntryPoint (only .name, .dist and .load() are used)
    distribution: str
    version: str

    def names(self) -> set[str]:
        full = {normalize(self.entry_point.name), normalize(self.distribution)}
        return full | {name.removeprefix("transmodal-") for name in full}


def _env_names(variable: str) -> list[str] | None:
    value = os.environ.get(variable)
    if value is None:
        return None
    return [name.strip() for name in value.split(",") if name.strip()]


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
            kind: Registry(kind, failure_notes=self._failure_notes, skipped=lambda: self.skipped) for kind in KINDS
        }
        self.failures: list[PluginFailure] = []
        self.infos: dict[str, PluginInfo] = {}
        # Installed distributions that an environment switch kept out: normalized name -> why, and what to change.
        self.skipped: dict[str, str] = {}
        self._strict = os.environ.get(STRICT_VARIABLE, "").strip().lower() in {"1", "true", "yes", "on"}

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
        candidates = [
            _Candidate(point, point.dist.name if point.dist is not None else point.name,
                       point.dist.version if point.dist is not None else "unknown")
            for point in entry_points
        ]
        allow = self._selected(LOAD_VARIABLE, candidates)
        block = self._selected(DISABLE_VARIABLE, candidates) or set()
        for candidate in candidates:
            distribution = candidate.distribution
            if distribution in block:
                self.skipped[normalize(distribution)] = (f"disabled by {DISABLE_VARIABLE}; remove it from that "
                                                         f"variable to use it")
                continue
            if allow is not None and distribution not in allow:
                self.skipped[normalize(distribution)] = (f"not listed in {LOAD_VARIABLE}; add {distribution} to "
                                                         f"that variable to use it")
                continue
            try:
                plugin = candidate.entry_point.load()
            except Exception as error:  # a broken plugin must not stop the others
                self._record_failure(distribution, candidate.version, error)
                continue
            if self.manager.is_registered(plugin):  # already given in-process (extra_plugins, as tests do)
                continue
            self._register_plugin(distribution, candidate.version, plugin)

    def _selected(self, variable: str, candidates: list[_Candidate]) -> set[str] | None:
        """The distributions an environment switch names (by distribution, entry-point or short name); warns
        about each value that names no installed plugin, or several."""
        values = _env_names(variable)
        if values is None:
            return None
        selected: set[str] = set()
        # An allowlist entry that matches nothing still narrows what loads; a blocklist entry does nothing.
        effect = "loads nothing" if variable == LOAD_VARIABLE else "disables nothing"
        for value in values:
            matches = sorted({c.distribution for c in candidates if normalize(value) in c.names()})
            if len(matches) == 1:
                selected.add(matches[0])
                continue
            installed = ", ".join(sorted({c.distribution for c in candidates})) or "none"
            close = difflib.get_close_matches(normalize(value), [n for c in candidates for n in c.names()], n=1)
            problem = (f"'{value}' matches several plugins ({', '.join(matches)}); give the full name" if matches
                       else f"'{value}' matches no installed plugin, so it {effect}"
                       + (f" (did you mean {close[0]}?)" if close else ""))
            self._warn(f"{variable}: {problem}. Installed plugins: {installed}")
        return selected

    def _register_plugin(self, distribution: str, version: str, plugin: Any) -> None:
        """Run the plugin's registration hooks. A hook that raises fails the whole plugin (nothing of it is kept);
        a component that ``register`` rejects, or whose name is taken, costs only that component."""
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
            if isinstance(error, PluginLoadError):  # strict mode refused a component: already a full message
                raise
            self._record_failure(distribution, version, error)
            return
        info = self.infos.setdefault(distribution, PluginInfo(distribution, version))
        for component in staged:
            try:
                self.registries[component.kind].add(component)
            except DuplicateComponentError:
                kept = self.registries[component.kind].components[component.name].distribution
                self._warn(
                    f"{component.kind} '{component.name}' of plugin {distribution} is not registered: {kept} "
                    f"already registers that name, and the first registered wins. Rename it in {distribution}, "
                    f"or set {DISABLE_VARIABLE}={distribution} to do without that plugin"
                )
                continue
            info.registered.setdefault(component.kind, []).append(component.name)

    def _register_callback(self, kind: str, distribution: str, staged: list[Component]) -> hookspecs.Register:
        def register(
            name: str,
            factory: Any,
            params: type[BaseModel] = NoParams,
            description: str = "",
        ) -> None:
            problem = _registration_problem(name, factory, params, description)
            if problem is not None:
                self._warn(f"{kind} {name!r} of plugin {distribution} is not registered: {problem}. "
                           f"This is a bug in {distribution}", lenient_note="its other components still load")
                return
            staged.append(Component(kind, name, factory, params, description.strip(), distribution))

        return register

    def _record_failure(self, distribution: str, version: str, error: BaseException) -> None:
        failure = PluginFailure(distribution, version, _describe_error(error))
        if self._strict:
            raise PluginLoadError(failure.describe(strict=True)) from error
        self.failures.append(failure)
        warnings.warn(failure.describe(), PluginWarning, stacklevel=2)

    def _warn(self, message: str, lenient_note: str = "") -> None:
        """Warn, or in strict mode stop; ``lenient_note`` says what still works, so it is left out then."""
        if self._strict:
            raise PluginLoadError(f"{message}. {STRICT_VARIABLE} is set, so this stops transmodal")
        warnings.warn(f"{message}; {lenient_note}" if lenient_note else message, PluginWarning, stacklevel=3)

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


def _registration_problem(name: Any, factory: Any, params: Any, description: Any) -> str | None:
    """What is wrong with a ``register`` call's arguments, or None."""
    if not isinstance(name, str) or not name.strip():
        return f"its name must be a non-empty string, got {name!r}"
    if not (callable(factory) or (isinstance(factory, str) and ":" in factory)):
        return f"its factory must be a callable or a 'module:attr' string, got {factory!r}"
    if not (isinstance(params, type) and issubclass(params, BaseModel)):
        return (f"params must be a pydantic model class (a subclass of pydantic.BaseModel with "
                f"model_config = ConfigDict(extra='forbid')), got {type(params).__name__} {params!r}")
    if params.model_config.get("extra") != "forbid":
        return f"its parameter model {params.__name__} must set model_config = ConfigDict(extra='forbid')"
    if not isinstance(description, str):
        return f"its description must be a string, got {type(description).__name__}"
    return None


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
