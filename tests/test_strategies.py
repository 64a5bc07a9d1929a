"""Adaptation strategies, unit by unit: the formulas they implement and the groups they open, freeze and slow."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from transmodal.builtin.adaptation.alignment import (
    CDAN,
    EntropyMin,
    class_confusion,
    coral,
    covariance,
    entropy,
    mmd,
)
from transmodal.builtin.adaptation.params import CDANParams, EntropyMinParams, WeightSchedule
from transmodal.builtin.strategies import DANN, DANNParams, dann_coefficient, reverse_gradient
from transmodal.data import ModalitySpec
from transmodal.errors import ConfigError
from transmodal.experiment import assemble
from transmodal.model import ModelOutput, TransmodalModel
from transmodal.plugins import get_plugins
from transmodal.strategy import ParamGroup, StepData, TrainingContext


def build_strategy(name: str, **params):
    return get_plugins().get("strategy", name).build(**params)


def image_model(channels: tuple[int, ...] = (4, 8), classes: int = 3) -> TransmodalModel:
    plugins = get_plugins()
    spec = ModalitySpec("image", "image", shape=(3, 8, 8))
    encoder = plugins.get("encoder", "small-cnn").build(spec, channels=list(channels))
    fusion = plugins.get("fusion", "concat").build({"image": encoder.out_dim}, hidden=6)
    head = plugins.get("head", "linear").build(fusion.output_dim, classes)
    return TransmodalModel({}, {"image": encoder}, fusion, head, classes)


def two_modality_model() -> TransmodalModel:
    plugins = get_plugins()
    image = plugins.get("encoder", "small-cnn").build(ModalitySpec("image", "image", shape=(3, 8, 8)), channels=[4, 4])
    vector = plugins.get("encoder", "mlp").build(ModalitySpec("x", "vector", shape=(5,)), hidden=[6, 6, 6])
    fusion = plugins.get("fusion", "concat").build({"image": 4, "x": 6}, hidden=5)
    head = plugins.get("head", "linear").build(fusion.output_dim, 2)
    return TransmodalModel({}, {"image": image, "x": vector}, fusion, head, 2)


def context(steps_per_epoch: int = 10, epochs: int = 3, target: bool = True) -> TrainingContext:
    return TrainingContext(num_classes=3, steps_per_epoch=steps_per_epoch, total_steps=steps_per_epoch * epochs,
                           device=torch.device("cpu"), has_unlabelled_target=target)


def trainable_groups(model: TransmodalModel) -> list[str]:
    return [name for name, module in model.layer_groups() if all(p.requires_grad for p in module.parameters())]


# -- formulas -----------------------------------------------------------------------------------------------------


def test_gradient_reversal_flips_and_scales_the_gradient():
    x = torch.randn(4, 3, requires_grad=True)
    out = reverse_gradient(x, 0.3)
    assert torch.equal(out, x)
    upstream = torch.randn(4, 3)
    out.backward(upstream)
    assert torch.allclose(x.grad, -0.3 * upstream)


def test_mmd_is_zero_for_identical_batches_and_grows_with_a_mean_shift():
    generator = torch.Generator().manual_seed(0)
    source = torch.randn(64, 5, generator=generator)
    for kernel in ("gaussian", "linear"):
        assert mmd(source, source.clone(), kernel).abs() < 1e-6
        values = [float(mmd(source, source + shift, kernel)) for shift in (0.25, 0.5, 1.0, 2.0)]
        assert values == sorted(values) and values[0] > 1e-4
    # linear MMD is exactly the squared distance of the means
    assert torch.isclose(mmd(source, source + 0.5, "linear"), torch.tensor(5 * 0.25))


def test_coral_matches_its_formula_on_a_hand_computed_example():
    source = torch.tensor([[1.0, 0.0], [3.0, 0.0], [2.0, 3.0]])
    target = torch.tensor([[0.0, 0.0], [0.0, 2.0]])
    # Source: column means (2, 1); centred rows (-1,-1), (1,-1), (0,2); C_S = [[2, 0], [0, 6]] / 2 = [[1, 0], [0, 3]].
    assert torch.allclose(covariance(source), torch.tensor([[1.0, 0.0], [0.0, 3.0]]))
    # Target: centred rows (0,-1), (0,1); C_T = [[0, 0], [0, 2]] / 1.
    assert torch.allclose(covariance(target), torch.tensor([[0.0, 0.0], [0.0, 2.0]]))
    # ||C_S - C_T||_F^2 = 1 + 1 = 2; / (4 * d^2) with d = 2 gives 1/8.
    assert torch.isclose(coral(source, target), torch.tensor(0.125))


def _far_from_zero(generator: torch.Generator, rows: int, scale: float = 1.0) -> torch.Tensor:
    """float32 features at an offset of 1000, where one-pass formulas cancel catastrophically."""
    return 1000.0 + scale * torch.randn(rows, 8, generator=generator)


def test_coral_and_mmd_stay_exact_far_from_zero():
    generator = torch.Generator().manual_seed(0)
    source, target = _far_from_zero(generator, 64), _far_from_zero(generator, 48, scale=1.5)
    exact_source, exact_target = source.double(), target.double()  # the same float32 values, in float64
    expected = torch.cov(exact_source.T)
    assert torch.linalg.norm(covariance(source).double() - expected) < 1e-5 * torch.linalg.norm(expected)
    expected_coral = (expected - torch.cov(exact_target.T)).pow(2).sum() / (4 * 8 * 8)
    assert float(coral(source, target)) == pytest.approx(float(expected_coral), rel=1e-5)

    joint = torch.cat([exact_source, exact_target])
    distances = torch.cdist(joint, joint).pow(2)
    base = distances.sum() / (len(joint) * (len(joint) - 1))
    k = sum(torch.exp(-distances / (base * 2.0 ** (i - 2))) for i in range(5))
    expected_mmd = k[:64, :64].mean() + k[64:, 64:].mean() - 2 * k[:64, 64:].mean()
    assert float(mmd(source, target)) == pytest.approx(float(expected_mmd), rel=1e-5)


def test_mmd_of_identical_features_is_zero_with_a_finite_gradient_when_denormals_are_flushed():
    torch.set_flush_denormal(True)  # as the trainer does on CPU
    try:
        features = torch.zeros(8, 4, requires_grad=True)
        value = mmd(features, torch.zeros(8, 4))
        value.backward()
    finally:
        torch.set_flush_denormal(False)  # torch's default (it has no getter)
    assert value.item() == 0.0 and torch.isfinite(features.grad).all()


def test_class_confusion_matches_the_papers_formula_written_out():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3], [-1.0, 3.0, 0.0], [1.0, 1.0, -2.0]])
    t = 2.5
    rows = [[math.exp(v / t) for v in row] for row in logits.tolist()]
    probs = [[v / sum(row) for v in row] for row in rows]
    entropies = [-sum(p * math.log(p) for p in row) for row in probs]
    raw = [1 + math.exp(-h) for h in entropies]
    weights = [len(raw) * w / sum(raw) for w in raw]
    confusion = [[sum(weights[i] * probs[i][a] * probs[i][b] for i in range(4)) for b in range(3)] for a in range(3)]
    columns = [sum(confusion[a][b] for a in range(3)) for b in range(3)]
    normalised = [[confusion[a][b] / columns[b] for b in range(3)] for a in range(3)]
    expected = sum(normalised[a][b] for a in range(3) for b in range(3) if a != b) / 3
    assert class_confusion(logits, t).item() == pytest.approx(expected, rel=1e-5)


def test_class_confusion_sends_no_gradient_through_its_sample_weights():
    """The authors' code (and TLlib's) weights samples by a detached 1 + exp(-H): the gradient is the confusion's
    with those weights held constant."""
    logits = torch.randn(6, 4, generator=torch.Generator().manual_seed(0)) * 2
    live = logits.clone().requires_grad_(True)
    class_confusion(live, 2.5).backward()
    probabilities = lambda z: torch.softmax(z / 2.5, dim=1)  # noqa: E731
    certainty = 1 + torch.exp(-entropy(logits / 2.5))
    weights = certainty * 6 / certainty.sum()
    held = logits.clone().requires_grad_(True)
    confusion = probabilities(held).T @ (weights.unsqueeze(1) * probabilities(held))
    confusion = confusion / confusion.sum(dim=0, keepdim=True)
    ((confusion.sum() - confusion.trace()) / 4).backward()
    assert torch.allclose(live.grad, held.grad, atol=1e-7)


def test_class_confusion_is_zero_for_one_hot_predictions_and_penalises_a_split_sample():
    certain = torch.eye(4).repeat(2, 1) * 100.0
    assert class_confusion(certain, 1.0).item() == pytest.approx(0.0, abs=1e-6)
    split = certain.clone()
    split[0] = torch.tensor([100.0, 100.0, 0.0, 0.0])
    assert class_confusion(split, 1.0).item() > 0.05


def test_annealed_schedule_follows_ganins_formula():
    from transmodal.config import ScheduleConfig
    from transmodal.optim import schedule_factor

    config = ScheduleConfig(name="annealed")
    for step in (0, 25, 50, 100):
        assert schedule_factor(config, step, 10, 100) == pytest.approx((1 + 10 * step / 100) ** -0.75)


def test_entropy_of_uniform_and_certain_predictions():
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [100.0, 0.0, 0.0, 0.0]])
    values = entropy(logits)
    assert torch.isclose(values[0], torch.log(torch.tensor(4.0))) and values[1] < 1e-6


def test_weight_schedule_warms_up_then_ramps():
    schedule = WeightSchedule(weight=2.0, warmup=0.2, ramp=0.4)
    assert schedule.factor(0.0) == schedule.factor(0.19) == 0.0
    assert schedule.factor(0.4) == pytest.approx(1.0)  # halfway up the linear ramp
    assert schedule.factor(0.61) == schedule.factor(1.0) == 2.0
    sigmoid = WeightSchedule(weight=1.0, ramp=1.0, ramp_shape="sigmoid")
    assert sigmoid.factor(0.0) == pytest.approx(torch.exp(torch.tensor(-5.0)).item())
    assert sigmoid.factor(0.5) < 0.5 < sigmoid.factor(0.9) and sigmoid.factor(1.0) == 1.0


def test_l2_sp_is_zero_at_the_start_and_its_gradient_points_to_the_starting_weights():
    model = image_model()
    strategy = build_strategy("l2-sp", alpha=1.0, beta=0.0)
    strategy.check(model, [strategy])
    strategy.setup(model, context())
    step = StepData(model=model, source={}, source_output=None, step=0, progress=0.0)
    assert float(strategy.loss_terms(step)["sp"].detach()) == 0.0

    encoder_params = list(model.encoders.parameters())
    start = [p.detach().clone() for p in encoder_params]
    with torch.no_grad():
        for p in encoder_params:
            p.add_(torch.randn_like(p))
    model.zero_grad()
    loss = strategy.loss_terms(step)["sp"]
    expected = 0.5 * sum(float((p.detach() - s).pow(2).sum()) for p, s in zip(encoder_params, start))
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)
    loss.backward()
    for p, s in zip(encoder_params, start):
        assert torch.allclose(p.grad, p.detach() - s, atol=1e-6)  # a descent step moves p toward s
    assert all(p.grad is None for p in model.head.parameters())  # beta = 0: new layers untouched


def test_l2_sp_puts_plain_l2_on_new_layers_and_switches_weight_decay_off():
    model = image_model()
    strategy = build_strategy("l2-sp", alpha=0.0, beta=2.0)
    strategy.setup(model, context())
    step = StepData(model=model, source={}, source_output=None, step=0, progress=0.0)
    new = list(model.fusion.parameters()) + list(model.head.parameters())
    assert float(strategy.loss_terms(step)["l2"].detach()) == pytest.approx(sum(float(p.detach().pow(2).sum()) for p in new), rel=1e-5)
    groups = strategy.configure_param_groups([ParamGroup("head", []), ParamGroup("strategy.dann", [])])
    assert groups[0].weight_decay == 0.0 and groups[1].weight_decay is None


def test_l2_sp_state_restores_the_starting_point():
    model = image_model()
    first = build_strategy("l2-sp")
    first.setup(model, context())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    second = build_strategy("l2-sp")
    second.setup(model, context())  # a resumed run rebuilds from the current (moved) weights ...
    second.load_state_dict(first.state_dict())  # ... and gets the original start back
    step = StepData(model=model, source={}, source_output=None, step=0, progress=0.0)
    assert torch.equal(second.loss_terms(step)["sp"], first.loss_terms(step)["sp"])


def test_cdan_conditions_on_predictions_and_reverses_the_gradient():
    model = image_model(classes=3)
    features = torch.randn(8, 6, requires_grad=True)
    logits = torch.randn(8, 3)
    domains = torch.tensor([0.0] * 4 + [1.0] * 4)
    for params, randomized in ((CDANParams(), False), (CDANParams(max_multilinear_dim=10, randomized_dim=16), True)):
        strategy = CDAN(params)
        strategy.setup(model, context())
        strategy.parts.eval()  # dropout off: the two passes below see the same network
        assert strategy.parts.randomized is randomized
        probabilities = torch.softmax(logits, 1)
        mapped = strategy.parts.multilinear(features, probabilities)
        assert mapped.shape == (8, 16 if randomized else 18)
        if not randomized:  # the multilinear map is the flattened outer product g f^T
            assert torch.allclose(mapped[0].view(3, 6), probabilities[0, :, None] * features[0, None, :])
        plain = nn.functional.binary_cross_entropy_with_logits(strategy.parts.discriminator(mapped).squeeze(1), domains)
        (plain_grad,) = torch.autograd.grad(plain, features)

        step = StepData(model=model, source={}, source_output=ModelOutput(logits[:4], features[:4]), step=5,
                        progress=0.5, target={}, target_output=ModelOutput(logits[4:], features[4:]))
        features.grad = None
        strategy.loss_terms(step)["domain"].backward()
        coefficient = dann_coefficient(0.5, params.gamma)
        assert torch.allclose(features.grad, -coefficient * plain_grad, atol=1e-6)
        assert all(p.grad.abs().sum() > 0 for p in strategy.parts.discriminator.parameters())


@pytest.mark.parametrize("name", ["mmd", "coral"])
def test_feature_alignment_reports_how_many_units_have_collapsed(name: str):
    strategy = get_plugins().get("strategy", name).build()
    features = torch.zeros(8, 4)  # three dead ReLU units of four: 0 on every row, source and target
    features[:, 3] = torch.arange(8.0)
    logits = torch.zeros(8, 2)
    step = StepData(model=None, source={}, source_output=ModelOutput(logits[:4], features[:4]), step=0,
                    progress=1.0, target={}, target_output=ModelOutput(logits[4:], features[4:]))
    strategy.loss_terms(step)
    assert step.metrics == {"constant_units": pytest.approx(0.75)}  # the trainer logs it under the strategy's name
    features = torch.zeros(8, 4)  # every unit dead: the alignment loss is 0 whatever the inputs
    step.source_output, step.target_output = ModelOutput(logits[:4], features[:4]), ModelOutput(logits[4:], features[4:])
    assert float(strategy.loss_terms(step)[name]) == 0.0 and step.metrics["constant_units"] == 1.0


def test_cdan_entropy_weights_each_domain_to_half_the_loss():
    model = image_model(classes=3)
    strategy = CDAN(CDANParams(entropy=True))
    strategy.setup(model, context())
    strategy.parts.eval()  # dropout off: the two passes see the same network
    features, logits = torch.randn(6, 6), torch.randn(6, 3) * 5
    step = StepData(model=model, source={}, source_output=ModelOutput(logits[:2], features[:2]), step=0,
                    progress=1.0, target={}, target_output=ModelOutput(logits[2:], features[2:]))
    value = strategy.loss_terms(step)["domain"]
    mapped = strategy.parts.multilinear(features, torch.softmax(logits, 1))
    losses = nn.functional.binary_cross_entropy_with_logits(
        strategy.parts.discriminator(mapped).squeeze(1), torch.tensor([0.0, 0, 1, 1, 1, 1]), reduction="none")
    w = 1 + torch.exp(-entropy(logits))
    expected = 0.5 * (losses[:2] * w[:2]).sum() / w[:2].sum() + 0.5 * (losses[2:] * w[2:]).sum() / w[2:].sum()
    assert torch.isclose(value, expected)


def test_dann_and_cdan_weigh_each_domain_half_whatever_its_batch_size():
    """Ganin et al. (2016) average the two domains' losses; a mean over the joined batch would give a target batch
    of 6 rows three times the weight of a source batch of 2."""
    model = image_model(classes=3)
    features, logits = torch.randn(8, 6), torch.randn(8, 3)
    step = StepData(model=model, source={}, source_output=ModelOutput(logits[:2], features[:2]), step=0,
                    progress=1.0, target={}, target_output=ModelOutput(logits[2:], features[2:]))
    domains = torch.tensor([0.0] * 2 + [1.0] * 6)
    for strategy in (DANN(DANNParams()), CDAN(CDANParams())):
        strategy.setup(model, context())
        strategy.modules().eval()  # dropout off: the two passes see the same network
        if isinstance(strategy, DANN):
            domain_logits = strategy.discriminator(features).squeeze(1)
        else:
            mapped = strategy.parts.multilinear(features, torch.softmax(logits, 1))
            domain_logits = strategy.parts.discriminator(mapped).squeeze(1)
        losses = nn.functional.binary_cross_entropy_with_logits(domain_logits, domains, reduction="none")
        expected = 0.5 * (losses[:2].mean() + losses[2:].mean())
        assert torch.isclose(strategy.loss_terms(step)["domain"], expected), type(strategy).__name__


def test_dann_and_cdan_default_to_the_papers_discriminator():
    model = image_model()
    for strategy in (build_strategy("dann"), build_strategy("cdan")):
        strategy.setup(model, context())
        layers = [m for m in strategy.modules().modules() if not list(m.children())]
        kinds = [type(m).__name__ for m in layers]
        assert kinds == ["Linear", "ReLU", "Dropout", "Linear", "ReLU", "Dropout", "Linear"], kinds
        assert [m.out_features for m in layers if isinstance(m, nn.Linear)] == [1024, 1024, 1]
        assert all(m.p == 0.5 for m in layers if isinstance(m, nn.Dropout))


def test_dann_delay_trains_the_discriminator_but_spares_the_encoders():
    model = image_model()
    strategy = DANN(DANNParams(delay=0.5))
    strategy.setup(model, context())
    features = torch.randn(8, 6, requires_grad=True)
    logits = torch.zeros(8, 3)
    for progress, encoders_reached in ((0.25, False), (0.75, True)):
        step = StepData(model=model, source={}, source_output=ModelOutput(logits[:4], features[:4]), step=0,
                        progress=progress, target={}, target_output=ModelOutput(logits[4:], features[4:]))
        features.grad = None
        strategy.discriminator.zero_grad()
        strategy.loss_terms(step)["domain"].backward()
        assert bool(features.grad.abs().sum() > 0) is encoders_reached
        assert all(p.grad.abs().sum() > 0 for p in strategy.discriminator.parameters())  # it learns all along


def _three_blobs(shift: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Three well-separated classes in 2-D (means on a circle of radius 3, spread 0.5), moved by ``shift``
    along x; returns the samples, their labels and the unshifted class means."""
    generator = torch.Generator().manual_seed(0)
    angles = torch.arange(3) * 2 * math.pi / 3
    means = 3.0 * torch.stack([angles.cos(), angles.sin()], dim=1)
    labels = torch.arange(3).repeat_interleave(100)
    samples = means[labels] + 0.5 * torch.randn(300, 2, generator=generator) + torch.tensor([shift, 0.0])
    return samples, labels, means


