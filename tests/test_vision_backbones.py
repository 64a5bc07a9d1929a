"""transmodal-vision backbones: contracts of every registered name, weights from torchvision's cache and
from local files, and their use as image encoders. No network: weights files are written by the tests."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error

import pytest
import torch
from torch import nn

torchvision = pytest.importorskip("torchvision")
pytest.importorskip("transmodal_vision")

from transmodal.config import parse_experiment, validate_components  # noqa: E402
from transmodal.data import ModalitySpec  # noqa: E402
from transmodal.errors import CheckpointError, ConfigError, DataError  # noqa: E402
from transmodal.experiment import assemble  # noqa: E402
from transmodal.plugins import Plugins  # noqa: E402
from transmodal.registry import FIRST_PARTY_PROVIDERS  # noqa: E402
from transmodal_vision import plugin as vision_plugin  # noqa: E402
from transmodal_vision.params import RESNET_ARCHS  # noqa: E402

IMAGE = ModalitySpec("image", "image", (3, 32, 32))
RESNET_WIDTH = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048, "resnet152": 2048,
                "resnext50_32x4d": 2048, "wide_resnet50_2": 2048}



@pytest.fixture(scope="module")
def plugins() -> Plugins:
    return Plugins(entry_points=[], extra_plugins=[("transmodal-vision", vision_plugin)])


def backbone(plugins: Plugins, name: str, modality: ModalitySpec = IMAGE, **params) -> nn.Module:
    return plugins.get("backbone", name).build(modality, **params)


def check_contract(encoder: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Output shape, layer groups covering every parameter once, and a gradient for every parameter."""
    output = encoder(images)
    batch = images.shape[0]
    if encoder.returns_tokens:
        assert output.dim() == 3 and output.shape[0] == batch and output.shape[2] == encoder.out_dim
    else:
        assert output.shape == (batch, encoder.out_dim)
    grouped = [p for _, module in encoder.layer_groups() for p in module.parameters()]
    assert len({id(p) for p in grouped}) == len(grouped) == len(list(encoder.parameters()))
    output.float().square().mean().backward()
    for name, parameter in encoder.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
    return output


# -- discovery ------------------------------------------------------------------------------------------------


