"""Virtual adversarial training: predictions kept smooth around every training input, source and target."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from transmodal.builtin.adaptation.params import VATParams
from transmodal.data import joint_batch
from transmodal.domain_norm import batchnorm_layers
from transmodal.errors import ConfigError
from transmodal.model import TransmodalModel
from transmodal.strategy import StepData, Strategy, TrainingContext


def _unit(direction: torch.Tensor) -> torch.Tensor:
    """Each sample's perturbation scaled to L2 norm 1 over all its dimensions."""
    norms = direction.flatten(1).norm(dim=1).clamp(min=1e-12)
    return direction / norms.view(-1, *([1] * (direction.dim() - 1)))


def kl_divergence(reference: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Per row, KL(reference || softmax(logits)) for a fixed distribution ``reference``."""
    log_reference = torch.log(reference.clamp(min=1e-12))
    return (reference * (log_reference - torch.log_softmax(logits.float(), dim=1))).sum(dim=1)


def perturbable_modules(model: TransmodalModel) -> dict[str, nn.Module]:
    """Per modality, the module whose output VAT perturbs: an image modality's input module; a text modality's
    first embedding layer. Other modalities are left as they are."""
    modules: dict[str, nn.Module] = dict(model.inputs.items())
    for modality, encoder in model.encoders.items():
        if modality not in modules:
            embedding = next((m for m in encoder.modules() if isinstance(m, (nn.Embedding, nn.EmbeddingBag))), None)
            if embedding is not None:
                modules[modality] = embedding
    return modules


class VAT(Strategy):
    """Virtual adversarial training (Miyato et al., 2018, "Virtual Adversarial Training: A Regularization Method
    for Supervised and Semi-Supervised Learning"): for each input x, the perturbation r of L2 norm ``radius`` that
    most changes the prediction is found by one power iteration from a random direction of length ``xi``; the loss
    is the divergence between the prediction at x (held fixed) and at x + r. It needs no labels, so it applies to
    the target batch as well as to the source batch.

    With conditional entropy minimisation on the target (``entropy-min`` with ``diversity: 0``) and a domain
    discriminator (``dann``) this is VADA (Shu et al., 2018, "A DIRT-T Approach to Unsupervised Domain
    Adaptation"): entropy minimisation pushes the decision boundary away from target samples, and the smoothness
    term makes the classifier locally Lipschitz around them; without it, a classifier can be confident on every
    target sample and still draw its boundary through a dense target region. The defaults are theirs: radius 3.5, xi 1e-6, source weight 1,
    target weight 0.01 (their MNIST -> SVHN setting, images in [-1, 1]).

    What is perturbed: for an image modality, what its encoder receives, the batch after augmentation and
    normalisation (and after per-image standardisation with ``data.image_normalization: per-image``; Shu et al.
    standardise inside the network, after the perturbation); for a text modality, its word embeddings, as Miyato
    et al. (2017, "Adversarial Training Methods for Semi-Supervised Text Classification") do (the output of the
    encoder's first embedding layer: for a bag of words, the mean embedding). The strategy records that tensor
    during the trainer's forward pass, so the clean prediction and its perturbed counterparts see the same
    augmented image.
    """

    name = "vat"
    needs_unlabelled_target = False

    def __init__(self, params: VATParams) -> None:
        self.params = params
        self.needs_unlabelled_target = params.target_weight > 0
        self.recorded: dict[str, list[torch.Tensor]] = {}
        self.replacement: dict[str, torch.Tensor] | None = None
        self.model: TransmodalModel | None = None

    def check(self, model: TransmodalModel, strategies: list[Strategy]) -> None:
        if not perturbable_modules(model):
            raise ConfigError(
                "vat perturbs images and word embeddings, and this model has neither (no image modality, no text "
                "encoder with an embedding layer); remove vat from adaptation"
            )

    def setup(self, model: TransmodalModel, context: TrainingContext) -> None:
        self.model = model
        for modality, module in perturbable_modules(model).items():
            self.recorded[modality] = []
            module.register_forward_hook(self._hook(modality))

    def _hook(self, modality: str):
        def record_or_replace(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
            if self.replacement is not None:
                return self.replacement[modality]
            if self.model is not None and self.model.training and torch.is_grad_enabled():
                self.recorded[modality].append(output.detach())
            return None
        return record_or_replace

    @contextmanager
    def _inputs_replaced(self, inputs: dict[str, torch.Tensor]) -> Iterator[None]:
        """The model's input modules hand the encoders ``inputs``; BatchNorm normalises by the batch as in the
        clean pass but keeps its running statistics, which follow the clean batches only (with per-domain
        BatchNorm, a perturbed target batch would otherwise move the source's statistics)."""
        self.replacement = inputs
        layers = batchnorm_layers(self.model) if self.model is not None else []
        saved = [(layer.momentum, layer.num_batches_tracked.clone() if layer.num_batches_tracked is not None
                  else None) for layer in layers]
        for layer in layers:
            layer.momentum = 0.0
        try:
            yield
        finally:
            self.replacement = None
            for layer, (momentum, tracked) in zip(layers, saved, strict=True):
                layer.momentum = momentum
                if tracked is not None:
                    layer.num_batches_tracked.copy_(tracked)

    def _passes(self, step: StepData) -> list[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor]]:
        """The trainer's forward passes of this step as (raw batch, recorded encoder inputs, logits): one joint
        pass over source and target rows, or one pass per domain, source first. Repeating the same passes keeps
        BatchNorm's batch statistics as the clean prediction saw them, so only the perturbation changes it."""
        first = {m: outputs[0] for m, outputs in self.recorded.items()}
        rows = next(iter(first.values())).shape[0]
        source_rows = step.source_output.logits.shape[0]
        if step.target is None or step.target_output is None:
            return [(step.source, first, step.source_output.logits)]
        if rows > source_rows:
            batch = joint_batch(step.source, step.target, step.model.modalities)
            return [(batch, first, torch.cat([step.source_output.logits, step.target_output.logits]))]
        passes = [(step.source, first, step.source_output.logits)]
        second = {m: outputs[1] for m, outputs in self.recorded.items() if len(outputs) > 1}
        if second:  # the target batch has an image modality too
            passes.append((step.target, second, step.target_output.logits))
        return passes

    def _adversarial_divergences(self, model: TransmodalModel, batch: dict[str, torch.Tensor],
                                 inputs: dict[str, torch.Tensor], logits: torch.Tensor) -> torch.Tensor:
        """Per row: the divergence of the prediction at the virtual adversarial perturbation of the inputs from
        the clean prediction."""
        reference = torch.softmax(logits.detach().float(), dim=1)
        probes = {m: (self.params.xi * _unit(torch.randn_like(x))).requires_grad_() for m, x in inputs.items()}
        with self._inputs_replaced({m: x + probes[m] for m, x in inputs.items()}):
            probe_loss = kl_divergence(reference, model(batch).logits).sum()
        gradients = torch.autograd.grad(probe_loss, list(probes.values()))
        adversarial = {m: x + self.params.radius * _unit(g.detach())
                       for (m, x), g in zip(inputs.items(), gradients, strict=True)}
        with self._inputs_replaced(adversarial):
            return kl_divergence(reference, model(batch).logits)

    def loss_terms(self, step: StepData) -> dict[str, torch.Tensor]:
        if not all(self.recorded.values()):  # the trainer's pass recorded nothing: not a training step
            return {}
        divergences = torch.cat([self._adversarial_divergences(step.model, batch, inputs, logits)
                                 for batch, inputs, logits in self._passes(step)])
        source_rows = step.source_output.logits.shape[0]
        terms = {}
        if self.params.source_weight > 0:
            terms["source"] = self.params.source_weight * divergences[:source_rows].mean()
        if self.params.target_weight > 0 and len(divergences) > source_rows:
            terms["target"] = self.params.target_weight * divergences[source_rows:].mean()
        return terms

    def on_step_end(self, step: int) -> None:
        for outputs in self.recorded.values():
            outputs.clear()


def build_vat(params: VATParams) -> VAT:
    return VAT(params)
