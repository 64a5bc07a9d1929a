"""transmodal-timm: the timm backbone's features are timm's own, weights come from local files only, and it trains
as the image encoder of a run. The models are timm's tiny test_* architectures, created with pretrained=False."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

timm = pytest.importorskip("timm")
pytest.importorskip("transmodal_timm")

import transmodal  # noqa: E402
from transmodal.config import parse_experiment, validate_components  # noqa: E402
from transmodal.data import ModalitySpec  # noqa: E402
from transmodal.errors import CheckpointError, ConfigError  # noqa: E402
from transmodal.plugins import Plugins, reset_plugins  # noqa: E402
from transmodal.registry import FIRST_PARTY_PROVIDERS  # noqa: E402
from transmodal_timm import plugin as timm_plugin  # noqa: E402

IMAGE = ModalitySpec("image", "image", (3, 32, 32))
VIT = {"model": "test_vit", "model_kwargs": {"img_size": 32}}


@pytest.fixture
def plugins() -> Plugins:
    return Plugins(entry_points=[], extra_plugins=[("transmodal-timm", timm_plugin)])


def backbone(plugins: Plugins, modality: ModalitySpec = IMAGE, **params) -> transmodal.Encoder:
    return plugins.get("backbone", "timm").build(modality, **params)


def reference(name: str, seed: int, **kwargs) -> torch.nn.Module:
    """timm's own model with its classifier, as a user would create it."""
    torch.manual_seed(seed)
    return timm.create_model(name, pretrained=False, **kwargs).eval()


def test_discovery_registers_the_backbone_without_importing_timm():
    code = ("import json, sys, transmodal\n"
            "plugins = transmodal.get_plugins()\n"
            "assert 'timm' not in sys.modules and 'torch' not in sys.modules, 'discovery imported timm'\n"
            "print(json.dumps(plugins.infos['transmodal-timm'].registered))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1])["backbone"] == ["timm"]
    assert FIRST_PARTY_PROVIDERS["backbone"]["timm"] == "transmodal-timm"


@pytest.mark.parametrize(("params", "kwargs"), [
    ({"model": "test_resnet"}, {}),
    ({"model": "test_convnext"}, {}),
    ({"model": "test_efficientnet"}, {}),
    ({"model": "test_mambaout"}, {}),  # its feature map is channels-last
    (VIT, {"img_size": 32}),
])
@pytest.mark.parametrize("tokens", [False, True])
def test_features_are_timms_own(plugins, params, kwargs, tokens, tmp_path):
    """Pooled: timm's forward_head(pre_logits=True); tokens: its forward_features, a (B, C, H, W) map (or
    (B, H, W, C), as the model's output_fmt says) as (B, H*W, C), a ViT's sequence as it is."""
    timm_model = reference(params["model"], seed=1, **kwargs)
    path = tmp_path / "weights.pth"
    torch.save(timm_model.state_dict(), path)  # with its classifier, as timm saves it
    encoder = backbone(plugins, **params, tokens=tokens, pretrained=str(path)).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        features = timm_model.forward_features(images)
        if not tokens:
            expected = timm_model.forward_head(features, pre_logits=True)
        elif features.dim() == 4:
            nhwc = getattr(timm_model, "output_fmt", "NCHW") == "NHWC"
            expected = features.flatten(1, 2) if nhwc else features.flatten(2).transpose(1, 2)
        else:
            expected = features
        got = encoder(images)
    torch.testing.assert_close(got, expected)
    assert got.shape[-1] == encoder.out_dim


@pytest.mark.parametrize("params", [{"model": "test_resnet"}, {"model": "test_mambaout", "tokens": True}, VIT])
def test_contract_and_layer_groups(plugins, params):
    encoder = backbone(plugins, **params).train()
    output = encoder(torch.randn(3, 3, 32, 32))
    assert output.shape[0] == 3 and output.shape[-1] == encoder.out_dim
    assert output.dim() == (3 if encoder.returns_tokens else 2)
    groups = encoder.layer_groups()
    grouped = [p for _, module in groups for p in module.parameters()]
    assert len({id(p) for p in grouped}) == len(grouped) == len(list(encoder.parameters()))  # each exactly once
    assert groups[0][0] == "stem" and len(groups) > 3 and len({name for name, _ in groups}) == len(groups)
    output.square().mean().backward()
    assert all(p.grad is not None for p in encoder.parameters())
    # A group frozen with its BatchNorm statistics: its modules, not only its parameters, switch to eval mode
    first = groups[0][1]
    first.train(False)
    assert all(not module.training for module in first.modules())


def test_vit_groups_hold_its_embeddings_and_final_norm(plugins):
    names = [name for name, _ in backbone(plugins, **VIT).layer_groups()]
    stem = dict(backbone(plugins, **VIT).layer_groups())["stem"]
    assert {"cls_token", "pos_embed"} <= {name for name, _ in stem.named_parameters()}
    assert names[-1].endswith("+norm") and names[1] == "blocks.0"


def test_normalisation_and_size_come_from_the_model(plugins):
    efficientnet = backbone(plugins, model="test_efficientnet")
    assert efficientnet.input_mean == pytest.approx((0.485, 0.456, 0.406))
    assert efficientnet.input_std == pytest.approx((0.229, 0.224, 0.225))
    assert efficientnet.input_size is None  # a CNN takes the data's size
    assert backbone(plugins, model="vit_tiny_patch16_224").input_size == 224  # a ViT of fixed size needs its own
    assert backbone(plugins, model="test_vit").input_size is None  # one with dynamic_img_size does not
    assert backbone(plugins, model="test_resnet", mean=[0.1, 0.2, 0.3]).input_mean == (0.1, 0.2, 0.3)
    gray = backbone(plugins, ModalitySpec("image", "image", (1, 32, 32)), model="test_efficientnet")
    assert gray.input_mean == pytest.approx((sum((0.485, 0.456, 0.406)) / 3,))
    assert gray(torch.randn(2, 1, 32, 32)).shape == (2, gray.out_dim)
    with pytest.raises(ConfigError, match=r"takes 224x224 images, not input_size 64.*model_kwargs: \{img_size: 64\}"):
        backbone(plugins, model="vit_tiny_patch16_224", input_size=64)


def test_local_safetensors_file_and_a_grayscale_stem(plugins, tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    timm_model = reference("test_efficientnet", seed=2)
    path = tmp_path / "model.safetensors"
    safetensors_torch.save_file({k: v.contiguous() for k, v in timm_model.state_dict().items()}, str(path))
    encoder = backbone(plugins, model="test_efficientnet", pretrained=str(path))
    loaded = encoder.net.state_dict()
    expected = {k: v for k, v in timm_model.state_dict().items() if not k.startswith("classifier.")}
    assert set(loaded) == set(expected) and all(torch.equal(loaded[k], v) for k, v in expected.items())
    gray = backbone(plugins, ModalitySpec("image", "image", (1, 32, 32)), model="test_efficientnet",
                    pretrained=str(path))  # timm's own adaptation: the RGB filters summed
    torch.testing.assert_close(gray.net.conv_stem.weight, timm_model.conv_stem.weight.sum(dim=1, keepdim=True))


def test_a_file_that_does_not_fit_is_explained(plugins, tmp_path):
    path = tmp_path / "resnet.pth"
    state = reference("test_resnet", seed=3).state_dict()
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"resnet\.pth does not fit timm model test_convnext"):
        backbone(plugins, model="test_convnext", pretrained=str(path))
    extra = {**state, "layer9.0.conv1.weight": torch.zeros(1)}
    del extra["layer1.0.conv1.weight"]
    torch.save(extra, path)
    with pytest.raises(CheckpointError, match=r"missing: layer1\.0\.conv1\.weight \(1 in all\); "
                                              r"unexpected: layer9\.0\.conv1\.weight \(1 in all\)"):
        backbone(plugins, model="test_resnet", pretrained=str(path))
    state["layer1.0.conv1.weight"] = torch.zeros(1, 1, 1, 1)
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"different shape: layer1\.0\.conv1\.weight \(file \(1, 1, 1, 1\)"):
        backbone(plugins, model="test_resnet", pretrained=str(path))
    torch.save({"epoch": 3, "note": "no weights"}, path)
    with pytest.raises(CheckpointError, match="does not hold a state dict"):
        backbone(plugins, model="test_resnet", pretrained=str(path))