def test_entropy_min_at_its_defaults_does_not_collapse_where_plain_entropy_does():
    # A nearest-mean classifier of the source blobs gets 2/3 of the shifted target right, predicting every
    # class but class 0 most; then only the entropy-min loss trains it, on the target.
    target, labels, means = _three_blobs(shift=3.0)

    def adapt(params: EntropyMinParams) -> torch.Tensor:
        classifier = nn.Linear(2, 3)
        with torch.no_grad():
            classifier.weight.copy_(means)
            classifier.bias.copy_(-0.5 * means.pow(2).sum(dim=1))
        strategy = EntropyMin(params)
        optimizer = torch.optim.SGD(classifier.parameters(), lr=0.5)
        for index in range(100):
            logits = classifier(target)
            step = StepData(model=None, source={}, source_output=None, step=index, progress=1.0, target={},
                            target_output=ModelOutput(logits, target))
            optimizer.zero_grad()
            strategy.loss_terms(step)["entropy"].backward()
            optimizer.step()
        with torch.no_grad():
            return classifier(target).argmax(dim=1)

    with torch.no_grad():
        start = (target @ means.T - 0.5 * means.pow(2).sum(dim=1)).argmax(dim=1)
    assert 0.5 < float((start == labels).float().mean()) < 0.8 and start.unique().numel() == 3

    infomax = adapt(EntropyMinParams())
    assert EntropyMinParams().diversity == 1.0  # SHOT's weight
    assert infomax.bincount(minlength=3).min() >= 75  # every class keeps a fair share of the predictions
    assert float((infomax == labels).float().mean()) > 0.95

    plain = adapt(EntropyMinParams(diversity=0.0))  # Grandvalet and Bengio: the majority class swallows others
    assert plain.bincount(minlength=3).min() <= 3
    assert float((plain == labels).float().mean()) < float((start == labels).float().mean())


