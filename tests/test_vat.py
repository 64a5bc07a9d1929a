"""Virtual adversarial training: the perturbation it finds, and that it perturbs what the clean pass saw."""

from __future__ import annotations

import pytest
import torch
from transmodal.builtin.adaptation.smoothness import (
    VAT,
    kl_divergence,
    perturbable_modules,
)
from transmodal.data import ModalitySpec, joint_batch
from transmodal.domain_norm import batchnorm_layers
from transmodal.encoder import ImageInput
from transmodal.errors import ConfigError
from transmodal.experiment import assemble
from transmodal.model import TransmodalModel
from transmodal.plugins import get_plugins
from transmodal.strategy import StepData, TrainingContext


def vat(**params) -> VAT:
    return get_plugins().get("strategy", "vat").build(**params)


def image_model(invert: float = 0.0) -> TransmodalModel:
    plugins = get_plugins()
    spec = ModalitySpec("image", "image", shape=(3, 8, 8))
    encoder = plugins.get("encoder", "small-cnn").build(spec, channels=[4, 8])
    fusion = plugins.get("fusion", "concat").build({"image": encoder.out_dim}, hidden=6, batchnorm=True)
    head = plugins.get("head", "linear").build(fusion.output_dim, 3)
    return TransmodalModel({"image": ImageInput(invert=invert)}, {"image": encoder}, fusion, head, 3)


