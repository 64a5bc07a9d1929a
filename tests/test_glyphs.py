"""transmodal-glyphs: real font families rendered into four domains, as a dataset the trainer can use offline."""

from __future__ import annotations

import pytest

pytest.importorskip("transmodal_glyphs")
pytest.importorskip("PIL")

import torch  # noqa: E402
from pydantic import ValidationError  # noqa: E402

from transmodal.errors import DataError  # noqa: E402
from transmodal.plugins import get_plugins  # noqa: E402
from transmodal_glyphs.dataset import CHARACTERS, render_domain  # noqa: E402
from transmodal_glyphs.fonts import DOMAIN_FONTS, font_paths  # noqa: E402
from transmodal_glyphs.render import glyph_atlas  # noqa: E402


def build(**params):
    return get_plugins().get("dataset", "glyphs").build(0, **params)


@pytest.mark.parametrize("domain", sorted(DOMAIN_FONTS))
def test_every_font_of_every_domain_draws_every_character_distinctly(domain: str):
    for characters in CHARACTERS.values():
        atlas = glyph_atlas(font_paths(domain), characters)
        assert atlas.shape[:2] == (len(DOMAIN_FONTS[domain]), len(characters))
        ink = atlas.flatten(2).sum(2)
        assert (ink > 20).all()  # no empty tile: the font has the glyph
        flat = atlas.flatten(2)
        for font in flat:  # no two characters of one font look the same
            distances = torch.cdist(font, font) + torch.eye(len(characters)) * 1e9
            assert distances.min() > 1.0


def test_domains_use_disjoint_font_families():
    families = {domain: {package for package, _ in fonts} for domain, fonts in DOMAIN_FONTS.items()}
    domains = sorted(families)
    for i, first in enumerate(domains):
        for second in domains[i + 1:]:
            assert not families[first] & families[second], (first, second)


def test_rendering_is_deterministic_per_seed_and_labels_are_balanced():
    images, labels = render_domain("scan", CHARACTERS["digits"], 200, 32, seed=5)
    again, again_labels = render_domain("scan", CHARACTERS["digits"], 200, 32, seed=5)
    other, _ = render_domain("scan", CHARACTERS["digits"], 200, 32, seed=6)
    assert images.dtype == torch.uint8 and images.shape == (200, 3, 32, 32)
    assert torch.equal(images, again) and torch.equal(labels, again_labels)
    assert not torch.equal(images, other)
    assert torch.bincount(labels, minlength=10).tolist() == [20] * 10


def test_domains_carry_their_shifts():
    """What each domain's README description promises, measured on the pixels."""
    stats = {}
    for domain in DOMAIN_FONTS:
        images, _ = render_domain(domain, CHARACTERS["digits"], 300, 32, seed=1)
        x = images.float() / 255
        stats[domain] = {
            "colour": (x - x.mean(1, keepdim=True)).abs().mean().item(),  # distance from grey
            "background": x[:, :, :, :3].mean().item(),  # left border: mostly background
            "background_spread": x[:, :, :, :3].mean(dim=(1, 2, 3)).std().item(),
        }
    assert stats["print"]["colour"] < 0.01  # black ink on white paper
    assert stats["print"]["background"] > 0.85
    assert stats["scan"]["colour"] > 0.03  # yellowed paper
    assert stats["signs"]["background_spread"] > 3 * stats["print"]["background_spread"]  # coloured plates


def test_dataset_bundle_from_one_or_several_sources():
    bundle = build(source="print", target="scan", train_size=30, val_size=20, target_train_size=40,
                   target_test_size=50)
    assert bundle.modalities == {"image": "image"} and bundle.classes == list("0123456789")
    assert len(bundle.train) == 30 and len(bundle.unlabelled) == 40
    assert len(bundle.evaluation["source/val"]) == 20 and len(bundle.evaluation["target/test"]) == 50
    assert not bundle.unlabelled.has_labels
    assert bundle.train.data["image"].shape == (30, 3, 32, 32)

    several = build(source=["print", "handwritten"], target="signs", characters="letters", train_size=26,
                    val_size=26, target_train_size=0, target_test_size=26, image_size=16)
    assert len(several.train) == 52 and several.unlabelled is None and len(several.classes) == 26
    # the print part of a multi-source split is the same samples as print alone
    alone = build(source=["print"], target="signs", characters="letters", train_size=26, val_size=26,
                  target_train_size=0, target_test_size=26, image_size=16)
    assert torch.equal(several.train.data["image"][:26], alone.train.data["image"])


def test_the_labelled_target_references_train_on_the_unlabelled_samples_and_test_on_the_same_split():
    sizes = {"source": "print", "target": "scan", "train_size": 30, "val_size": 20, "target_train_size": 40,
             "target_test_size": 50}
    adaptation, target_only, both = build(**sizes), build(**sizes, train_on="target"), build(**sizes, train_on="both")
    for reference in (target_only, both):
        assert reference.unlabelled is None
        assert torch.equal(reference.evaluation["target/test"].data["image"],
                           adaptation.evaluation["target/test"].data["image"])
        val = reference.evaluation["source/val"]
        assert len(val) == 20 and val.data["domain"].unique().tolist() == [1]  # target samples, rendered apart
        assert not any(torch.equal(image, other) for image in val.data["image"][:5]
                       for other in target_only.train.data["image"])
    assert torch.equal(target_only.train.data["image"], adaptation.unlabelled.data["image"])
    assert torch.equal(both.train.data["image"], torch.cat([adaptation.train.data["image"],
                                                            adaptation.unlabelled.data["image"]]))
    assert both.train.data["domain"].tolist() == [0] * 30 + [1] * 40
    with pytest.raises(DataError, match="target_train_size > 0"):
        build(**{**sizes, "target_train_size": 0}, train_on="target")


@pytest.mark.parametrize("params, message", [
    ({"source": "signs", "target": "signs"}, "also a source"),
    ({"source": ["print", "print"]}, "twice"),
    ({"target": "photos"}, "print"),
    ({"source": []}, "at least 1"),
])
def test_bad_domains_are_refused_with_what_is_allowed(params, message):
    with pytest.raises(ValidationError, match=message):
        get_plugins().get("dataset", "glyphs").params.model_validate(params)