def test_pseudo_labels_only_confident_target_predictions():
    model = image_model(classes=3)
    strategy = build_strategy("pseudo-label", threshold=0.9)
    strategy.setup(model, context())
    target_logits = torch.tensor([[10.0, 0.0, 0.0], [0.1, 0.0, 0.0]], requires_grad=True)
    step = StepData(model=model, source={}, source_output=None, step=0, progress=1.0, target={},
                    target_output=ModelOutput(target_logits, torch.zeros(2, 6)))
    loss = strategy.loss_terms(step)["pseudo"]
    expected = nn.functional.cross_entropy(target_logits[:1], torch.tensor([0])) / 2  # one of two samples
    assert torch.isclose(loss, expected)
    assert step.metrics == {"used": 0.5}  # reported (as metric/pseudo-label.used), not a loss term


def test_mean_teacher_follows_the_model_by_ema():
    model = image_model()
    strategy = build_strategy("pseudo-label", ema=0.75)
    strategy.setup(model, context())
    teacher = strategy._teacher()
    before = [p.clone() for p in teacher.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(4.0)
    strategy.on_step_end(1)
    for old, new, student in zip(before, teacher.parameters(), model.parameters()):
        assert torch.allclose(new, 0.75 * old + 0.25 * student)
        assert not new.requires_grad


# -- AdaBN ----------------------------------------------------------------------------------------------------------


def _bn_inputs_exact(model: TransmodalModel, images: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Direct computation: run the CNN by hand over all images at once, each BatchNorm normalising by the
    exact statistics of its input, and return each BatchNorm's input mean and unbiased variance."""
    stats = []
    x = images
    for block in model.encoders["image"].blocks:
        for layer in block:
            if isinstance(layer, nn.BatchNorm2d):
                mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=True)
                stats.append((mean, var))
                biased = x.var((0, 2, 3), unbiased=False)
                x = (x - mean.view(1, -1, 1, 1)) / torch.sqrt(biased.view(1, -1, 1, 1) + layer.eps)
                x = x * layer.weight.view(1, -1, 1, 1) + layer.bias.view(1, -1, 1, 1)
            else:
                x = layer(x)
    return stats


def test_adabn_sets_batchnorm_statistics_to_the_target_datas_own_and_restores_them():
    torch.manual_seed(0)
    model = image_model().eval()
    strategy = build_strategy("adabn")
    strategy.check(model, [strategy])
    strategy.setup(model, context())
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    source_stats = [(bn.running_mean.clone(), bn.running_var.clone()) for bn in bns]
    target = torch.rand(48, 3, 8, 8) * 3 + 1  # far from the fresh layers' (0, 1) statistics

    with torch.inference_mode():  # as the trainer evaluates
        strategy.before_evaluate(model, [{"image": target}])
    assert not model.training and not any(bn.training for bn in bns)
    with torch.no_grad():
        exact = _bn_inputs_exact(model, target)
    for bn, (mean, var) in zip(bns, exact):
        assert torch.allclose(bn.running_mean, mean, atol=1e-4) and torch.allclose(bn.running_var, var, rtol=1e-3)

    # In several batches, the first BatchNorm's statistics are still exactly those of all target samples.
    with torch.inference_mode():
        strategy.before_evaluate(model, [{"image": chunk} for chunk in target.split(16)])
    assert torch.allclose(bns[0].running_mean, exact[0][0], atol=1e-4)
    assert torch.allclose(bns[0].running_var, exact[0][1], rtol=1e-3)

    strategy.after_evaluate(model)
    for bn, (mean, var) in zip(bns, source_stats):
        assert torch.equal(bn.running_mean, mean) and torch.equal(bn.running_var, var)


def test_adabn_statistics_stay_exact_far_from_zero():
    # The first convolution passes each pixel's mean through (centre tap only, so no padding effect) and the
    # images sit at 1000 with a spread of 0.1: the first BatchNorm's input has a mean some 10^4 times its
    # standard deviation, where a one-pass variance (sum of squares - n mean^2) in float32 is noise.
    torch.manual_seed(0)
    model = image_model().eval()
    conv = model.encoders["image"].blocks[0][0]
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[:, :, 1, 1] = 1.0 / 3
    strategy = build_strategy("adabn")
    strategy.setup(model, context())
    first = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    seen: list[torch.Tensor] = []
    handle = first.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].detach().clone()))
    target = 1000.0 + 0.1 * torch.rand(48, 3, 8, 8)
    with torch.inference_mode():
        strategy.before_evaluate(model, [{"image": chunk} for chunk in target.split(16)])
    handle.remove()
    exact = torch.cat(seen).double()  # the very float32 inputs it saw, in float64
    assert torch.allclose(first.running_mean.double(), exact.mean((0, 2, 3)), rtol=1e-6, atol=0)
    assert torch.allclose(first.running_var.double(), exact.var((0, 2, 3)), rtol=1e-5, atol=0)