@pytest.mark.parametrize(("encoder", "message"), [
    ({"model": "test_resnet", "pretrained": True}, "would download the weights .* which transmodal-timm never does"),
    ({"model": "test_resnet", "model_kwargs": {"num_classes": 5}}, "num_classes cannot be set here"),
])
def test_config_mistakes_are_refused_before_anything_is_built(plugins, encoder, message):
    experiment = parse_experiment({"model": {"encoders": {"image": {"name": "timm", **encoder}}}})
    with pytest.raises(ConfigError, match=rf"model\.encoders\.image.*{message}"):
        validate_components(experiment, plugins)


def test_unknown_model_missing_file_and_wrong_modality_are_config_errors(plugins, tmp_path):
    with pytest.raises(ConfigError, match=r"weights file .*missing\.pth does not exist"):
        backbone(plugins, model="test_resnet", pretrained=str(tmp_path / "missing.pth"))
    with pytest.raises(ConfigError, match="'test_resnett' is not a timm model. Did you mean: test_resnet"):
        backbone(plugins, model="test_resnett")
    with pytest.raises(ConfigError, match="backbone 'timm' takes images, but modality 'text' is text"):
        backbone(plugins, ModalitySpec("text", "text", vocab_size=10), model="test_resnet")


def test_a_tiny_timm_model_trains_and_its_run_predicts(tmp_path, capsys):
    reset_plugins(Plugins(entry_points=[], extra_plugins=[("transmodal-timm", timm_plugin)]))
    pretrained = tmp_path / "vit.pth"
    torch.save(reference("test_vit", seed=4, img_size=32).state_dict(), pretrained)
    summary, run_dir = transmodal.train({
        "name": "timm",
        "data": {"dataset": {"name": "synthetic-shapes", "train_size": 64, "val_size": 32, "target_train_size": 32,
                             "target_test_size": 32}},
        "model": {"encoders": {"image": {"name": "timm", **VIT, "pretrained": str(pretrained)},
                               "text": {"name": "bow", "embedding_dim": 8}},
                  "fusion": {"name": "concat"}},
        "adaptation": [{"name": "gradual-unfreeze"}, {"name": "layerwise-lr", "decay": 0.8}],
        "trainer": {"epochs": 2, "batch_size": 16, "num_threads": 1, "device": "cpu"},
        "output": {"dir": str(tmp_path / "runs")},
    }, quiet=True)
    assert summary["epochs"] == 2 and "target/test" in summary["final"]
    pretrained.unlink()  # a saved run needs its checkpoint, not the pretrained file
    model = transmodal.load(run_dir)
    records = model.predict({"image": [None], "text": ["a red square"]})
    assert records[0]["prediction"] in model.classes
