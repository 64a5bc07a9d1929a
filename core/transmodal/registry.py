"""Component registries: one per kind, names to lazy factories with validated parameters.

A component is registered with a factory given either as a callable or as a "module:attr" string, so that
discovering plugins imports nothing heavy: the module is imported only when the component is built.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict

from transmodal.errors import ComponentBuildError, DuplicateComponentError, TransmodalError, UnknownComponentError

KINDS: tuple[str, ...] = (
    "backbone",
    "encoder",
    "fusion",
    "head",
    "strategy",
    "dataset",
    "tokenizer",
    "validator",
)

# Names that first-party plugins provide, so that a core-only install can say what to pip install.
FIRST_PARTY_PROVIDERS: dict[str, dict[str, str]] = {
    "backbone": {
        name: "transmodal-vision"
        for name in (
            "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
            "resnext50_32x4d", "wide_resnet50_2", "torchvision",
        )
    } | {"timm": "transmodal-timm"},
    "dataset": {
        "cifar10": "transmodal-vision",
        "cifar100": "transmodal-vision",
        "image-folder": "transmodal-vision",
        "imdb": "transmodal-text",
        "text-csv": "transmodal-text",
        "audio-folder": "transmodal-audio",
        "glyphs": "transmodal-glyphs",
        "wordnet": "transmodal-wordnet",
        "hf-dataset": "transmodal-hf",
    },
    "encoder": {"lstm": "transmodal-text", "gru": "transmodal-text", "text-cnn": "transmodal-text",
                "hf-text": "transmodal-hf", "audio-cnn": "transmodal-audio"},
    "tokenizer": {"hf-word": "transmodal-text", "bpe": "transmodal-text", "wordpiece": "transmodal-text",
                  "tokenizer-file": "transmodal-text", "hf-tokenizer": "transmodal-hf"},
    "fusion": {
        "cross-attention": "transmodal-attention",
        "transformer": "transmodal-attention",
        "modality-attention": "transmodal-attention",
    },
    "strategy": {name: "transmodal-peft" for name in ("lora", "dora", "ia3")},
}

# First-party plugins that depend on others, which are not on PyPI either: installed together from the checkout.
FIRST_PARTY_NEEDS: dict[str, tuple[str, ...]] = {"transmodal-hf": ("transmodal-text",)}


class NoParams(BaseModel):
    """Parameter model of a component that takes no parameters."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class Component:
    kind: str
    name: str
    factory: Callable[..., Any] | str
    params: type[BaseModel]
    description: str
    distribution: str

    def load_factory(self) -> Callable[..., Any]:
        """Resolve a lazy "module:attr" factory (imports the module only now)."""
        if callable(self.factory):
            return self.factory
        module_name, _, attr = self.factory.partition(":")
        return getattr(importlib.import_module(module_name), attr)

    def create(self, params: BaseModel, *context: Any, **keywords: Any) -> Any:
        """Call the factory as ``factory(params, *context)``. Anything it raises other than a transmodal error is
        a bug of the component's provider, reported as such (with the original as ``__cause__``)."""
        try:
            return self.load_factory()(params, *context, **keywords)
        except TransmodalError:
            raise
        except Exception as error:
            raise ComponentBuildError(
                f"{self.kind} '{self.name}' from {self.distribution} failed while being built: "
                f"{type(error).__name__}: {error}. This is a bug in {self.distribution}, not in your config: report "
                f"it to its authors, or choose another {self.kind}. For the traceback, run with --debug "
                f"(or TRANSMODAL_DEBUG=1)."
            ) from error

    def build(self, *context: Any, **params: Any) -> Any:
        """Validate ``params`` against the component's model, then ``create`` it: the context comes first here
        (parameters are keywords), second in the factory's own signature."""
        return self.create(self.params.model_validate(params), *context)


@dataclass
class Registry:
    """Components of one kind, by name."""

    kind: str
    components: dict[str, Component] = field(default_factory=dict)
    # Set by the plugin manager so that lookup errors can mention plugins that failed to load, and say which
    # installed distributions an environment variable kept from loading (distribution -> why, and what to change).
    failure_notes: Callable[[], list[str]] = field(default=lambda: [])
    skipped: Callable[[], dict[str, str]] = field(default=lambda: {})

    def add(self, component: Component) -> None:
        existing = self.components.get(component.name)
        if existing is not None:
            raise DuplicateComponentError(
                f"{self.kind} '{component.name}' is registered twice: by {existing.distribution} "
                f"and by {component.distribution}"
            )
        self.components[component.name] = component

    def names(self, pattern: str = "*") -> list[str]:
        return sorted(name for name in self.components if fnmatch.fnmatchcase(name, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self.components

    def __iter__(self) -> Iterator[Component]:
        return iter(self.components[name] for name in sorted(self.components))

    def __len__(self) -> int:
        return len(self.components)

    def get(self, name: str) -> Component:
        try:
            return self.components[name]
        except KeyError:
            raise UnknownComponentError(self.unknown_message(name)) from None

    def unknown_message(self, name: str, also: tuple[Registry, ...] = ()) -> str:
        """What to say about a name none of ``self`` and ``also`` (registries searched with it) knows."""
        registries = (self, *also)
        lines = [f"Unknown {self.kind} '{name}'."]
        known = [known_name for registry in registries for known_name in registry.components]
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
        if close:
            lines[0] += f" Did you mean: {', '.join(close)}?"
        provider = next((FIRST_PARTY_PROVIDERS.get(r.kind, {}).get(name) for r in registries
                         if name in FIRST_PARTY_PROVIDERS.get(r.kind, {})), None)
        skipped_by = self.skipped().get(provider) if provider is not None else None
        if provider is not None and skipped_by is not None:
            lines.append(f"'{name}' is provided by the plugin {provider}, which is installed but {skipped_by}.")
        elif provider is not None:
            # The first-party plugins are not published on PyPI: installing from a checkout is what works.
            installs = " ".join(f"-e plugins/{plugin}" for plugin in (*FIRST_PARTY_NEEDS.get(provider, ()), provider))
            lines.append(f"'{name}' is provided by the plugin {provider}. From a transmodal checkout: "
                         f"pip install {installs} (or pip install {provider} from an index that has it)")
        elif self.skipped():  # a third party's component: which skipped plugin has it is unknown without loading
            lines.append("Installed plugins that an environment switch kept out, which may provide it: "
                         + "; ".join(f"{plugin} ({why})" for plugin, why in sorted(self.skipped().items())))
        lines.append("List the available ones with: " + " / ".join(f"transmodal components {r.kind}" for r in registries))
        lines.extend(self.failure_notes())
        return "\n".join(lines)