def test_adabn_is_rejected_without_batchnorm_or_target_data():
    plugins = get_plugins()
    encoder = plugins.get("encoder", "mlp").build(ModalitySpec("x", "vector", shape=(4,)))
    fusion = plugins.get("fusion", "concat").build({"x": encoder.out_dim})
    model = TransmodalModel({}, {"x": encoder}, fusion, plugins.get("head", "linear").build(encoder.out_dim, 2), 2)
    strategy = build_strategy("adabn")
    with pytest.raises(ConfigError, match="no BatchNorm"):
        strategy.check(model, [strategy])
    with pytest.raises(ConfigError, match="unlabelled target data"):
        strategy.setup(image_model(), context(target=False))


# -- the fine-tuning family -----------------------------------------------------------------------------------------


def test_gradual_unfreezing_opens_the_groups_in_order():
    model = two_modality_model()
    strategy = build_strategy("gradual-unfreeze", every=2, unit="step")
    strategy.check(model, [strategy])
    strategy.setup(model, context())
    opened = [trainable_groups(model)]
    for step in range(1, 9):
        strategy.on_step_end(step)
        if trainable_groups(model) != opened[-1]:
            opened.append(trainable_groups(model))
    # Levels from the top: head; fusion; each encoder's last group; then the groups below, modalities together.
    assert opened == [
        ["head"],
        ["fusion", "head"],
        ["encoders.image.block2", "encoders.x.layer3", "fusion", "head"],
        ["encoders.image.block1", "encoders.image.block2", "encoders.x.layer2", "encoders.x.layer3", "fusion", "head"],
        [name for name, _ in model.layer_groups()],
    ]
    # Still-frozen groups run in eval mode (their BatchNorm statistics stay), opened ones train.
    fresh = build_strategy("gradual-unfreeze", every=2, unit="step")
    fresh.setup(model, context())
    model.train()
    fresh.on_epoch_start(0)
    assert not model.encoders["image"].blocks[0].training and model.head.training


