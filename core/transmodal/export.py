"""Exporting a trained model as a self-contained bundle that :func:`transmodal.load` reads back.

A bundle is a folder: ``config.yaml`` and ``model.json`` (as in the run directory, ``model.json`` also saying how
the bundle was exported), ``tokenizers/<modality>.json``, and the weights as one of

- ``weights.safetensors`` (the ``safetensors`` package: ``pip install "transmodal[export]"``): the model's
  tensors under ``model.``, the target domain's BatchNorm statistics under ``target_batchnorm.``; rebuilt
  through the same components, so the plugins that trained it must be installed;
- ``model.torchscript``: the model traced with ``torch.jit.trace`` on a sample batch, for one domain's BatchNorm
  statistics; it runs without the components' plugins (only the tokenizer's).
- ``model.onnx`` (``pip install "transmodal[onnx]"``: onnx, onnxscript, onnxruntime): the model exported through
  ``torch.export`` (``torch.onnx.export(dynamo=True)``) for one domain's BatchNorm statistics, the batch size and
  each text's length left dynamic; checked with onnxruntime against PyTorch on a batch of another size and text
  length before it is kept. Any ONNX runtime can serve it: its inputs are each modality (``batch_<name>``: uint8
  images, int64 token ids padded with 0, float vectors) and its presence mask (``batch_present_<name>``, bool),
  and its output is ``logits``; ``model.json`` maps the inputs to the modalities. ``transmodal.load`` runs it with
  onnxruntime, on the CPU.

The folder is written under a temporary name beside the destination and renamed when complete.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from transmodal.config import Experiment, validate_components
from transmodal.data import Batch, ModalitySpec
from transmodal.devices import resolve_device
from transmodal.errors import CheckpointError, ConfigError
from transmodal.experiment import tokenizer_for
from transmodal.plugins import Plugins, get_plugins
from transmodal.run_dir import load_saved_experiment, open_up
from transmodal.trained_model import (
    MODEL_INFO, TOKENIZERS, Domain, TrainedModel, build_trained_model, model_info, read_model_info,
    write_model_info,
)

FORMATS = ("safetensors", "torchscript", "onnx")
WEIGHTS = {"safetensors": "weights.safetensors", "torchscript": "model.torchscript", "onnx": "model.onnx"}
TRACED = ("torchscript", "onnx")  # formats that hold one domain's BatchNorm statistics
_MODEL_PREFIX, _TARGET_PREFIX = "model.", "target_batchnorm."


def _safetensors() -> Any:
    try:
        import safetensors.torch
    except ImportError:
        raise ConfigError('exporting or loading safetensors needs the safetensors package: '
                          'pip install "transmodal[export]" (or pip install safetensors)') from None
    return safetensors.torch


def _onnxruntime() -> Any:
    """onnxruntime, and for exporting onnx and onnxscript too (torch.onnx's exporter needs both)."""
    try:
        import onnx  # noqa: F401
        import onnxruntime
        import onnxscript  # noqa: F401
    except ImportError as error:
        raise ConfigError(f'ONNX export and loading need onnx, onnxscript and onnxruntime ({error.name} is missing): '
                          f'pip install "transmodal[onnx]"') from None
    return onnxruntime


def is_bundle(path: Path) -> bool:
    return any((path / name).is_file() for name in WEIGHTS.values())


def export(trained: TrainedModel, directory: Path, format: str = "safetensors", domain: Domain = "source") -> Path:
    """Write ``trained`` as a bundle into the new folder ``directory``; returns it."""
    if format not in FORMATS:
        raise ConfigError(f"export format '{format}': choose {' or '.join(FORMATS)}")
    if format == "safetensors" and domain != "source":
        raise ConfigError("--domain chooses the BatchNorm statistics traced into a TorchScript or ONNX model; a "
                          "safetensors bundle keeps both domains' (choose the domain when predicting)")
    if not isinstance(trained.model, nn.Module) or isinstance(trained.model, torch.jit.ScriptModule):
        raise ConfigError("this model was loaded from a TorchScript or ONNX bundle; export from its run directory")
    trained.check_domain(domain)
    if format == "onnx":
        _onnxruntime()
    directory = directory.expanduser()
    if directory.exists():
        raise ConfigError(f"--output {directory} already exists; choose a new folder")
    if not directory.parent.is_dir():
        problem = "is not a folder" if directory.parent.exists() else "does not exist"
        raise ConfigError(f"--output {directory}: {directory.parent} {problem}")
    try:
        temporary = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    except OSError as error:
        raise ConfigError(f"--output {directory}: cannot write in {directory.parent} ({error.strerror}); choose "
                          f"a folder you can write to") from None
    try:
        _write_bundle(trained, temporary, format, domain)
        open_up(temporary)
        temporary.rename(directory)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return directory


def _write_bundle(trained: TrainedModel, folder: Path, format: str, domain: Domain) -> None:
    (folder / "config.yaml").write_text(yaml.safe_dump(trained.experiment.model_dump(mode="json"), sort_keys=False))
    info = model_info(trained.modalities, trained.classes)
    info["export"] = {"format": format, "domain": domain if format in TRACED else None, **trained.header}
    if format == "onnx":
        info["export"]["onnx_inputs"] = export_onnx(trained, domain, folder / WEIGHTS[format])
    write_model_info(folder, info)
    (folder / TOKENIZERS).mkdir()
    for name, spec in trained.modalities.items():
        if spec.tokenizer is not None:
            (folder / TOKENIZERS / f"{name}.json").write_text(spec.tokenizer.state())
    if format == "safetensors":
        tensors = {_MODEL_PREFIX + key: value.detach().cpu().clone().contiguous()
                   for key, value in trained.model.state_dict().items()}
        if trained.target_statistics is not None:
            for index, buffers in enumerate(trained.target_statistics.state_dict()):
                tensors.update({f"{_TARGET_PREFIX}{index}.{name}": tensor.cpu().contiguous()
                                for name, tensor in buffers.items()})
        _safetensors().save_file(tensors, str(folder / WEIGHTS[format]))
    elif format == "torchscript":
        traced = trace(trained, domain)
        with _quiet_torchscript():
            torch.jit.save(traced, str(folder / WEIGHTS[format]))


class _Logits(nn.Module):
    """The model as a function of one batch dict to logits: what TorchScript can trace."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model(batch).logits.float()


def sample_batch(trained: TrainedModel, size: int = 4, length: int = 8) -> Batch:
    """A random batch with every modality present, on the model's device: what tracing runs."""
    generator = torch.Generator().manual_seed(0)
    batch: Batch = {}
    for name, spec in trained.modalities.items():
        if spec.kind == "text":
            batch[name] = torch.randint(2, max(3, spec.vocab_size), (size, length), generator=generator)
        elif spec.kind == "image":
            batch[name] = torch.randint(0, 256, (size, *spec.shape), generator=generator, dtype=torch.uint8)
        else:
            batch[name] = torch.randn(size, *spec.shape, generator=generator)
    return trained.full_batch(batch)


def trace(trained: TrainedModel, domain: Domain) -> torch.jit.ScriptModule:
    """The model traced on a sample batch, then checked on a batch of another size and text length against the
    model itself: a component whose Python control flow the trace froze is refused, not exported wrong."""
    trained.check_domain(domain)
    statistics = trained.target_statistics if domain == "target" else None
    wrapper = _Logits(trained.model).eval()
    with torch.no_grad(), _quiet_torchscript(), statistics.active() if statistics else contextlib.nullcontext():
        traced = torch.jit.trace(wrapper, (sample_batch(trained),), check_trace=False)
        check = sample_batch(trained, size=3, length=5)
        expected, got = wrapper(check), traced(check)
    if expected.shape != got.shape or not torch.allclose(expected, got, rtol=1e-4, atol=1e-5):
        difference = (expected - got).abs().max() if expected.shape == got.shape else "shapes differ"
        raise ConfigError(f"the traced model does not reproduce the model on a batch of another size or text length "
                          f"(largest difference {difference}): one of its components does not trace. Export it "
                          f"with --format safetensors")
    return traced


def export_onnx(trained: TrainedModel, domain: Domain, path: Path) -> list[list[str]]:
    """Write the model as ONNX for ``domain``'s BatchNorm statistics, check it with onnxruntime against the model on
    a batch of another size and text length, and return its inputs as [ONNX input name, batch key] pairs."""
    trained.check_domain(domain)
    statistics = trained.target_statistics if domain == "target" else None
    wrapper = _Logits(trained.model).eval()
    sample = sample_batch(trained)
    size = torch.export.Dim("batch")
    dynamic = {key: {0: size, **({1: torch.export.Dim(f"length_{index}")} if trained.modalities.get(key) is not None
                                 and trained.modalities[key].kind == "text" else {})}
               for index, key in enumerate(sample)}
    output = io.StringIO()
    try:
        with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(output), \
                statistics.active() if statistics else contextlib.nullcontext():
            warnings.simplefilter("ignore")
            # The batch goes in as a keyword: torch.onnx.export takes a dict at the end of args for keywords.
            program = torch.onnx.export(wrapper, (), kwargs={"batch": sample}, dynamic_shapes={"batch": dynamic},
                                        output_names=["logits"], dynamo=True, verbose=False)
            program.save(str(path))
    except Exception as error:  # torch.export's and the ONNX translation's own errors
        first = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
        raise ConfigError(f"this model does not export to ONNX ({type(error).__name__}: {first}); export it with "
                          f"--format safetensors or torchscript") from None
    session = _onnx_session(path)
    names = [entry.name for entry in session.get_inputs()]
    if len(names) != len(sample):
        raise ConfigError(f"the ONNX model takes {len(names)} inputs, not the {len(sample)} of a batch; export it "
                          f"with --format safetensors or torchscript")
    inputs = [[name, key] for name, key in zip(names, sample)]
    check = sample_batch(trained, size=3, length=5)
    with torch.no_grad(), statistics.active() if statistics else contextlib.nullcontext():
        expected = wrapper(check).cpu()
    try:
        got = OnnxModel(session, inputs)(check)
    except Exception as error:  # onnxruntime's own: e.g. a dimension the export fixed at the sample's size
        raise ConfigError(f"the ONNX model does not run on a batch of another size or text length "
                          f"({type(error).__name__}: {str(error).strip()[:300]}); export it with --format safetensors "
                          f"or torchscript") from None
    if expected.shape != got.shape or not torch.allclose(expected, got, rtol=1e-4, atol=1e-5):
        difference = (expected - got).abs().max() if expected.shape == got.shape else "shapes differ"
        raise ConfigError(f"the ONNX model does not reproduce the model on a batch of another size or text length "
                          f"(largest difference {difference}); export it with --format safetensors or torchscript")
    return inputs


def _onnx_session(path: Path) -> Any:
    onnxruntime = _onnxruntime()
    try:
        return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime's own errors on a damaged file
        raise CheckpointError(f"Cannot read {path}: {type(error).__name__}: {error}") from None


class OnnxModel:
    """An ONNX model run by onnxruntime, called like the TorchScript one: a full batch dict in, logits out."""

    def __init__(self, session: Any, inputs: list[list[str]]) -> None:
        self.session = session
        self.inputs = inputs

    def __call__(self, batch: Batch) -> torch.Tensor:
        feed = {name: batch[key].detach().cpu().numpy() for name, key in self.inputs}
        return torch.from_numpy(self.session.run(["logits"], feed)[0])

    def eval(self) -> OnnxModel:
        return self


@contextlib.contextmanager
def _quiet_torchscript() -> Iterator[None]:
    """TorchScript's deprecation notices and tracer warnings say nothing the check after tracing does not."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        yield


def load_bundle(folder: Path, device: str | None = None, plugins: Plugins | None = None) -> TrainedModel:
    """A bundle that :func:`export` wrote, as a :class:`TrainedModel`."""
    experiment = load_saved_experiment(folder / "config.yaml", "a bundle's config.yaml holds the experiment its model "
                                                               "is built from. Export the run again")
    info = read_model_info(folder)
    exported = info.get("export")
    if not isinstance(exported, dict) or exported.get("format") not in FORMATS:
        raise CheckpointError(f"{folder / MODEL_INFO} does not say how the bundle was exported (its 'export' entry)")
    header = {key: exported.get(key) for key in ("checkpoint", "epoch", "selected_by")}
    tokenizers = {}
    for name, (kind, _, _) in info["modalities"].items():
        if kind == "text":
            path = folder / TOKENIZERS / f"{name}.json"
            if not path.is_file():
                raise CheckpointError(f"{folder} lacks {TOKENIZERS}/{name}.json, the tokenizer of modality '{name}'")
            tokenizers[name] = path.read_text(encoding="utf-8")
    weights = folder / WEIGHTS[exported["format"]]
    if exported["format"] == "onnx":
        return _load_onnx(experiment, info, tokenizers, weights, header, exported, plugins)
    if exported["format"] == "safetensors":
        state = _read_safetensors(weights)
        state.update(tokenizers=tokenizers, classes=info["classes"])
        return build_trained_model(experiment, info, state, header, device, plugins)
    return _load_torchscript(experiment, info, tokenizers, weights, header, exported.get("domain") or "source",
                             device, plugins)


def _read_safetensors(path: Path) -> dict[str, Any]:
    try:
        tensors = _safetensors().load_file(str(path))
    except Exception as error:  # safetensors raises its own SafetensorError on a damaged file
        raise CheckpointError(f"Cannot read {path}: {type(error).__name__}: {error}") from None
    model = {key[len(_MODEL_PREFIX):]: value for key, value in tensors.items() if key.startswith(_MODEL_PREFIX)}
    layers: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith(_TARGET_PREFIX):
            index, name = key[len(_TARGET_PREFIX):].split(".", 1)
            layers.setdefault(int(index), {})[name] = value
    state: dict[str, Any] = {"model": model}
    if layers:
        state["target_batchnorm"] = [layers[index] for index in sorted(layers)]
    return state


def _load_onnx(experiment: Experiment, info: dict[str, Any], tokenizers: dict[str, str], path: Path,
               header: dict[str, Any], exported: dict[str, Any], plugins: Plugins | None) -> TrainedModel:
    inputs = exported.get("onnx_inputs")
    if not isinstance(inputs, list) or not all(isinstance(pair, list) and len(pair) == 2 for pair in inputs):
        raise CheckpointError(f"{path.parent / MODEL_INFO} does not list the ONNX model's inputs ('onnx_inputs')")
    model = OnnxModel(_onnx_session(path), inputs)
    specs = _modality_specs(experiment, info, tokenizers, plugins)
    return TrainedModel(experiment, model, specs, info["classes"], torch.device("cpu"), header,  # type: ignore[arg-type]
                        traced_domain=exported.get("domain") or "source")


def _modality_specs(experiment: Experiment, info: dict[str, Any], tokenizers: dict[str, str],
                    plugins: Plugins | None) -> dict[str, ModalitySpec]:
    """The modalities of a traced bundle: shapes from model.json, tokenizers rebuilt from their saved state."""
    specs: dict[str, ModalitySpec] = {}
    components = validate_components(experiment, plugins or get_plugins(), only=("data.tokenizer",)) \
        if tokenizers else {}
    for name, (kind, shape, extras) in info["modalities"].items():
        if kind == "text":
            tokenizer = tokenizer_for(components["data.tokenizer"], [], name, tokenizers[name])
            specs[name] = ModalitySpec(name, kind, vocab_size=tokenizer.vocab_size, tokenizer=tokenizer)
        else:
            specs[name] = ModalitySpec(name, kind, shape=shape, extras=extras)
    return specs


def _load_torchscript(
    experiment: Experiment, info: dict[str, Any], tokenizers: dict[str, str], path: Path, header: dict[str, Any],
    domain: Domain, device: str | None, plugins: Plugins | None,
) -> TrainedModel:
    target = resolve_device(device or experiment.trainer.device)
    try:
        with _quiet_torchscript():
            scripted = torch.jit.load(str(path), map_location=target)
    except Exception as error:  # TorchScript's own errors on a damaged archive
        raise CheckpointError(f"Cannot read {path}: {type(error).__name__}: {error}") from None
    specs = _modality_specs(experiment, info, tokenizers, plugins)
    return TrainedModel(experiment, scripted.eval(), specs, info["classes"], target, header, traced_domain=domain)

