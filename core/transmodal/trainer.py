"""The training engine: devices, precision, optimisation, the loop, evaluation, checkpoints and metrics.

One optimizer step takes a labelled source batch and, when a strategy asks for it, an unlabelled target
batch. Nothing in the step synchronises the device: losses are summed on the device and read every
``log_every`` steps.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from transmodal.checkpoint import CHECKPOINT_FORMAT, class_difference, save_checkpoint
from transmodal.cross_modal import (
    AlignedSpace,
    SplitAlignment,
    check_via,
    class_prototypes,
    cross_fitted_transfer,
    embeddings_of,
    fit_probe,
    zero_shot_modalities,
)
from transmodal.data import Batch, BatchLoader, joint_batch, move_batch
from transmodal.devices import resolve_device
from transmodal.distributed import SINGLE, World, data_parallel
from transmodal.domain_norm import TargetStatistics, batchnorm_layers
from transmodal.errors import CheckpointError, ConfigError, DataError, TrainingDiverged
from transmodal.experiment import Assembled
from transmodal.loggers import Loggers, open_loggers
from transmodal.metrics import DETAILS, ClassificationMeter
from transmodal.model import ModelOutput
from transmodal.optim import build_optimizer, build_scheduler
from transmodal.selection import build_panel, panel_choices, score_panel
from transmodal.strategy import ParamGroup, StepData, TrainingContext
from transmodal.validator import SOURCE_TRAIN, SOURCE_VAL, Metrics, ValidationContext
from transmodal.weight_average import WeightAverage

SOURCE_PREFIX = "source/"  # evaluation splits of the source domain, e.g. "source/val"


def _check_precision(precision: str, device: torch.device) -> None:
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("trainer.precision: fp16 needs a CUDA device (it relies on a gradient scaler); "
                          "use bf16 or fp32 on the CPU")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("trainer.precision: this GPU does not support bf16; use fp16 or fp32")


StepLosses = tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]  # loss terms, reported values


class _StepLosses(nn.Module):
    """The model and the strategies' modules as one module whose forward gives a step's loss terms, so that one
    DistributedDataParallel wrapper averages the gradients of both (a discriminator trains too)."""

    def __init__(self, model: nn.Module, strategy_modules: nn.ModuleList,
                 losses: Callable[[Batch, Batch | None], StepLosses]) -> None:
        super().__init__()
        self.model = model
        self.strategy_modules = strategy_modules
        self.losses = losses

    def forward(self, source: Batch, target: Batch | None) -> StepLosses:
        return self.losses(source, target)


class Trainer:
    def __init__(self, assembled: Assembled, run_dir: Path | None = None, quiet: bool = False,
                 world: World = SINGLE) -> None:
        self.assembled = assembled
        self.experiment = assembled.experiment
        self.config = self.experiment.trainer
        self.data = assembled.data
        self.strategies = assembled.strategies
        self.validator = assembled.validator
        self.panel = build_panel(self.data) if self.config.score_validators else {}
        self.run_dir = run_dir
        self.quiet = quiet
        self.world = world
        self.device = world.device(resolve_device(self.config.device))
        _check_precision(self.config.precision, self.device)
        if self.device.type == "cpu":
            torch.set_flush_denormal(self.config.flush_denormal)

        self.model = assembled.model.to(self.device)
        if world.distributed and self.config.sync_batchnorm:  # before anything keeps a reference to a layer
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        if self.config.compile:
            self.model.compile()
        self._shard_data()
        self.steps_per_epoch = len(self.data.train)
        self.total_steps = self.steps_per_epoch * self.config.epochs
        self.needs_target = any(s.needs_unlabelled_target for s in self.strategies)
        self.task_weight = math.prod(s.task_weight for s in self.strategies)
        per_domain = self.config.batchnorm == "per-domain" and self.needs_target and batchnorm_layers(self.model)
        self.target_statistics = TargetStatistics(self.model) if per_domain else None
        self._evaluation_context = contextlib.ExitStack()
        context = TrainingContext(
            num_classes=self.model.num_classes,
            steps_per_epoch=self.steps_per_epoch,
            total_steps=self.total_steps,
            device=self.device,
            has_unlabelled_target=self.data.unlabelled is not None,
        )
        for strategy in self.strategies:
            strategy.setup(self.model, context)
        self.strategy_modules = nn.ModuleList(
            [strategy.modules() or nn.Identity() for strategy in self.strategies]
        ).to(self.device)
        self._step_losses = _StepLosses(self.model, self.strategy_modules, self._loss_terms)
        self.weight_average = (WeightAverage(self.config.ema_decay, self._trained_tensors)
                               if self.config.ema_decay is not None else None)
        self._parallel: nn.Module | None = None  # _step_losses in DistributedDataParallel, built at the first step
        self._parallel_trainable: tuple[bool, ...] = ()

        groups = self._param_groups()
        for strategy in self.strategies:
            groups = strategy.configure_param_groups(groups)
        if not any(p.requires_grad for group in groups for p in group.params):
            raise ConfigError("adaptation: these strategies leave no parameter to train")
        self.optimizer = build_optimizer(groups, self.experiment.optimizer)
        self.scheduler = build_scheduler(
            self.optimizer, self.experiment.schedule, self.steps_per_epoch, self.total_steps
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.config.precision == "fp16")
        self.step = 0
        self.epoch = 0
        self.best: dict[str, Any] = {"value": None, "epoch": None}
        self.history: list[dict[str, Any]] = []
        # The latest evaluation's per-class metrics and confusion matrices, by split, for summary.json: kept out of
        # metrics.jsonl and the history (they would grow with every epoch), checkpointed so a resume keeps them.
        self.final_details: dict[str, dict[str, Any]] = {}
        # Where a mid-epoch checkpoint stood (batches done, the epoch's loss sums so far), until training reaches it.
        self.position: dict[str, Any] | None = None
        self._last_checkpoint = time.monotonic()
        # Where checkpoints/last.pt stands ("end of epoch 2", "epoch 3, step 40 of 64"), for a divergence message.
        self._saved_at: str | None = None
        self.loggers = Loggers()  # opened by fit, on rank 0 of a run with a directory
        self._samples_trained = 0

    # -- setup --------------------------------------------------------------------------------------------

    def _shard_data(self) -> None:
        """Under torchrun, each rank serves its share of every batch (see distributed.py)."""
        world = self.world
        if not world.distributed:
            return
        # The configured sizes, not the loaders': a split smaller than its batch is one short batch, which the ranks
        # may share unevenly (only an empty share would leave a rank a step behind the others).
        target_batch = self.config.target_batch_size or self.config.batch_size
        for field, size, loader in (("batch_size", self.config.batch_size, self.data.train),
                                    ("target_batch_size", target_batch, self.data.unlabelled)):
            if loader is None:
                continue
            if size % world.world_size:
                raise ConfigError(
                    f"trainer.{field}: {size} samples per step cannot be split evenly between "
                    f"{world.world_size} processes; batch sizes are global under torchrun, so use a multiple of "
                    f"{world.world_size}")
            if loader.size < world.world_size:
                split = "training" if loader is self.data.train else "unlabelled target"
                raise ConfigError(
                    f"the {split} split has {loader.size} sample{'s' * (loader.size != 1)}, fewer than the "
                    f"{world.world_size} processes: every process needs a share of each batch; use fewer processes")
        for loader in (self.data.train, self.data.unlabelled, *self.data.evaluation.values()):
            if loader is not None:
                loader.shard(world.rank, world.world_size)

    def _param_groups(self) -> list[ParamGroup]:
        """One group per model layer group (input to output), then one per strategy module."""
        groups: list[ParamGroup] = []
        seen: set[int] = set()
        for name, module in self.model.layer_groups():
            params = [p for p in module.parameters() if id(p) not in seen]
            seen.update(id(p) for p in params)
            groups.append(ParamGroup(name, params))
        rest = [p for p in self.model.parameters() if id(p) not in seen]
        if rest:  # encoder parameters outside its declared groups still train
            groups.append(ParamGroup("other", rest))
        for strategy, module in zip(self.strategies, self.strategy_modules):
            params = list(module.parameters())
            if params:
                groups.append(ParamGroup(f"strategy.{strategy.name}", params))
        return [group for group in groups if group.params]

    def autocast(self) -> contextlib.AbstractContextManager:
        precision = self.config.precision
        if precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    # -- training -----------------------------------------------------------------------------------------

    def fit(self) -> dict[str, Any]:
        """Train the remaining epochs, evaluating and checkpointing after each; returns the summary."""
        started = time.perf_counter()
        self._last_checkpoint = time.monotonic()
        if self.run_dir is not None and self.world.is_main:
            self.loggers = open_loggers(self.experiment.output.loggers, self.run_dir, self.step)
        try:
            self._fit_epochs()
        finally:
            self.loggers.close()
            self.loggers = Loggers()
        elapsed = time.perf_counter() - started
        samples = self._samples_trained
        summary = self.summary(samples / elapsed if elapsed > 0 and samples else None)
        if self.run_dir is not None and self.world.is_main:
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary

    def _fit_epochs(self) -> None:
        self._samples_trained = samples = 0
        for epoch in range(self.epoch, self.config.epochs):
            if self.patience_exhausted():
                break
            epoch_started = time.perf_counter()
            train_metrics, epoch_samples = self.train_epoch(epoch)
            self._check_finite(epoch, train_metrics["loss"], self.steps_per_epoch)
            self._average_batchnorm_statistics()
            samples += epoch_samples * self.world.world_size
            with self.evaluated_weights():
                context = self._validation_context()
                evaluation = self.evaluate(before_target=functools.partial(self._run_source_passes, context),
                                           detailed=True)
                self.final_details = {name: {key: metrics.pop(key) for key in DETAILS if key in metrics}
                                      for name, metrics in evaluation.items()}
                context.metrics = evaluation
                self.epoch = epoch + 1
                improved, scores = self._update_best(context)
                self.finish_evaluation()
            record = {
                "epoch": self.epoch,
                "step": self.step,
                "lr": self.optimizer.param_groups[0]["lr"],
                "train": train_metrics,
                **evaluation,
                **({"validators": scores} if scores else {}),
                "seconds": round(time.perf_counter() - epoch_started, 3),
            }
            self.history.append(record)
            self._write_epoch(record, improved)
            self._print_epoch(record)
            self._samples_trained = samples

    def patience_exhausted(self) -> bool:
        """Early stopping: the validator has not improved for ``patience`` epochs. Read from the best epoch, so a
        resumed run stops where the uninterrupted one would have."""
        stopping = self.config.early_stopping
        return (stopping is not None and self.best["epoch"] is not None
                and self.epoch - self.best["epoch"] >= stopping.patience)

    def _check_finite(self, epoch: int, loss: float, batches_done: int) -> None:
        """Stop when the epoch's mean loss so far is not finite, before a checkpoint would overwrite the last good
        one: at the end of each epoch and before each step checkpoint (not every step, which would synchronise
        the device every step)."""
        if math.isfinite(loss):
            return
        first, last = epoch * self.steps_per_epoch + 1, epoch * self.steps_per_epoch + batches_done
        kept = (f"the last good checkpoint is {self.run_dir / 'checkpoints' / 'last.pt'} ({self._saved_at})"
                if self.run_dir is not None and self._saved_at is not None else "no checkpoint was written")
        raise TrainingDiverged(
            f"training diverged: the mean loss of epoch {epoch + 1} (steps {first}-{last}) is {loss}; {kept}. "
            f"Resuming would diverge again: lower optimizer.lr or set optimizer.grad_clip, then train anew.")

    def train_epoch(self, epoch: int) -> tuple[dict[str, float], int]:
        self.model.train()
        self.strategy_modules.train()
        for strategy in self.strategies:
            strategy.on_epoch_start(epoch)
        start, totals = 0, {}
        if self.position is not None:  # resumed from a checkpoint written inside this epoch
            start = self.position["batch"]
            totals = {name: total.to(self.device) for name, total in self.position["totals"].items()}
            self.position = None
        targets = self._target_stream(epoch, start) if self.needs_target else None
        samples = 0
        bar = tqdm(
            total=self.steps_per_epoch, initial=start, desc=f"epoch {epoch + 1}/{self.config.epochs}", unit="step",
            disable=self.quiet or not sys.stderr.isatty(), leave=False, dynamic_ncols=True,
        )
        window_started, window_samples = time.perf_counter(), 0
        # Step records: the loss sums at the previous record, and the steps, samples and time since it.
        log_steps = self.run_dir is not None and bool(self.experiment.output.loggers)  # alike on every rank
        logged = dict(totals)  # a run resumed inside the epoch starts from the sums it restored
        log_started, log_samples, log_steps_done = time.perf_counter(), 0, 0
        with bar:
            for index, batch in enumerate(self.data.train.epoch(epoch, start), start):
                batch = move_batch(batch, self.device)
                target = move_batch(next(targets), self.device) if targets is not None else None
                terms = self.train_step(batch, target)
                for name, value in terms.items():
                    totals[name] = totals.get(name, 0.0) + value
                size = batch["label"].shape[0]
                samples += size
                window_samples += size
                bar.update(1)
                if log_steps:
                    log_samples += size
                    log_steps_done += 1
                    if (index + 1) % self.config.log_every == 0 or index + 1 == self.steps_per_epoch:
                        now = time.perf_counter()
                        self._log_step(epoch, totals, logged, log_steps_done, log_samples / (now - log_started))
                        logged = dict(totals)  # the sums are new tensors every step: no copy needed
                        log_started, log_samples, log_steps_done = time.perf_counter(), 0, 0
                if (index + 1) % self.config.log_every == 0 and not bar.disable:
                    now = time.perf_counter()
                    bar.set_postfix(loss=f"{float(totals['loss']) / (index + 1):.4f}",
                                    samples_s=f"{window_samples / (now - window_started):.0f}")
                    window_started, window_samples = now, 0
                if self._step_checkpoint_due(index + 1):
                    self._write_step_checkpoint(index + 1, totals)
        for strategy in self.strategies:
            strategy.on_epoch_end(epoch)
        steps = max(1, self.steps_per_epoch) * self.world.world_size
        return {name: float(self.world.sum_(total)) / steps for name, total in totals.items()}, samples

    def _log_step(self, epoch: int, totals: dict[str, torch.Tensor], logged: dict[str, torch.Tensor], steps: int,
                  samples_per_second: float) -> None:
        """A step record: each term's mean over the ``steps`` steps since the previous record (``logged``: the
        sums then), read from the device in one transfer; under torchrun the mean over the ranks, a collective
        every rank makes, and the throughput of all of them together."""
        names = list(totals)
        means = torch.stack([((totals[name] - logged[name]) if name in logged else totals[name]).float()
                             for name in names]) / steps
        if self.world.distributed:
            means = self.world.sum_(means) / self.world.world_size
        if not self.world.is_main:
            return
        record: dict[str, Any] = {"epoch": epoch + 1, "step": self.step, "steps": steps}
        record.update(zip(names, means.tolist()))
        groups = self.optimizer.param_groups
        if len(groups) == 1:
            record["lr"] = groups[0]["lr"]
        else:  # each group by its first layer group's name (build_optimizer merges those of the same rate)
            for index, group in enumerate(groups):
                record[f"lr/{str(group.get('names') or index).split(',')[0]}"] = group["lr"]
        record["samples_per_second"] = round(samples_per_second * self.world.world_size, 1)
        self.loggers.log_step(record)

    def _target_stream(self, epoch: int, start: int) -> Iterator[Batch]:
        # Step s of epoch e uses target batch e*steps_per_epoch + s, so a resumed run draws the same ones.
        assert self.data.unlabelled is not None
        return self.data.unlabelled.stream(epoch * self.steps_per_epoch + start)

    def _step_checkpoint_due(self, batches_done: int) -> bool:
        """Whether to write last.pt after this step: never after an epoch's last (its own checkpoint follows the
        evaluation); every ``checkpoint_every`` steps; after ``checkpoint_every_minutes``, looked at every
        ``log_every`` steps (reading the clock is cheap, but the check stays off the per-step path)."""
        if self.run_dir is None or batches_done == self.steps_per_epoch:
            return False
        every, minutes = self.config.checkpoint_every, self.config.checkpoint_every_minutes
        if every is not None and self.step % every == 0:
            return True
        if minutes is None or batches_done % self.config.log_every:
            return False
        return self.world.from_main(time.monotonic() - self._last_checkpoint >= minutes * 60)  # ranks agree

    def _write_step_checkpoint(self, batches_done: int, totals: dict[str, torch.Tensor]) -> None:
        assert self.run_dir is not None
        self._average_batchnorm_statistics()
        # The ranks' mean loss sums: each rank resumes from it, and the epoch's sum over ranks comes out the same.
        shared = {name: self.world.sum_(total.detach().clone()) / self.world.world_size
                  for name, total in totals.items()}
        position = {"batch": batches_done, "totals": {name: total.cpu() for name, total in shared.items()}}
        self._check_finite(self.epoch, float(position["totals"]["loss"]) / batches_done, batches_done)
        state = self.state_dict(position)
        if self.world.is_main:
            save_checkpoint(state, self.run_dir / "checkpoints" / "last.pt")
        self._last_checkpoint = time.monotonic()
        self._saved_at = f"epoch {self.epoch + 1}, step {batches_done} of {self.steps_per_epoch}"

    def _average_batchnorm_statistics(self) -> None:
        """Under torchrun: every rank's BatchNorm running statistics (and the target's) become their mean over the
        ranks, before they are evaluated or saved (see distributed.py)."""
        if not self.world.distributed:
            return
        layers = batchnorm_layers(self.model) + batchnorm_layers(self.strategy_modules)
        statistics = [tensor for layer in layers for tensor in (layer.running_mean, layer.running_var)]
        if self.target_statistics is not None:
            statistics += [tensor for buffers in self.target_statistics.buffers
                           for name, tensor in buffers.items() if name != "num_batches_tracked"]
        self.world.average_(statistics)
        if self.weight_average is not None:  # the average's own statistics (its weights are alike on every rank)
            weights = {f"model.{name}" for name, _ in self.model.named_parameters()}
            weights |= {f"strategy.{key}.{name}" for key, module in self._saved_strategy_modules().items()
                        for name, _ in module.named_parameters()}
            self.world.average_([tensor for name, tensor in self.weight_average.average.items()
                                 if tensor.is_floating_point() and name not in weights])

    def forward_pair(self, source: Batch, target: Batch | None) -> tuple[ModelOutput, ModelOutput | None]:
        """Source and target outputs of one step. per-domain BatchNorm: two passes, the target's with its own
        running statistics (see domain_norm.py). joint: one pass over both when they carry the same modalities (as
        DANN implementations do: BatchNorm normalises the mixture), separately otherwise."""
        if target is None:
            return self.model(source), None
        if self.config.batchnorm == "per-domain":
            source_output = self.model(source)
            with self._target_statistics():
                return source_output, self.model(target)
        modalities = self.model.modalities
        if not all(m in source and m in target for m in modalities):
            return self.model(source), self.model(target)
        output = self.model(joint_batch(source, target, modalities))
        size = source["label"].shape[0]
        return output.rows(slice(None, size)), output.rows(slice(size, None))

    def _loss_terms(self, source: Batch, target: Batch | None) -> StepLosses:
        """The step's named loss terms ("task" first) and the values strategies report about it."""
        source_output, target_output = self.forward_pair(source, target)
        task = nn.functional.cross_entropy(source_output.logits.float(), source["label"])
        if self.task_weight != 1.0:
            task = task * self.task_weight
        step = StepData(
            model=self.model, source=source, source_output=source_output, step=self.step,
            progress=self.step / max(1, self.total_steps), target=target, target_output=target_output,
        )
        terms, metrics = {"task": task}, {}
        for strategy in self.strategies:
            step.metrics = {}  # each strategy's own, logged under its name as its loss terms are
            for name, value in strategy.loss_terms(step).items():
                terms[f"{strategy.name}.{name}"] = value.float()
            # A key written with the name already ("mmd.x", as the guide once asked) keeps one prefix
            metrics.update({f"{strategy.name}.{name.removeprefix(f'{strategy.name}.')}": value
                            for name, value in step.metrics.items()})
        return terms, metrics

    def _step_module(self) -> nn.Module:
        """What computes a step's losses: the plain module in one process; under torchrun, the module in
        DistributedDataParallel, built again whenever a strategy has frozen or unfrozen parameters since (DDP
        averages the gradients of the parameters that were trainable when it was built)."""
        if not self.world.distributed:
            return self._step_losses
        trainable = tuple(p.requires_grad for p in self._step_losses.parameters())
        if self._parallel is None or trainable != self._parallel_trainable:
            self._average_batchnorm_statistics()  # DDP starts by copying rank 0's buffers to every rank
            self._parallel = data_parallel(self._step_losses, self.device)
            self._parallel_trainable = trainable
        return self._parallel

    def train_step(self, source: Batch, target: Batch | None = None) -> dict[str, torch.Tensor]:
        """One optimizer step; returns the detached loss terms (on the device)."""
        with self.autocast():
            terms, metrics = self._step_module()(source, target)
            loss = sum(list(terms.values())[1:], terms["task"])
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.experiment.optimizer.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(
                [p for group in self.optimizer.param_groups for p in group["params"]],
                self.experiment.optimizer.grad_clip,
            )
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.weight_average is not None:
            self.weight_average.update()
        self.step += 1
        for strategy in self.strategies:
            strategy.on_step_end(self.step)
        return {"loss": loss.detach(), **{f"loss/{k}": v.detach() for k, v in terms.items()},
                **{f"metric/{k}": v.detach() for k, v in metrics.items()}}

    # -- evaluation ---------------------------------------------------------------------------------------

    def aligned_space(self) -> AlignedSpace | None:
        """The space in which a strategy aligns two modalities (contrastive-alignment), if one does."""
        return next((space for s in self.strategies if (space := s.aligned_space()) is not None), None)

    @torch.inference_mode()
    def evaluate(self, drop_modalities: tuple[str, ...] = (),
                 before_target: Callable[[], None] | None = None, detailed: bool = False,
                 via: tuple[str, ...] = (), samples: int | None = None,
                 observe: Callable[[str, Batch, ModelOutput], None] | None = None) -> Metrics:
        """Loss, accuracy and macro-F1 on every evaluation split, with ``drop_modalities`` absent (``detailed``:
        also per class, and the confusion matrix). Where a strategy aligns two modalities, also retrieval and
        zero-shot metrics, and for each modality of ``via`` cross-modal transfer (see ``cross_modal.py``).
        ``samples``: only the first so many samples of each split (in the split's fixed evaluation order);
        ``observe`` is called with each split's name, batch and the model's output (what the report draws).

        Source splits are evaluated as the model trained; then the strategies prepare the model for the target
        domain (``before_evaluate``: AdaBN's target statistics) and the other splits are evaluated, so that each
        domain is measured as it would be deployed and source-val never sees target statistics. The model stays
        prepared for the validators until ``finish_evaluation``; ``before_target`` runs just before it is prepared."""
        self.model.eval()
        space = self.aligned_space()
        # Trained on source/val, before the model is prepared for the target; source/val's own transfer is
        # cross-fitted there and then (see cross_modal.py).
        probes, held_out = self._transfer_probes(space, via) if via else ({}, {})
        source_first = sorted(self.data.evaluation, key=lambda name: not name.startswith(SOURCE_PREFIX))
        prepared = False
        results: Metrics = {}
        for name in source_first:
            if not prepared and not name.startswith(SOURCE_PREFIX):
                self._prepare_for_target(before_target)
                prepared = True
            loader = self.data.evaluation[name]
            meter = ClassificationMeter(self.model.num_classes, self.device)
            alignment = self._split_alignment(space, drop_modalities, {} if name == SOURCE_VAL else probes)
            for batch in _first_samples(loader.epoch(), samples):
                batch = move_batch(batch, self.device)
                for modality in drop_modalities:
                    batch.pop(modality, None)
                with self.autocast():
                    output = self.model(batch)
                meter.update(output.logits, batch["label"])
                if observe is not None:
                    observe(name, batch, output)
                if alignment is not None:
                    alignment.update(batch, output)
            for total in (meter.confusion, meter.loss_sum):  # each rank saw its share of the split
                self.world.sum_(total)
            results[name] = meter.compute(self.data.bundle.classes if detailed else None)
            if alignment is not None:
                results[name].update(alignment.compute(self.world))
            if name == SOURCE_VAL and held_out:
                results[name]["transfer"] = held_out
        if not prepared:
            self._prepare_for_target(before_target)
        return {name: results[name] for name in self.data.evaluation}

    def _split_alignment(self, space: AlignedSpace | None, dropped: tuple[str, ...],
                         probes: dict[str, tuple[nn.Linear, nn.Linear]]) -> SplitAlignment | None:
        """What gathers one split's aligned embeddings; the class prototypes are embedded anew for each split, as
        the split's samples are (a target split's with the target's BatchNorm statistics)."""
        if space is None:
            return None
        prototypes = None
        kinds = {name: spec.kind for name, spec in self.data.modalities.items()}
        chosen = zero_shot_modalities(space, kinds)
        if chosen is not None and chosen[1] not in dropped and chosen[0] in self.data.tokenizers:
            text, query = chosen
            with self.autocast():
                embedded = class_prototypes(self.model, space, text, self.data.tokenizers[text],
                                            self.data.bundle.classes, self.device)
            prototypes = (text, query, embedded)
        kept = {via: probe for via, probe in probes.items() if via not in dropped}
        return SplitAlignment(space, self.model.num_classes, self.device, prototypes, kept)

    def _transfer_probes(self, space: AlignedSpace | None, via: tuple[str, ...]
                         ) -> tuple[dict[str, tuple[nn.Linear, nn.Linear]], dict[str, Any]]:
        """For each ``via`` modality: a probe trained on the other modality's aligned embeddings of source/val, and
        one trained on its own (the reference); and source/val's own transfer metrics, cross-fitted."""
        for modality in via:
            check_via(space, modality, self.model.modalities)
        assert space is not None
        if SOURCE_VAL not in self.data.evaluation:
            raise ConfigError(f"--via: the transfer probe trains on the labelled {SOURCE_VAL} split, held out from "
                              f"training, and this dataset has none")
        embedded = {m: embeddings_of(self._batches(self.data.evaluation[SOURCE_VAL]), self.model, space, m,
                                     space.probe_samples, self.autocast)
                    for m in {m for v in via for m in (v, space.other(v))}}
        classes = self.model.num_classes
        fitted = {m: fit_probe(x, y, classes) for m, (x, y, _) in embedded.items()}
        held_out = {v: cross_fitted_transfer(embedded[space.other(v)], embedded[v], classes, self.device)
                    for v in via}
        for v, metrics in held_out.items():
            metrics["trained_on"] = space.other(v)
        return {v: (fitted[space.other(v)], fitted[v]) for v in via}, held_out

    def _prepare_for_target(self, before: Callable[[], None] | None) -> None:
        if before is not None:
            before()
        self._evaluation_context.enter_context(self._target_statistics())
        for strategy in self.strategies:
            strategy.before_evaluate(self.model, self._unlabelled_batches())

    def finish_evaluation(self) -> None:
        """Undo what evaluation prepared for the target domain, before training goes on."""
        for strategy in self.strategies:
            strategy.after_evaluate(self.model)
        self._evaluation_context.close()

    def _target_statistics(self) -> contextlib.AbstractContextManager:
        """The target's own BatchNorm statistics in the model (per-domain BatchNorm), or nothing to change."""
        return self.target_statistics.active() if self.target_statistics is not None else contextlib.nullcontext()

    def _validation_context(self) -> ValidationContext:
        """One context for the run's validator and the panel, so that they share each forward pass."""
        return ValidationContext(
            self.model, {}, self._unlabelled_batches, self.autocast,
            source_val_batches=lambda: self._batches(self.data.evaluation.get(SOURCE_VAL)),
            source_train_batches=lambda: self._batches(self.data.train),
        )

    def _run_source_passes(self, context: ValidationContext) -> None:
        """The source passes that validators will read, made while the model still holds the source's state."""
        samples = max((v.source_samples for v in (self.validator, *self.panel.values())), default=0)
        if samples > 0:
            for split in (SOURCE_VAL, SOURCE_TRAIN):
                with contextlib.suppress(DataError):  # a split the data lacks: the validator says so itself
                    context.outputs(split, samples)

    def _update_best(self, context: ValidationContext) -> tuple[bool, dict[str, float]]:
        """Score the run's validator, which keeps best.pt, and the panel of label-free validators on the same
        forward passes; returns whether this epoch is the best so far, and the panel's scores."""
        self.model.eval()
        with torch.inference_mode():
            value = float(self.validator.score(context))
            tiebreak = float(self.validator.tiebreak(context))
            # The run's own validator is logged beside the panel when the panel lacks it (a plugin's validator)
            label_free = self.config.score_validators and not self.validator.oracle
            own = {self.validator.name: value} if label_free and math.isfinite(value) else {}
            scores = own | score_panel(self.panel, context)
        # Every rank scored the same samples with the same weights; rank 0's scores decide for all of them.
        value, tiebreak, scores = self.world.from_main((value, tiebreak, scores))
        best = (self.best["value"], self.best.get("tiebreak", 0.0))
        if self.best["value"] is None or (value, tiebreak) > best:
            self.best = {"value": value, "epoch": self.epoch, "tiebreak": tiebreak}
            return True, scores
        return False, scores

    def _unlabelled_batches(self) -> Iterator[Batch]:
        return self._batches(self.data.unlabelled)

    def _batches(self, loader: BatchLoader | None) -> Iterator[Batch]:
        """The loader's whole batches (on every rank) in its epoch-0 order, on the device; none without a loader."""
        if loader is None:
            return iter(())
        return (move_batch(batch, self.device) for batch in loader.epoch(0, whole=True))

    # -- run directory and checkpoints ------------------------------------------------------------------

    def _write_epoch(self, record: dict[str, Any], improved: bool) -> None:
        if self.run_dir is None:
            return
        state = self.state_dict()  # on every rank: it gathers their random states
        self._last_checkpoint = time.monotonic()
        self._saved_at = f"end of epoch {self.epoch}"
        if not self.world.is_main:
            return
        with (self.run_dir / "metrics.jsonl").open("a") as file:
            file.write(json.dumps(record) + "\n")
        self.loggers.log_epoch(record)
        checkpoints = self.run_dir / "checkpoints"
        if improved:
            with self.evaluated_weights():
                save_checkpoint(self.weights_state(), checkpoints / "best.pt")
        save_checkpoint(state, checkpoints / "last.pt")

    def _print_epoch(self, record: dict[str, Any]) -> None:
        if self.quiet:
            return
        parts = [f"epoch {record['epoch']}/{self.config.epochs}", f"loss {record['train']['loss']:.4f}"]
        parts += [f"{name} acc {record[name]['accuracy']:.4f}" for name in self.data.evaluation]
        print("  ".join(parts), flush=True)

    def weights_state(self) -> dict[str, Any]:
        """What prediction needs: weights, tokenizers, classes."""
        return {
            "format": CHECKPOINT_FORMAT,
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            **({"target_batchnorm": self.target_statistics.state_dict()} if self.target_statistics else {}),
            "tokenizers": {m: t.state() for m, t in self.data.tokenizers.items()},
            **({"strategy_weights": kept} if (kept := self._strategy_weights()) else {}),
            "classes": list(self.data.bundle.classes),
            "selected_by": self.validator.describe(),
            "selected_value": self.best["value"],
        }

    def state_dict(self, position: dict[str, Any] | None = None) -> dict[str, Any]:
        """Everything a resumed run needs to continue exactly; ``position`` where it stands inside an epoch (a
        step checkpoint), None at the end of one."""
        rng: dict[str, Any] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        if self.world.distributed:  # a collective: every rank calls state_dict at the same step
            rng["ranks"] = self.world.gather(rng)
        return {
            **self.weights_state(),
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "strategies": [
                {"name": s.name, "state": s.state_dict(), "module": m.state_dict()}
                for s, m in zip(self.strategies, self.strategy_modules)
            ],
            "best": dict(self.best),
            "history": self.history,
            "final_details": self.final_details,
            "rng": rng,
            "position": position,
            "world_size": self.world.world_size,
            **({"weight_average": self.weight_average.state_dict()} if self.weight_average is not None else {}),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state of the structure :func:`transmodal.checkpoint.read_checkpoint` checked."""
        saved = [entry["name"] for entry in state["strategies"]]
        if saved != [s.name for s in self.strategies]:
            raise CheckpointError(f"checkpoint was made with strategies {saved}, not {[s.name for s in self.strategies]}")
        self.load_weights(state)
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
            for strategy, module, entry in zip(self.strategies, self.strategy_modules, state["strategies"]):
                module.load_state_dict(entry["module"])
                strategy.load_state_dict(entry["state"])
            if self.weight_average is not None:
                if "weight_average" not in state:
                    raise CheckpointError("this run sets trainer.ema_decay, but the checkpoint holds no averaged "
                                          "weights")
                self.weight_average.load_state_dict(state["weight_average"])
            rng = state["rng"]["ranks"][self.world.rank] if self.world.distributed else state["rng"]
            torch.set_rng_state(rng["torch"])
            if "cuda" in rng and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])
        except (KeyError, TypeError, ValueError, RuntimeError) as error:
            raise CheckpointError(
                f"its training state does not fit this run ({type(error).__name__}: {error})"
            ) from None
        self.epoch, self.step = state["epoch"], state["step"]
        self.best = dict(state["best"])
        self.history = list(state["history"])
        self.final_details = dict(state.get("final_details", {}))
        self.position = state.get("position")  # absent from checkpoints written before step checkpoints
        self._saved_at = (f"epoch {self.epoch + 1}, step {self.position['batch']} of {self.steps_per_epoch}"
                          if self.position is not None else f"end of epoch {self.epoch}")

    def _strategy_weights(self) -> dict[str, dict[str, torch.Tensor]]:
        """The modules of the strategies that are part of the trained model (``saved_with_weights``), by the
        strategy's position in the list and its name, e.g. "0.contrastive-alignment"."""
        return {key: module.state_dict() for key, module in self._saved_strategy_modules().items()}

    def _saved_strategy_modules(self) -> dict[str, nn.Module]:
        return {f"{index}.{strategy.name}": module
                for index, (strategy, module) in enumerate(zip(self.strategies, self.strategy_modules))
                if strategy.saved_with_weights}

    def _trained_tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor the trained model is made of, as live references: the model's weights and buffers, the
        weights of strategies saved with them, and the target's BatchNorm statistics (per-domain BatchNorm)."""
        tensors = {f"model.{name}": tensor for name, tensor in self.model.state_dict().items()}
        for key, weights in self._strategy_weights().items():
            tensors.update({f"strategy.{key}.{name}": tensor for name, tensor in weights.items()})
        if self.target_statistics is not None:
            for index, buffers in enumerate(self.target_statistics.buffers):
                tensors.update({f"target_batchnorm.{index}.{name}": tensor for name, tensor in buffers.items()})
        return tensors

    def evaluated_weights(self) -> contextlib.AbstractContextManager:
        """Inside: the weights that are evaluated, selected and saved as best.pt, the averaged ones with
        trainer.ema_decay; the model trains on its own weights outside."""
        return self.weight_average.applied() if self.weight_average is not None else contextlib.nullcontext()

    def load_weights(self, state: dict[str, Any]) -> None:
        """The model's weights, the modules of strategies saved with them and, with per-domain BatchNorm, the
        target's statistics."""
        difference = class_difference(list(state["classes"]), list(self.data.bundle.classes))
        if difference is not None:  # every output would be read as another class
            raise CheckpointError(f"the data changed since training: {difference}. Restore the data the run was "
                                  f"trained on, or train again")
        load_model_weights(self.model, state["model"])
        saved = state.get("strategy_weights", {})
        for index, (strategy, module) in enumerate(zip(self.strategies, self.strategy_modules)):
            if not strategy.saved_with_weights:
                continue
            key = f"{index}.{strategy.name}"
            if key not in saved:
                raise CheckpointError(f"checkpoint has no weights of strategy {key}, which this run's model uses "
                                      f"(it has {', '.join(saved) or 'none'})")
            load_model_weights(module, saved[key])
        if self.target_statistics is not None:
            if "target_batchnorm" not in state:
                raise CheckpointError("checkpoint has no target BatchNorm statistics, but this run uses "
                                      "trainer.batchnorm: per-domain")
            self.target_statistics.load_state_dict(state["target_batchnorm"])

    def summary(self, samples_per_second: float | None = None) -> dict[str, Any]:
        final = self.history[-1] if self.history else {}
        best_epoch = self.best["epoch"]
        best = next((r for r in self.history if r["epoch"] == best_epoch), {})
        splits = list(self.data.evaluation)
        summary: dict[str, Any] = {
            "name": self.experiment.name,
            "epochs": self.epoch,
            "steps": self.step,
            "selected_by": self.validator.describe(),
            "selected_by_oracle": self.validator.oracle,
            "best_epoch": best_epoch,
            "best": {s: best[s] for s in splits if s in best},
            "final": {s: {**final[s], **self.final_details.get(s, {})} for s in splits if s in final},
        }
        if "target/test" in splits and self.history:
            oracle = max(self.history, key=lambda r: r["target/test"]["accuracy"])
            summary["oracle"] = {
                "note": "selected on target test labels: an upper bound, not a result",
                "epoch": oracle["epoch"],
                "target/test": oracle["target/test"],
            }
        stopping = self.config.early_stopping
        if stopping is not None and self.patience_exhausted() and self.epoch < self.config.epochs:
            summary["stopped_early"] = {"epoch": self.epoch, "patience": stopping.patience}
        choices = panel_choices(self.history)
        if choices is not None:
            summary["validators"] = choices
        if samples_per_second is not None:
            summary["train_samples_per_second"] = round(samples_per_second, 1)
        return summary


def load_model_weights(model: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:
        raise CheckpointError(f"checkpoint does not fit this model: {_one_line(str(error))}") from None


def _one_line(report: str, shown: int = 3) -> str:
    """torch's multi-line state-dict report (a header, then a line per mismatch) as one line with the first few."""
    header, *lines = [line.strip().rstrip(".") for line in report.splitlines() if line.strip()]
    more = f"; and {len(lines) - shown} more" if len(lines) > shown else ""
    return " ".join([header, "; ".join(lines[:shown])]).strip() + more


def _first_samples(batches: Iterable[Batch], samples: int | None) -> Iterator[Batch]:
    """The batches holding the first ``samples`` samples (all with None), the last one cut to size."""
    left = samples
    for batch in batches:
        if left is None:
            yield batch
            continue
        if left <= 0:
            return
        size = batch["label"].shape[0]
        yield batch if size <= left else {key: value[:left] for key, value in batch.items()}
        left -= size