def test_gradual_unfreezing_by_epoch_and_after_a_resume():
    model = two_modality_model()
    strategy = build_strategy("gradual-unfreeze", every=1, unit="epoch", start=2)
    strategy.setup(model, context(steps_per_epoch=10))
    assert trainable_groups(model) == ["fusion", "head"]
    for step in range(1, 11):
        strategy.on_step_end(step)
    assert "encoders.x.layer3" in trainable_groups(model)
    state = strategy.state_dict()

    resumed_model = two_modality_model()
    resumed = build_strategy("gradual-unfreeze", every=1, unit="epoch", start=2)
    resumed.setup(resumed_model, context(steps_per_epoch=10))
    resumed.load_state_dict(state)
    assert trainable_groups(resumed_model) == trainable_groups(model)


def test_freeze_by_pattern_and_first_groups():
    model = two_modality_model()
    strategy = build_strategy("freeze", groups=["encoders.x.*"], first=1)
    strategy.check(model, [strategy])
    strategy.setup(model, context())
    frozen = {name for name, _ in model.layer_groups()} - set(trainable_groups(model))
    assert frozen == {"encoders.image.block1", "encoders.x.layer1", "encoders.x.layer2", "encoders.x.layer3"}
    with pytest.raises(ConfigError, match="no layer group matches 'encoders.text.*'.*encoders.image.block1"):
        build_strategy("freeze", groups=["encoders.text.*"]).check(model, [])


