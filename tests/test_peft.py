"""transmodal-peft: adapters train alone, merge to the same function, and travel on their own."""

from __future__ import annotations

import copy
import csv
import importlib.util
from pathlib import Path

import pytest
import torch

pytest.importorskip("peft")
pytest.importorskip("transmodal_peft")

import transmodal
from conftest import exported_shapes_experiment
from transmodal.data import ModalitySpec
from transmodal.errors import CheckpointError, ConfigError
from transmodal.export import sample_batch
from transmodal.experiment import assemble
from transmodal.model import TransmodalModel
from transmodal.plugins import Plugins
from transmodal.run import evaluate_run
from transmodal.strategy import TrainingContext
from transmodal_peft import plugin
from transmodal_peft.adapters import export_adapters, load_adapters, merge_adapters, merge_run


@pytest.fixture
def plugins() -> Plugins:
    return Plugins(entry_points=[], extra_plugins=[("transmodal-peft", plugin)])


def model_and_batch(plugins: Plugins) -> tuple[TransmodalModel, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    image = plugins.get("encoder", "small-cnn").build(ModalitySpec("image", "image", shape=(3, 8, 8)), channels=[4, 8])
    vector = plugins.get("encoder", "mlp").build(ModalitySpec("x", "vector", shape=(5,)), hidden=[6, 6])
    fusion = plugins.get("fusion", "concat").build({"image": 8, "x": 6}, hidden=7)
    model = TransmodalModel({}, {"image": image, "x": vector}, fusion, plugins.get("head", "linear").build(7, 3), 3)
    return model, {"image": torch.randn(5, 3, 8, 8), "x": torch.randn(5, 5)}


CONTEXT = TrainingContext(num_classes=3, steps_per_epoch=1, total_steps=1, device=torch.device("cpu"),
                          has_unlabelled_target=False)


@pytest.mark.parametrize("name", ["lora", "dora", "ia3"])
def test_only_adapters_train_and_the_merged_model_computes_the_same(plugins, name):
    model, batch = model_and_batch(plugins)
    plain = copy.deepcopy(model)
    strategy = plugins.get("strategy", name).build()
    strategy.check(model, [strategy])
    strategy.setup(model, CONTEXT)
    assert strategy.targets == ["encoders.image.blocks.0.0", "encoders.image.blocks.0.3", "encoders.image.blocks.1.0",
                                "encoders.image.blocks.1.3", "encoders.x.layers.0.0", "encoders.x.layers.1.0"]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(strategy.adapter_keys) | {n for n, _ in model.named_parameters()
                                                      if n.startswith(("fusion.", "head."))}
    assert all(("lora_" in n or "ia3_" in n) for n in strategy.adapter_keys)

    # A few optimizer steps: adapters, fusion and head move; the base weights do not.
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(3):
        optimizer.zero_grad()
        model(batch).logits.pow(2).mean().backward()
        optimizer.step()
    model.eval()
    plain.eval()
    base = {n.replace(".base_layer", ""): p for n, p in model.named_parameters() if not p.requires_grad}
    for n, p in plain.named_parameters():
        if n.startswith("encoders."):
            assert torch.equal(base[n], p), n
    with torch.no_grad():
        adapted = model(batch).logits
        assert not torch.allclose(adapted, plain(batch).logits)
        merged = merge_adapters(model)
        assert torch.allclose(merged(batch).logits, adapted, atol=1e-5)
    assert list(merged.state_dict()) == list(plain.state_dict())  # plain layers, original keys


def test_lora_in_a_run_exports_merges_and_reloads(tiny, plugins, tmp_path: Path):
    experiment = tiny("adaptation=[{name: lora, r: 4, target_modules: ['encoders.image']}]", "trainer.epochs=1")
    summary, run_dir = transmodal.train(experiment, quiet=True, plugins=plugins)
    metrics, _ = evaluate_run(run_dir, plugins=plugins)
    assert metrics == summary["best"]

    merged_dir = merge_run(run_dir, tmp_path / "merged", plugins=plugins)
    merged_metrics, header = evaluate_run(merged_dir, plugins=plugins)
    for split, values in metrics.items():
        assert merged_metrics[split]["accuracy"] == values["accuracy"]
        assert merged_metrics[split]["loss"] == pytest.approx(values["loss"], abs=1e-4)
    assert transmodal.load_experiment(merged_dir / "config.yaml").adaptation == []
    # A merged run is a whole run directory: predict loads it as it loads the adapter run
    texts = ["a calm red circle", "an angry square"]
    assert [r["prediction"] for r in transmodal.load(merged_dir).predict(texts)] == \
        [r["prediction"] for r in transmodal.load(run_dir, plugins=plugins).predict(texts)]

    path = export_adapters(run_dir, tmp_path / "adapters.pt", plugins=plugins)
    assert path.stat().st_size < (run_dir / "checkpoints" / "best.pt").stat().st_size
    torch.manual_seed(experiment.trainer.seed)  # the same base model (as a pretrained backbone would be)
    fresh = transmodal.Trainer(assemble(experiment, plugins), quiet=True)  # adapters injected, untrained
    header = load_adapters(fresh.model, path)
    assert header["method"] == "lora" and header["targets"][0] == "encoders.image.blocks.0.0"
    assert fresh.evaluate() == metrics
    with pytest.raises(CheckpointError, match="not trained with an adapter strategy"):
        export_adapters(merged_dir, tmp_path / "none.pt", plugins=plugins)
    best = (run_dir / "checkpoints" / "best.pt").read_bytes()
    with pytest.raises(ConfigError, match="best.pt exists; name a new file"):  # never over the run's checkpoint
        export_adapters(run_dir, run_dir / "checkpoints" / "best.pt", plugins=plugins)
    assert (run_dir / "checkpoints" / "best.pt").read_bytes() == best
    with pytest.raises(ConfigError, match="already exists and is not an empty folder"):
        merge_run(run_dir, path, plugins=plugins)


@pytest.mark.parametrize("method", ["lora", "dora", "ia3"])
def test_an_adapter_run_reloads_for_predict_and_export(plugins, tmp_path: Path, method: str):
    """transmodal.load rebuilds the model with the run's adapters: its predictions are evaluate's, and its
    exported bundles compute the same logits."""
    pytest.importorskip("PIL")
    experiment, data = exported_shapes_experiment(tmp_path, [{"name": method, "target_modules": ["encoders.image"]}])
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRANSMODAL_CACHE_DIR", str(tmp_path / "cache"))
        _, run_dir = transmodal.train(experiment, quiet=True, plugins=plugins)
        metrics, _ = evaluate_run(run_dir, detailed=True, plugins=plugins)
    model = transmodal.load(run_dir, plugins=plugins)
    assert any(".base_layer." in key for key in model.model.state_dict())  # adapted layers, not merged away

    rows = [row for row in csv.DictReader((data / "manifest.csv").open(newline=""))
            if row["domain"] == "source" and row["split"] == "val"]
    with (data / "val.csv").open("w", newline="") as file:  # beside the images it names
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    confusion = torch.zeros(len(model.classes), len(model.classes), dtype=torch.int64)
    for row, record in zip(rows, model.predict(data / "val.csv")):
        confusion[model.classes.index(row["label"]), model.classes.index(record["prediction"])] += 1
    assert confusion.tolist() == metrics["source/val"]["confusion"]

    batch = sample_batch(model)
    safetensors = ["safetensors"] if importlib.util.find_spec("safetensors") else []  # the "export" extra
    for format in ("torchscript", *safetensors):
        bundle = transmodal.load(model.export(tmp_path / format, format), plugins=plugins)
        torch.testing.assert_close(bundle.forward_logits(batch), model.forward_logits(batch))


def test_adapter_configs_that_cannot_work_are_rejected(plugins):
    model, _ = model_and_batch(plugins)
    with pytest.raises(ConfigError, match="match no module; module names look like"):
        plugins.get("strategy", "lora").build(target_modules=["encoders.audio"]).check(model, [])
    with pytest.raises(ConfigError, match="select no layer ia3 can adapt"):
        plugins.get("strategy", "ia3").build(target_modules=["encoders.image.blocks.0.1"]).check(model, [])
    with pytest.raises(ConfigError, match="lie in a group that trains fully"):
        plugins.get("strategy", "lora").build(target_modules=["*"]).check(model, [])


def test_adapters_and_a_freezing_strategy_are_not_combined(tiny):
    with pytest.raises(ConfigError, match="lora and lp-ft both decide which parameters train"):
        assemble(tiny("adaptation=[{name: lora}, {name: lp-ft}]"))  # the installed plugins, as a run has them


def test_the_command_line_says_what_is_wrong(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    from transmodal_peft.cli import main

    assert main(["merge", str(tmp_path / "nowhere"), str(tmp_path / "out")]) == 1
    assert "is not a run directory" in capsys.readouterr().err


def test_layers_a_transformer_layer_reads_by_weight_get_no_adapter(plugins):
    """nn.TransformerEncoderLayer's fast path (evaluation without gradients) reads linear1/linear2 weights directly,
    as nn.MultiheadAttention reads out_proj's: adapters there would train and never be evaluated."""
    from transmodal_peft.adapters import LoRA
    from transmodal_peft.params import LoRAParams

    layer = torch.nn.TransformerEncoderLayer(d_model=8, nhead=2, dim_feedforward=16, batch_first=True)
    model = torch.nn.Sequential()
    model.add_module("fusion", torch.nn.ModuleDict({"layer": layer, "project": torch.nn.Linear(8, 8)}))
    strategy = LoRA(LoRAParams(r=2, target_modules=["fusion.*"]))
    assert strategy.resolve_targets(model) == ["fusion.project"]
