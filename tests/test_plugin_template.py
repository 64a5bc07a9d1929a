"""The third-party plugin template in examples/plugin_template works as CONTRIBUTING.md says."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import transmodal
from transmodal.plugins import Plugins, reset_plugins

TEMPLATE = Path(__file__).parents[1] / "examples" / "plugin_template"


@pytest.fixture
def template_plugin(monkeypatch: pytest.MonkeyPatch) -> Plugins:
    monkeypatch.syspath_prepend(str(TEMPLATE))
    from transmodal_max_fusion import plugin

    plugins = Plugins(entry_points=[], extra_plugins=[("transmodal-max-fusion", plugin)])
    yield plugins
    for name in [m for m in sys.modules if m.startswith("transmodal_max_fusion")]:
        del sys.modules[name]


def test_template_fusion_contract(template_plugin: Plugins):
    assert "transmodal_max_fusion.fusion" not in sys.modules  # lazy until built
    fusion = template_plugin.get("fusion", "max").build({"text": 4, "image": 8}, dim=16)
    features = {"image": torch.randn(5, 8), "text": torch.randn(5, 4)}
    present = {"image": torch.tensor([1, 1, 0, 0, 1], dtype=torch.bool),
               "text": torch.tensor([1, 0, 1, 0, 1], dtype=torch.bool)}
    output = fusion(features, present)
    assert output.shape == (5, fusion.output_dim)
    assert torch.isfinite(output).all() and torch.equal(output[3], torch.zeros(16))
    assert torch.equal(output, fusion(dict(reversed(features.items())), present))
    fusion(features).sum().backward()
    assert all(p.grad is not None and p.grad.any() for p in fusion.parameters())


def test_template_trains_through_the_core(template_plugin: Plugins, tiny):
    reset_plugins(template_plugin)
    summary, _ = transmodal.train(tiny("model.fusion={name: max, dim: 16}", "trainer.epochs=1"), quiet=True)
    assert summary["epochs"] == 1