def test_lp_ft_probes_then_fine_tunes():
    model = two_modality_model()
    strategy = build_strategy("lp-ft", probe_epochs=2)
    strategy.check(model, [strategy])
    strategy.setup(model, context(epochs=4))
    assert trainable_groups(model) == ["fusion", "head"]
    model.train()
    strategy.on_epoch_start(1)
    assert trainable_groups(model) == ["fusion", "head"] and not model.encoders["image"].blocks[1].training
    strategy.on_epoch_start(2)
    assert trainable_groups(model) == [name for name, _ in model.layer_groups()]
    with pytest.raises(ConfigError, match="probe_epochs=2 leaves none of the 2 epochs"):
        build_strategy("lp-ft", probe_epochs=2).setup(two_modality_model(), context(epochs=2))


def test_layerwise_lr_decays_level_by_level_from_the_head():
    model = two_modality_model()
    strategy = build_strategy("layerwise-lr", decay=0.5)
    strategy.setup(model, context())
    groups = [ParamGroup(name, [], lr_scale=1.0) for name, _ in model.layer_groups()]
    groups.append(ParamGroup("strategy.cdan", []))
    scales = {g.name: g.lr_scale for g in strategy.configure_param_groups(groups)}
    assert scales == {
        "encoders.image.block1": 0.125, "encoders.image.block2": 0.25,
        "encoders.x.layer1": 0.0625, "encoders.x.layer2": 0.125, "encoders.x.layer3": 0.25,
        "fusion": 0.5, "head": 1.0, "strategy.cdan": 1.0,
    }