def test_discovery_registers_the_first_party_names_without_importing_torchvision():
    code = (
        "import json, sys, transmodal\n"
        "plugins = transmodal.get_plugins()\n"
        "assert 'torchvision' not in sys.modules, 'discovery imported torchvision'\n"
        "print(json.dumps(plugins.infos['transmodal-vision'].registered))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    registered = json.loads(result.stdout.splitlines()[-1])
    for kind in ("backbone", "dataset"):
        promised = {name for name, dist in FIRST_PARTY_PROVIDERS[kind].items() if dist == "transmodal-vision"}
        assert promised == set(registered[kind])


# -- contracts ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", RESNET_ARCHS)
def test_resnet_contract(plugins, arch):
    torch.manual_seed(0)
    encoder = backbone(plugins, arch)
    assert encoder.out_dim == RESNET_WIDTH[arch]
    assert [name for name, _ in encoder.layer_groups()] == ["stem", "layer1", "layer2", "layer3", "layer4"]
    assert encoder.input_mean == (0.485, 0.456, 0.406) and encoder.input_size is None
    check_contract(encoder, torch.randn(2, 3, 32, 32))


def test_cifar_stem_keeps_resolution_and_tokens_are_the_spatial_map(plugins):
    encoder = backbone(plugins, "resnet18", cifar_stem=True, tokens=True)
    assert encoder.conv1.kernel_size == (3, 3) and encoder.conv1.stride == (1, 1)
    tokens = check_contract(encoder, torch.randn(2, 3, 32, 32))
    assert tokens.shape == (2, 16, 512)  # 32 / 8 = 4, so 4x4 positions (the standard stem leaves 1x1)
    assert backbone(plugins, "resnet18", tokens=True)(torch.randn(2, 3, 32, 32)).shape == (2, 1, 512)


@pytest.mark.parametrize(("arch", "tokens", "width"), [
    ("mobilenet_v3_small", False, 1024),
    ("mobilenet_v3_small", True, 576),
    ("efficientnet_b0", True, 1280),
    ("resnet18", False, 512),  # the ResNet family keeps its named groups and stem option
])
def test_torchvision_backbone_contract(plugins, arch, tokens, width):
    encoder = backbone(plugins, "torchvision", arch=arch, tokens=tokens)
    assert encoder.out_dim == width
    check_contract(encoder, torch.randn(2, 3, 32, 32))


def test_vision_transformer_takes_its_resolution_and_groups_its_embeddings(plugins, monkeypatch):
    # vit_b_16 built small (two layers, width 32, 32x32 images): the same code paths at a fraction of the cost.
    def small_vit(arch: str, weights=None) -> nn.Module:
        assert arch == "vit_b_16" and weights is None
        return torchvision.models.VisionTransformer(
            image_size=32, patch_size=16, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64)

    monkeypatch.setattr(torchvision.models, "get_model", small_vit)
    encoder = backbone(plugins, "torchvision", arch="vit_b_16", tokens=True)
    assert encoder.input_size == 32 and encoder.out_dim == 32
    groups = encoder.layer_groups()
    assert [name for name, _ in groups] == [
        "conv_proj", "encoder.layers.encoder_layer_0", "encoder.layers.encoder_layer_1", "encoder.ln"]
    first = {id(p) for p in groups[0][1].parameters()}
    assert id(encoder.net.class_token) in first and id(encoder.net.encoder.pos_embedding) in first
    tokens = check_contract(encoder, torch.randn(2, 3, 32, 32))
    assert tokens.shape == (2, 5, 32)  # the class token and 2x2 patches
    pooled = backbone(plugins, "torchvision", arch="vit_b_16")
    assert check_contract(pooled, torch.randn(2, 3, 32, 32)).shape == (2, 32)
    with pytest.raises(ConfigError, match="takes 32x32"):
        backbone(plugins, "torchvision", arch="vit_b_16", input_size=224)


def test_architecture_without_a_linear_classifier_is_refused(plugins):
    with pytest.raises(ConfigError, match="no final linear classifier"):
        backbone(plugins, "torchvision", arch="squeezenet1_0")


def test_channels_last_gives_the_same_features(plugins):
    torch.manual_seed(0)
    reference = backbone(plugins, "resnet18").eval()
    fast = backbone(plugins, "resnet18", channels_last=True).eval()
    fast.load_state_dict(reference.state_dict())
    assert fast.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(fast(images), reference(images), atol=1e-4)


def test_bf16_autocast_trains(plugins):
    encoder = backbone(plugins, "resnet18", cifar_stem=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        check_contract(encoder, torch.randn(2, 3, 32, 32))


def test_backbone_needs_rgb_images(plugins):
    with pytest.raises(ConfigError, match="takes images"):
        backbone(plugins, "resnet18", ModalitySpec("text", "text", vocab_size=10))
    with pytest.raises(ConfigError, match="3-channel RGB"):
        backbone(plugins, "resnet50", ModalitySpec("image", "image", (1, 28, 28)))


# -- weights --------------------------------------------------------------------------------------------------


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty torch hub cache in tmp_path; any download attempt fails as it would offline."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError(f"no network in tests ({url})")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return tmp_path / "torch" / "hub" / "checkpoints"


def _torchvision_state(arch: str, seed: int, num_classes: int = 1000) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return torchvision.models.get_model(arch, weights=None, num_classes=num_classes).state_dict()


def test_named_weights_load_from_torchvision_cache(plugins, torch_home):
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    state = _torchvision_state("resnet18", seed=1)
    torch_home.mkdir(parents=True)
    torch.save(state, torch_home / weights.url.rsplit("/", 1)[-1])

    encoder = backbone(plugins, "resnet18", weights="IMAGENET1K_V1")
    assert torch.equal(encoder.conv1.weight, state["conv1.weight"])
    assert torch.equal(encoder.layer4[1].bn2.running_var, state["layer4.1.bn2.running_var"])
    assert encoder.input_mean == tuple(weights.transforms().mean)
    assert encoder.input_std == tuple(weights.transforms().std)

    # DEFAULT is the same file; with the CIFAR stem everything but the stem convolution is pretrained.
    stem = backbone(plugins, "resnet18", weights="DEFAULT", cifar_stem=True)
    assert stem.conv1.weight.shape == (64, 3, 3, 3)
    assert torch.equal(stem.layer1[0].conv1.weight, state["layer1.0.conv1.weight"])


def test_missing_cached_weights_offline_say_where_to_put_them(plugins, torch_home):
    with pytest.raises(DataError) as error:
        backbone(plugins, "resnet34", weights="DEFAULT")
    message = str(error.value)
    assert str(torch_home / "resnet34-b627a593.pth") in message and "local state-dict file" in message


def test_unknown_weights_name_lists_the_valid_ones(plugins):
    experiment = parse_experiment({"model": {"encoders": {"image": {"name": "resnet50", "weights": "IMAGENET1K"}}}})
    with pytest.raises(ConfigError) as error:
        validate_components(experiment, plugins)
    message = str(error.value)
    assert "model.encoders.image" in message and "not a torchvision weights name for resnet50" in message
    assert "DEFAULT, IMAGENET1K_V1, IMAGENET1K_V2" in message


def test_unknown_architecture_suggests_one(plugins):
    with pytest.raises(ConfigError, match="Did you mean: efficientnet_b0"):
        validate_components(parse_experiment(
            {"model": {"encoders": {"image": {"name": "torchvision", "arch": "efficientnet_b00"}}}}), plugins)


def test_local_pth_file_loads_by_path(plugins, tmp_path):
    state = _torchvision_state("resnet18", seed=2, num_classes=10)  # a fine-tuned model: its head is ignored
    path = tmp_path / "resnet18_cifar10.pth"
    torch.save(state, path)
    encoder = backbone(plugins, "resnet18", weights=str(path))
    assert torch.equal(encoder.layer3[0].downsample[0].weight, state["layer3.0.downsample.0.weight"])

    headless = {k: v for k, v in _torchvision_state("mobilenet_v3_small", seed=3).items()
                if not k.startswith("classifier.3.")}
    path = tmp_path / "mobilenet.pt"
    torch.save(headless, path)
    generic = backbone(plugins, "torchvision", arch="mobilenet_v3_small", weights=str(path))
    assert torch.equal(generic.net.features[0][0].weight, headless["features.0.0.weight"])


def test_local_safetensors_file_loads_by_path(plugins, tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    state = _torchvision_state("resnet18", seed=4)
    path = tmp_path / "resnet18.safetensors"
    safetensors_torch.save_file(state, str(path))
    encoder = backbone(plugins, "resnet18", weights=str(path), cifar_stem=True)  # ImageNet stem file: stem skipped
    assert torch.equal(encoder.layer2[1].conv2.weight, state["layer2.1.conv2.weight"])
    assert encoder.conv1.weight.shape == (64, 3, 3, 3)


def test_safetensors_without_the_package_says_how_to_install_it(plugins, tmp_path, monkeypatch):
    path = tmp_path / "weights.safetensors"
    path.write_bytes(b"\0" * 16)
    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    with pytest.raises(ConfigError, match="pip install safetensors"):
        backbone(plugins, "resnet18", weights=str(path))


def test_weights_file_that_does_not_fit_is_explained(plugins, tmp_path):
    state = _torchvision_state("resnet18", seed=5)
    path = tmp_path / "extra.pth"
    torch.save(state | {"layer1.2.conv1.weight": torch.zeros(64, 64, 3, 3)}, path)  # a deeper ResNet's key
    with pytest.raises(CheckpointError) as error:
        backbone(plugins, "resnet18", weights=str(path))
    message = str(error.value)
    assert "does not fit resnet18" in message and "unexpected: layer1.2.conv1.weight (1 in all)" in message
    state["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    path = tmp_path / "reshaped.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"different shape: layer1.0.conv1.weight \(file \(64, 64, 1, 1\), "
                                              r"model \(64, 64, 3, 3\)\)"):
        backbone(plugins, "resnet18", weights=str(path))
    path = tmp_path / "not_a_state_dict.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match="does not hold a state dict"):
        backbone(plugins, "resnet18", weights=str(path))
    with pytest.raises(ConfigError, match="does not exist"):
        validate_components(parse_experiment(
            {"model": {"encoders": {"image": {"name": "resnet18", "weights": str(tmp_path / "gone.pth")}}}}), plugins)


# -- as the image encoder of a model ----------------------------------------------------------------------------


def test_backbone_is_the_image_encoder_of_a_multimodal_model(plugins):
    experiment = parse_experiment({
        "data": {"dataset": {"name": "synthetic-shapes", "train_size": 8, "val_size": 4, "target_train_size": 4,
                             "target_test_size": 4}},
        "model": {"encoders": {"image": {"name": "resnet18", "input_size": 48, "mean": [0.5, 0.5, 0.5]},
                               "text": {"name": "bow"}},
                  "fusion": {"name": "concat", "hidden": 16}},
        "adaptation": [{"name": "finetune"}],
    })
    assembled = assemble(experiment, plugins)
    image_input = assembled.model.inputs["image"]
    assert image_input.size == 48
    assert image_input.mean.flatten().tolist() == [0.5, 0.5, 0.5]
    assert image_input.std.flatten().tolist() == pytest.approx([0.229, 0.224, 0.225])
    batch = next(assembled.data.train.epoch(0))
    output = assembled.model(batch)
    assert output.logits.shape == (8, len(assembled.data.bundle.classes))
