"""The ``glyphs`` dataset: a source -> target split of the rendered domains, as a DatasetBundle."""

from __future__ import annotations

import functools
import string

import torch
from transmodal.data import SOURCE_DOMAIN, TARGET_DOMAIN, DatasetBundle, Split
from transmodal.errors import DataError

from transmodal_glyphs.fonts import DOMAIN_FONTS, font_paths
from transmodal_glyphs.plugin import GlyphsParams
from transmodal_glyphs.render import STYLES, glyph_atlas, render

CHARACTERS = {"digits": string.digits, "letters": string.ascii_uppercase}
_SPLITS = ("train", "val", "target_train", "target_test", "target_val")  # appended: earlier splits keep their seeds


def render_domain(domain: str, characters: str, size: int, image_size: int, seed: int) -> tuple[torch.Tensor,
                                                                                                   torch.Tensor]:
    """``size`` samples of ``domain``: uint8 images (size, 3, H, W) and balanced, shuffled labels (size,)."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(size) % len(characters)
    labels = labels[torch.randperm(size, generator=generator)]
    atlas = _atlas(domain, characters)
    return render(atlas, labels, STYLES[domain], image_size, generator), labels


@functools.lru_cache(maxsize=8)
def _atlas(domain: str, characters: str) -> torch.Tensor:
    return glyph_atlas(font_paths(domain), characters)


def _seed(params: GlyphsParams, domain: str, split: str) -> int:
    # Each (domain, split) from its own seed: changing one size or the target leaves the other samples unchanged.
    return (params.seed * 1000 + list(DOMAIN_FONTS).index(domain) * 10 + _SPLITS.index(split)) % 2**63


def _split(params: GlyphsParams, domains: list[str], split: str, size: int, domain_id: int) -> Split:
    characters = CHARACTERS[params.characters]
    parts = [render_domain(d, characters, size, params.image_size, _seed(params, d, split)) for d in domains]
    images, labels = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    return Split({"image": images, "label": labels, "domain": torch.full((len(labels),), domain_id)})


def build_glyphs(params: GlyphsParams, seed: int = 0) -> DatasetBundle:
    source, target = list(params.source), [params.target]
    if params.train_on != "source":
        return _labelled_target_reference(params)
    unlabelled = None
    if params.target_train_size > 0:
        unlabelled = _split(params, target, "target_train", params.target_train_size, TARGET_DOMAIN).without_labels()
    return DatasetBundle(
        modalities={"image": "image"},
        classes=list(CHARACTERS[params.characters]),
        train=_split(params, source, "train", params.train_size, SOURCE_DOMAIN),
        evaluation={
            "source/val": _split(params, source, "val", params.val_size, SOURCE_DOMAIN),
            "target/test": _split(params, target, "target_test", params.target_test_size, TARGET_DOMAIN),
            **_also_tested(params),
        },
        unlabelled=unlabelled,
        description=f"glyphs {params.characters}: {' + '.join(source)} -> {params.target}",
    )


def _also_tested(params: GlyphsParams) -> dict[str, Split]:
    return {f"test/{domain}": _split(params, [domain], "target_test", params.target_test_size, TARGET_DOMAIN)
            for domain in params.also_test if domain != params.target}


def _labelled_target_reference(params: GlyphsParams) -> DatasetBundle:
    """Trained on the target's training samples with their labels (beside the source's for ``train_on: both``),
    selected on target samples rendered apart, tested on the adaptation runs' target/test split."""
    target = [params.target]
    if params.target_train_size == 0:
        raise DataError("glyphs: train_on: target needs target_train_size > 0 (the labelled target samples)")
    train = _split(params, target, "target_train", params.target_train_size, TARGET_DOMAIN)
    if params.train_on == "both":
        source = _split(params, list(params.source), "train", params.train_size, SOURCE_DOMAIN)
        train = Split({key: torch.cat([source.data[key], train.data[key]]) for key in train.data})
    return DatasetBundle(
        modalities={"image": "image"},
        classes=list(CHARACTERS[params.characters]),
        train=train,
        evaluation={
            "source/val": _split(params, target, "target_val", params.val_size, TARGET_DOMAIN),
            "target/test": _split(params, target, "target_test", params.target_test_size, TARGET_DOMAIN),
            **_also_tested(params),
        },
        description=f"glyphs {params.characters}: trained on {params.train_on} labels, tested on {params.target} "
                    "(a reference, not an adaptation run)",
    )