def batch(rows: int, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {"image": torch.randint(0, 256, (rows, 3, 8, 8), dtype=torch.uint8, generator=generator),
            "label": torch.randint(0, 3, (rows,), generator=generator)}


def context() -> TrainingContext:
    return TrainingContext(num_classes=3, steps_per_epoch=1, total_steps=1, device=torch.device("cpu"),
                           has_unlabelled_target=True)


def joint_step(model: TransmodalModel, source: dict, target: dict) -> StepData:
    """One training step's clean pass as the trainer makes it: source and target rows through the model at once."""
    output = model(joint_batch(source, target, model.modalities))
    rows = len(source["label"])
    return StepData(model=model, source=source, source_output=output.rows(slice(None, rows)), step=0, progress=0.0,
                    target=target, target_output=output.rows(slice(rows, None)))


def test_a_vanishing_perturbation_leaves_the_prediction_of_the_augmented_batch_unchanged():
    """Random inversion draws anew at every pass: were the perturbed passes re-augmented, half of their images
    would be inverted relative to the clean pass, and the divergence would stay far from 0."""
    torch.manual_seed(0)
    model = image_model(invert=0.5).train()
    strategy = vat(radius=1e-4, target_weight=1.0)
    strategy.setup(model, context())
    terms = strategy.loss_terms(joint_step(model, batch(16, 1), batch(16, 2)))
    strategy.on_step_end(1)
    assert set(terms) == {"source", "target"}
    assert terms["source"].item() < 1e-5 and terms["target"].item() < 1e-5

    full_radius = vat(radius=3.5, target_weight=1.0)
    full_radius.setup(model, context())
    terms = full_radius.loss_terms(joint_step(model, batch(16, 1), batch(16, 2)))
    assert terms["source"].item() > 1e-4  # the same strategy at its radius does change the prediction


def test_per_domain_passes_are_repeated_as_two_passes():
    torch.manual_seed(0)
    model = image_model().train()
    strategy = vat(radius=1e-4, target_weight=1.0)
    strategy.setup(model, context())
    source, target = batch(8, 1), batch(12, 2)
    step = StepData(model=model, source=source, source_output=model(source), step=0, progress=0.0,
                    target=target, target_output=model(target))
    terms = strategy.loss_terms(step)
    assert terms["source"].item() < 1e-5 and terms["target"].item() < 1e-5


def test_the_adversarial_direction_changes_the_prediction_more_than_random_ones():
    torch.manual_seed(0)
    model = image_model().eval()
    inputs = model.inputs["image"](batch(32, 3)["image"])
    strategy = vat(radius=2.0, source_weight=1.0, target_weight=0.0)
    strategy.setup(model, context())
    reference_logits = model(batch(32, 3)).logits
    adversarial = strategy._adversarial_divergences(model, batch(32, 3), {"image": inputs}, reference_logits)

    reference = torch.softmax(reference_logits.detach(), dim=1)
    random_divergences = []
    for _ in range(20):
        direction = torch.randn_like(inputs)
        direction = 2.0 * direction / direction.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        with strategy._inputs_replaced({"image": inputs + direction}):
            random_divergences.append(kl_divergence(reference, model(batch(32, 3)).logits))
    random_mean = torch.stack(random_divergences).mean(dim=0)
    assert (adversarial > random_mean).float().mean() > 0.9


def test_the_loss_trains_the_model_toward_smoothness():
    torch.manual_seed(0)
    model = image_model().train()
    strategy = vat(radius=2.0, source_weight=1.0, target_weight=0.0)
    strategy.setup(model, context())
    source = batch(16, 4)
    step = StepData(model=model, source=source, source_output=model(source), step=0, progress=0.0)
    loss = strategy.loss_terms(step)["source"]
    loss.backward()
    assert all(p.grad is not None for p in model.encoders["image"].parameters())


def test_vat_needs_an_image_or_word_embeddings(tiny):
    plugins = get_plugins()
    spec = ModalitySpec("x", "vector", shape=(5,))
    encoder = plugins.get("encoder", "mlp").build(spec, hidden=[6])
    fusion = plugins.get("fusion", "concat").build({"x": encoder.out_dim}, hidden=4)
    model = TransmodalModel({}, {"x": encoder}, fusion, plugins.get("head", "linear").build(4, 2), 2)
    with pytest.raises(ConfigError, match="vat perturbs images and word embeddings"):
        vat().check(model, [])
    with pytest.raises(Exception, match="both 0"):
        vat(source_weight=0.0, target_weight=0.0)
    model = assemble(tiny("adaptation=[{name: vat}]")).model  # image + caption: both are perturbed
    assert set(perturbable_modules(model)) == {"image", "text"}


def test_the_perturbed_passes_leave_batchnorm_running_statistics_alone():
    torch.manual_seed(0)
    model = image_model().train()
    strategy = vat(target_weight=1.0)
    strategy.setup(model, context())
    step = joint_step(model, batch(16, 1), batch(16, 2))
    after_clean_pass = {name: buffer.clone() for name, buffer in model.named_buffers()}
    strategy.loss_terms(step)
    assert all(torch.equal(buffer, after_clean_pass[name]) for name, buffer in model.named_buffers())
    assert all(layer.momentum == 0.1 for layer in batchnorm_layers(model))


def test_word_embeddings_are_perturbed_for_text():
    """Miyato et al. (2017): the perturbation of a text is one of its word embeddings, found the same way."""
    torch.manual_seed(0)
    plugins = get_plugins()
    spec = ModalitySpec("text", "text", vocab_size=50)
    encoder = plugins.get("encoder", "bow").build(spec, embedding_dim=8)
    fusion = plugins.get("fusion", "concat").build({"text": encoder.out_dim}, hidden=6)
    model = TransmodalModel({}, {"text": encoder}, fusion, plugins.get("head", "linear").build(6, 3), 3).train()
    assert perturbable_modules(model) == {"text": encoder.embedding}
    source = {"text": torch.randint(1, 50, (16, 7)), "label": torch.randint(0, 3, (16,))}
    target = {"text": torch.randint(1, 50, (16, 5))}  # another length: the joint pass pads it

    strategy = vat(radius=1e-4, target_weight=1.0)
    strategy.setup(model, context())
    terms = strategy.loss_terms(joint_step(model, source, target))
    assert terms["source"].item() < 1e-6 and terms["target"].item() < 1e-6
    strategy.on_step_end(1)

    strong = vat(radius=5.0, target_weight=1.0)
    strong.setup(model, context())
    assert strong.loss_terms(joint_step(model, source, target))["target"].item() > 1e-4


@pytest.mark.parametrize("setting, bound", [("xi: 1.0e+39", "less than or equal to 10000"),
                                            ("xi: 1.0e-300", "greater than or equal to"),
                                            ("radius: 1.0e+39", "less than or equal to 10000")])
def test_lengths_float32_cannot_compute_are_refused_by_config_validate(setting: str, bound: str, capsys):
    from transmodal.cli import main

    assert main(["config", "validate", "--set", f"adaptation=[{{name: vat, {setting}}}]"]) == 2
    assert f"adaptation.0.{setting.split(':')[0]}: Input should be {bound}" in capsys.readouterr().err