@pytest.mark.parametrize(("adaptation", "message"), [
    ("[{name: lp-ft}, {name: gradual-unfreeze}]", "lp-ft and gradual-unfreeze both decide which parameters train"),
    ("[{name: linear-probe}, {name: freeze, first: 1}]", "linear-probe and freeze both decide which parameters train"),
    ("[{name: dann}, {name: cdan}]", "dann and cdan are both adversarial"),
])
def test_strategies_that_would_overrule_each_other_are_rejected(tiny, adaptation: str, message: str):
    with pytest.raises(ConfigError, match=message):
        assemble(tiny(f"adaptation={adaptation}"))


def test_dirt_t_keeps_the_model_near_a_teacher_it_refreshes_and_drops_the_source_labels():
    model = image_model()
    strategy = build_strategy("dirt-t", teacher_every=4)
    assert strategy.task_weight == 0.0 and strategy.needs_unlabelled_target  # Shu et al.'s refinement: target only
    strategy.setup(model, context())
    target = {"image": torch.rand(5, 3, 8, 8)}
    step = StepData(model=model, source={}, source_output=ModelOutput(torch.zeros(1, 3), torch.zeros(1, 6)), step=0,
                    progress=0.5, target=target, target_output=model(target))
    # A teacher copied from the model itself: no divergence yet (BatchNorm on the batch's statistics in both).
    assert float(strategy.loss_terms(step)["teacher"].detach()) == pytest.approx(0.0, abs=1e-6)
    def head_weight(network: TransmodalModel) -> torch.Tensor:
        return next(network.head.parameters())

    with torch.no_grad():
        head_weight(model).add_(1.0)  # the model moves away from its teacher
    step.target_output = model(target)
    teacher_probabilities = torch.softmax(strategy.teacher(target).logits, dim=1)
    expected = (teacher_probabilities * (teacher_probabilities.log()
                                         - torch.log_softmax(step.target_output.logits, dim=1))).sum(1).mean()
    assert torch.isclose(strategy.loss_terms(step)["teacher"], 0.01 * expected)
    strategy.on_step_end(3)  # not yet a refresh
    assert not torch.equal(head_weight(strategy.teacher), head_weight(model))
    strategy.on_step_end(4)
    assert torch.equal(head_weight(strategy.teacher), head_weight(model))
    assert not head_weight(strategy.teacher).requires_grad
