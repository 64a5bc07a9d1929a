"""The embedded dataset: synthetic-shapes, paired image + caption samples with a domain shift."""

from __future__ import annotations

import torch

from transmodal.builtin.params import SyntheticShapesParams
from transmodal.data import SOURCE_DOMAIN, TARGET_DOMAIN, DatasetBundle, Split
from transmodal.datasets.shapes_render import CLASS_NAMES, render_split


def _split(domain: str, domain_id: int, size: int, seed: int, image_size: int, caption_shape: bool) -> Split:
    rendered = render_split(domain, size, seed, image_size, caption_shape)
    return Split({
        "image": rendered.images,
        "text": rendered.captions,
        "label": rendered.labels,
        "domain": torch.full((size,), domain_id, dtype=torch.int64),
    })


def build_synthetic_shapes(params: SyntheticShapesParams, seed: int = 0) -> DatasetBundle:
    # Each split from its own seed, so changing one size leaves the other splits' samples unchanged.
    base = params.seed * 10
    size, shape = params.image_size, params.caption_shape
    unlabelled = (
        _split("target", TARGET_DOMAIN, params.target_train_size, base + 3, size, shape).without_labels()
        if params.target_train_size > 0 else None
    )
    return DatasetBundle(
        modalities={"image": "image", "text": "text"},
        classes=list(CLASS_NAMES),
        train=_split("source", SOURCE_DOMAIN, params.train_size, base + 1, size, shape),
        evaluation={
            "source/val": _split("source", SOURCE_DOMAIN, params.val_size, base + 2, size, shape),
            "target/test": _split("target", TARGET_DOMAIN, params.target_test_size, base + 4, size, shape),
        },
        unlabelled=unlabelled,
        description="A coloured shape and a caption; class = caption attribute x shape. Target: shifted images.",
    )
