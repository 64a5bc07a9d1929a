"""The ``transmodal`` command line. Exit status: 0 success, 2 usage or config error (a wrong path too), 1 failure
while running, 130 interrupted (Ctrl-C), 143 terminated (SIGTERM: ``kill``, a scheduler's preemption, or torchrun
stopping the other ranks when one fails).

Only the commands that train, evaluate, predict, export, rank or report import torch: ``--help``, ``components``,
``plugins``, ``config`` and ``compare`` start in a fraction of torch's own import time.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import errno
import json
import os
import select
import shutil
import signal
import sys
import threading
import traceback
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from transmodal.errors import CheckpointError, ConfigError, TransmodalError

if TYPE_CHECKING:
    from transmodal.distributed import World

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 130, 128 + signal.SIGTERM
EXIT_PIPE_CLOSED = 128 + signal.SIGPIPE  # what a shell reports for a program that `| head` stopped


class Terminated(KeyboardInterrupt):
    """SIGTERM raised as an exception, so that a terminated run says how to resume, as Ctrl-C does."""


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """SIGTERM raises :class:`Terminated` until the block ends, then the previous handler is back."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return

    def terminate(signum: int, frame: Any) -> None:
        _ignore_sigterm()  # one message, however often the signal comes
        raise Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _ignore_sigterm() -> None:
    """While an error is being reported, a SIGTERM (torchrun's, to every rank once one fails) must not cut it off."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own exits with 2 too; keep its usage line
        self.print_usage(sys.stderr)
        raise ConfigError(message)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="transmodal", description="Transfer and cross-modal learning from one config.")
    parser.add_argument("--debug", action="store_true",
                        help="on an error, print its traceback too (as does TRANSMODAL_DEBUG=1)")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = commands.add_parser("train", help="train a model (no CONFIG: the embedded default experiment)")
    train.add_argument("config", nargs="?", help="experiment YAML file")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                       help="override a config value, e.g. --set trainer.epochs=3 (repeatable)")
    train.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue a stopped run")
    train.add_argument("--quiet", action="store_true", help="no progress bar and no per-epoch lines")
    train.add_argument("--seeds", type=int, nargs="+", metavar="SEED",
                       help="one run per seed, in parallel processes, then compared (see transmodal compare)")
    train.add_argument("--over", action="append", default=[], metavar="PATH=V1,V2",
                       help="also one run per value (repeatable: the cartesian product), e.g. "
                            "--over optimizer.lr=0.001,0.0003")
    train.add_argument("--jobs", type=int, metavar="N",
                       help="with --seeds/--over: runs at a time (default: one per core, or one per GPU)")

    evaluate = commands.add_parser("evaluate", help="evaluate a run's checkpoint on its evaluation splits")
    evaluate.add_argument("run_dir", type=Path)
    evaluate.add_argument("--checkpoint", choices=["best", "last"], default="best")
    evaluate.add_argument("--drop-modality", action="append", default=[], metavar="NAME",
                          help="evaluate with this modality absent from every sample (repeatable)")
    evaluate.add_argument("--data", type=Path, metavar="CONFIG_OR_MANIFEST",
                          help="evaluate on other data: a config file's dataset, or a manifest (.csv, .jsonl, ...) "
                               "with a column per modality and a label column")
    evaluate.add_argument("--domain", choices=["source", "target"], default="source",
                          help="with --data FILE.csv: whose BatchNorm statistics serve it (per-domain BatchNorm)")
    evaluate.add_argument("--via", action="append", default=[], metavar="MODALITY",
                          help="cross-modal transfer, for a run that aligned two modalities (contrastive-alignment): "
                               "predict from this modality's aligned embedding with a probe trained on the other "
                               "modality's embeddings of source/val (cross-fitted on source/val itself; repeatable)")
    evaluate.add_argument("--json", action="store_true")

    predict = commands.add_parser(
        "predict", help="predict classes of new samples with a trained run",
        description="INPUTS: image files or folders, texts or a .txt file (one text per line), or a manifest "
                    "(.csv, .tsv, .jsonl) with a column per modality (missing columns and empty cells: absent).")
    predict.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run directory or an exported model")
    predict.add_argument("inputs", nargs="+", metavar="INPUTS")
    predict.add_argument("--modality", help="the modality that files or texts are for, if the model has several")
    predict.add_argument("--output", type=Path, help="a .csv or .jsonl file (default: CSV on stdout)")
    predict.add_argument("--format", dest="output_format", choices=["csv", "jsonl"],
                         help="output format (default: from --output's suffix, else csv)")
    predict.add_argument("--top-k", type=int, default=3, help="classes listed per sample (default 3)")
    predict.add_argument("--batch-size", type=int, default=256)
    predict.add_argument("--domain", choices=["source", "target"], default="source",
                         help="whose BatchNorm statistics serve the inputs (per-domain BatchNorm keeps both)")
    predict.add_argument("--checkpoint", choices=["best", "last"], default="best")
    predict.add_argument("--device", help="default: the run's trainer.device")

    export_model = commands.add_parser("export", help="export a run's model with its config and tokenizers")
    export_model.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    export_model.add_argument("--format", choices=["safetensors", "torchscript", "onnx"], default="safetensors",
                              help="onnx needs the onnx extra: pip install \"transmodal[onnx]\"")
    export_model.add_argument("--output", type=Path, help="a new folder (default: RUN_DIR/export-FORMAT)")
    export_model.add_argument("--domain", choices=["source", "target"], default="source",
                              help="torchscript, onnx: whose BatchNorm statistics are built in")
    export_model.add_argument("--checkpoint", choices=["best", "last"], default="best")

    compare = commands.add_parser(
        "compare", help="finished runs as a table: mean ± std over seeds, grouped by config differences",
        description="Groups runs by the settings their config.yaml files differ in (not the seed) and prints each "
                    "group's mean ± standard deviation, of the checkpoint each run's validator chose, and of the "
                    "oracle epoch (chosen on target-test labels: an upper bound).")
    compare.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR")
    compare.add_argument("--format", dest="table_format", choices=["markdown", "csv"], default="markdown")
    compare.add_argument("--metric", choices=["accuracy", "macro_f1"], default="accuracy")

    report = commands.add_parser(
        "report", help="an HTML report of a run (curves, confusion matrices, validators), or of several compared",
        description='Writes report.html and its PNG figures; needs matplotlib (pip install "transmodal[report]").')
    report.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR", help="one run, or several to compare")
    report.add_argument("--output", type=Path, metavar="DIR",
                        help="the report's folder (default: the first RUN_DIR's report/, replaced)")
    report.add_argument("--samples", type=int, default=2000, metavar="N",
                        help="samples per split for the features in 2-D and the modality contribution (default 2000)")

    rank = commands.add_parser(
        "rank", help="rank candidate encoders on a config's labelled data without training (LogME, LEEP, H-score)",
        description="Builds the config's dataset and each candidate encoder (no training), encodes the labelled "
                    "training split (source domain) and scores the features with LogME (You et al., 2021), LEEP "
                    "(Nguyen et al., 2020; a bare encoder's source classes are a Gaussian mixture of its features, "
                    "as in N-LEEP) and H-score (Bao et al., 2019). Higher is better for each. The target domain's "
                    "test labels are read only if --split names that split.")
    rank.add_argument("config", help="experiment YAML file: its dataset (and tokenizer) are used")
    rank.add_argument("--backbones", action="append", default=[], metavar="A,B,C",
                      help="candidate encoders or backbones by name, each with its default parameters")
    rank.add_argument("--candidate", dest="candidates", action="append", default=[], metavar="[LABEL=]SPEC",
                      help="one candidate (repeatable): a name, a mapping with parameters "
                           "('wide={name: small-cnn, channels: [32, 64, 128]}'), or a trained run directory "
                           "(its head gives LEEP's source classes)")
    rank.add_argument("--modality", help="the modality the candidates encode (default: the config's only one, or "
                                         "its only image modality when every candidate is a backbone)")
    rank.add_argument("--split", default="train",
                      help="labelled split to score on: train (default: the source training split) or an "
                           "evaluation split's name, e.g. source/val")
    rank.add_argument("--max-samples", type=int, metavar="N", help="score a random subset of N samples")
    rank.add_argument("--scores", default="logme,leep,hscore", metavar="LIST",
                      help="scores to compute, from logme, leep, hscore (default: all three)")
    rank.add_argument("--sort-by", default=None, metavar="SCORE", help="the score that orders the table "
                                                                        "(default: logme, or the first of --scores)")
    rank.add_argument("--hscore-shrinkage", choices=["none", "ledoit-wolf"], default="none",
                      help="none: the paper's pseudo-inverse of cov(f); ledoit-wolf: the shrunk covariance of "
                           "Ibrahim et al. (2022), steadier when features are wide next to the samples")
    rank.add_argument("--device", help="default: the config's trainer.device")
    rank.add_argument("--batch-size", type=int, metavar="N", help="default: the config's trainer.eval_batch_size")
    rank.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                      help="override a config value, e.g. --set data.dataset.train_size=1000 (repeatable)")
    rank.add_argument("--json", action="store_true", help="print the ranking as JSON")
    rank.add_argument("--quiet", action="store_true", help="no progress lines on stderr")

    plugins = commands.add_parser("plugins", help="installed plugins, what they register, and failures")
    plugins.add_argument("--json", action="store_true")

    components = commands.add_parser(
        "components", help="list components: components [KIND] [PATTERN], or components show NAME",
        description="List components by kind and wildcard pattern ('res*'), or 'components show NAME'.",
    )
    components.add_argument("args", nargs="*", metavar="KIND|PATTERN|show NAME")

    config = commands.add_parser("config", help="validate a config, or print its JSON schema")
    config_commands = config.add_subparsers(dest="config_command", required=True, parser_class=_Parser)
    validate = config_commands.add_parser(
        "validate", help="check a config file without training (no FILE: the default experiment)")
    validate.add_argument("file", type=Path, nargs="?")
    validate.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE")
    config_commands.add_parser("schema", help="JSON schema of the experiment config, with every installed "
                                              "component's parameters (for editors)")

    data = commands.add_parser("data", help="write the embedded dataset as image files and a manifest")
    data_commands = data.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    export = data_commands.add_parser("export", help="export synthetic-shapes as PNG files + manifest.csv")
    export.add_argument("dataset", choices=["synthetic-shapes"])
    export.add_argument("directory", type=Path)
    export.add_argument("--set", dest="overrides", action="append", default=[], metavar="PARAM=VALUE",
                        help="a dataset parameter, e.g. --set train_size=500 (repeatable)")

    cache = commands.add_parser("cache", help="list or clear the decoded-image cache")
    cache.add_argument("cache_command", choices=["list", "clear"])
    cache.add_argument("--dir", type=Path, help="cache folder (default: $TRANSMODAL_CACHE_DIR, "
                                                "$XDG_CACHE_HOME/transmodal or ~/.cache/transmodal)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args: argparse.Namespace | None = None
    with warnings.catch_warnings(), _sigterm_raises():
        _plain_plugin_warnings()
        try:
            args = _parser().parse_args(argv)
            status = COMMANDS[args.command](args)
            sys.stdout.flush()  # within reach of the handler below: at exit, a reader gone would print a traceback
            return status
        except ConfigError as error:
            _ignore_sigterm()
            return _report(error, EXIT_USAGE, args)
        except TransmodalError as error:
            _ignore_sigterm()
            return _report(error, EXIT_FAILURE, args)
        except KeyboardInterrupt as interrupt:
            _ignore_sigterm()
            print("terminated" if isinstance(interrupt, Terminated) else "interrupted", file=sys.stderr)
            return EXIT_TERMINATED if isinstance(interrupt, Terminated) else EXIT_INTERRUPTED
        except BrokenPipeError:
            if not _stdout_closed():
                raise  # another pipe (a worker's): a real failure
            return EXIT_PIPE_CLOSED  # the reader of stdout stopped (`transmodal compare ... | head`): quietly


def _stdout_closed() -> bool:
    """Whether stdout is a pipe whose reader is gone (poll reports an error on its end); if so, stdout is pointed
    at /dev/null so that flushing it at exit stays quiet."""
    try:
        descriptor = sys.stdout.fileno()
        poller = select.poll()
        poller.register(descriptor, select.POLLOUT)
        if not any(events & select.POLLERR for _, events in poller.poll(0)):
            return False
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, descriptor)
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no descriptor, or no poll (Windows): not known to be closed
        return False
    return True


def _report(error: TransmodalError, status: int, args: argparse.Namespace | None) -> int:
    debug_variable = os.environ.get("TRANSMODAL_DEBUG", "").strip().lower() in {"1", "true", "yes", "on"}
    if getattr(args, "debug", False) or debug_variable:
        traceback.print_exception(error, file=sys.stderr)
    print(f"error: {error}", file=sys.stderr)
    return status


def _plain_plugin_warnings() -> None:
    """Plugin and data warnings as one plain line each (no source line), each message once however often it is
    raised."""
    from transmodal.errors import DataWarning
    from transmodal.plugins import PluginWarning

    shown = warnings.showwarning

    def show(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
        if issubclass(category, PluginWarning | DataWarning):
            print(f"transmodal: warning: {message}", file=sys.stderr)
        else:
            shown(message, category, *args, **kwargs)

    for category in (PluginWarning, DataWarning):
        warnings.filterwarnings("once", category=category)
    warnings.showwarning = show


def _train(args: argparse.Namespace) -> int:
    from transmodal import run
    from transmodal.config import load_experiment

    from transmodal.distributed import launched_world

    world = launched_world()
    main_process = world.is_main  # under torchrun, rank 0 alone makes the run directory and reports
    if args.seeds is not None or args.over or args.jobs is not None:
        return _train_grid(args, world)
    if args.resume is not None:
        if args.config or args.overrides:
            raise ConfigError("--resume continues a run with its saved config; drop CONFIG and --set")
        run_dir = _existing_run_dir(args.resume)
        try:
            summary = run.resume(run_dir, quiet=args.quiet)
        except KeyboardInterrupt as interrupt:
            return _interrupted(run_dir, interrupt, world)
        except OSError as error:
            raise _disk_full(run_dir, error) or error
    elif not main_process:
        summary, run_dir = run.train(load_experiment(args.config, args.overrides), quiet=True)
    else:
        from transmodal.run_dir import create_run_dir, nearest_existing, remove_unused_run_dir

        experiment = load_experiment(args.config, args.overrides)
        existed = nearest_existing(experiment.output.dir)
        run_dir = create_run_dir(experiment)  # made here rather than in run.train so that an interrupt can name it
        try:
            summary, _ = run.train(experiment, quiet=args.quiet, run_dir=run_dir)
        except BaseException as error:
            remove_unused_run_dir(run_dir, existed)  # stopped before the run began (a config or data error)
            if isinstance(error, KeyboardInterrupt):
                return _interrupted(run_dir, error, world)
            if isinstance(error, OSError):
                raise _disk_full(run_dir, error) or error
            raise
    if not main_process:
        return EXIT_OK
    print(_summary_table(summary))
    print(f"run directory: {run_dir}")
    return EXIT_OK


def _train_grid(args: argparse.Namespace, world: World) -> int:
    from transmodal.compare import compare
    from transmodal.grid import GridFailed, run_grid

    if args.resume is not None:
        raise ConfigError("--resume continues one run; resume each run of a grid with transmodal train --resume RUN")
    if world.distributed:
        raise ConfigError("--seeds and --over start processes of their own; run them without torchrun")
    if args.jobs is not None and args.seeds is None and not args.over:
        raise ConfigError("--jobs sets how many runs of --seeds/--over train at a time; give --seeds or --over")
    config = Path(args.config) if args.config else None
    done, failed = run_grid(config, args.overrides, args.seeds, args.over, args.jobs, args.quiet)
    if done:
        print()
        print(compare([run.run_dir for run in done]))
    if failed:
        raise GridFailed(f"{len(failed)} of {len(done) + len(failed)} runs failed: "
                         + ", ".join(run.label for run in failed))
    return EXIT_OK


def _disk_full(run_dir: Path, error: OSError) -> CheckpointError | None:
    """A full disk (or quota) met by any write of a run (metrics, logs, summary), said plainly with how to go on;
    None for any other OSError. Checkpoint writes say it themselves (checkpoint.save_checkpoint)."""
    from transmodal.run_dir import nearest_existing

    if error.errno not in (errno.ENOSPC, errno.EDQUOT):
        return None
    where = error.filename or run_dir
    free = shutil.disk_usage(nearest_existing(run_dir)).free
    if (run_dir / "checkpoints" / "last.pt").is_file():
        go_on = f"continue with: transmodal train --resume {run_dir}"
    elif run_dir.is_dir():
        go_on = f"train again from the beginning with: transmodal train --resume {run_dir}"
    else:  # nothing of the run was written, and its empty folder is gone
        go_on = "run the same command again"
    return CheckpointError(f"cannot write {where}: the disk is full ({error.strerror}; {free / 2**20:.0f} MiB free "
                           f"there). Free some space, then {go_on}")


def _interrupted(run_dir: Path, interrupt: KeyboardInterrupt, world: World) -> int:
    _ignore_sigterm()
    terminated = isinstance(interrupt, Terminated)
    stopped = "terminated (SIGTERM)" if terminated else "interrupted"
    if terminated and world.distributed:  # torchrun terminates the other ranks when one fails
        stopped = (f"rank {world.rank} of {world.world_size}: terminated by torchrun (SIGTERM), as another process of "
                   f"this run stopped")
    command = (f"torchrun --nproc_per_node ... -m transmodal train --resume {run_dir} (with as many processes)"
               if world.distributed else f"transmodal train --resume {run_dir}")
    if (run_dir / "checkpoints" / "last.pt").is_file():
        print(f"{stopped}; continue with: {command}", file=sys.stderr)
    elif run_dir.is_dir():
        print(f"{stopped} before the first checkpoint; train again from the beginning with: {command}",
              file=sys.stderr)
    else:
        print(f"{stopped} before the run began; nothing was written", file=sys.stderr)
    return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED


def _existing_run_dir(path: Path) -> Path:
    """``path`` if it is a run directory; a wrong path is the user's mistake (exit status 2), not a failure."""
    from transmodal.config import did_you_mean

    if path.exists() and not path.is_dir():
        raise ConfigError(f"{path} is not a run directory (it is a file, not a folder)")
    if not path.is_dir():
        raise ConfigError(f"No run directory {path}.{did_you_mean(path)}")
    if not (path / "config.yaml").is_file():
        raise ConfigError(f"{path} is not a run directory (no config.yaml)")
    return path


def _summary_table(summary: dict[str, Any]) -> str:
    lines = [f"{'split':<14}{'accuracy':>10}{'macro-F1':>10}{'loss':>9}   checkpoint"]
    for label, key in ((f"best by {summary['selected_by']}, epoch {summary['best_epoch']}", "best"),
                       (f"final, epoch {summary['epochs']}", "final")):
        for split, metrics in summary[key].items():
            lines.append(f"{split:<14}{metrics['accuracy']:>10.4f}{metrics['macro_f1']:>10.4f}"
                         f"{metrics['loss']:>9.4f}   {label}")
    if "oracle" in summary:
        oracle = summary["oracle"]
        lines.append(f"{'target/test':<14}{oracle['target/test']['accuracy']:>10.4f}"
                     f"{oracle['target/test']['macro_f1']:>10.4f}{oracle['target/test']['loss']:>9.4f}"
                     f"   oracle (chosen on target test labels), epoch {oracle['epoch']}")
    return "\n".join(lines)


def _evaluate(args: argparse.Namespace) -> int:
    from transmodal import run

    if args.data is not None:
        if args.drop_modality:
            raise ConfigError("--drop-modality works on the run's own splits; with --data, leave the modality's "
                              "column out of the manifest instead")
        if args.via:
            raise ConfigError("--via works on the run's own splits (its probe trains on the run's training split); "
                              "it cannot be combined with --data")
        from transmodal.evaluate_data import evaluate_on

        metrics, header = evaluate_on(args.run_dir, args.data, args.checkpoint, args.domain)
    else:
        from transmodal.export import is_bundle

        if is_bundle(args.run_dir):
            raise ConfigError(f"{args.run_dir} is an exported model: it has no dataset or checkpoints of its own; "
                              f"evaluate it on labelled data with --data FILE")
        metrics, header = run.evaluate_run(_existing_run_dir(args.run_dir), args.checkpoint,
                                           tuple(args.drop_modality), detailed=True,
                                           via=tuple(dict.fromkeys(args.via)))
    if args.json:
        print(json.dumps({**header, "dropped": args.drop_modality, "metrics": metrics}, indent=2))
        return EXIT_OK
    dropped = f", without {', '.join(args.drop_modality)}" if args.drop_modality else ""
    print(f"checkpoint {header['checkpoint']} (epoch {header['epoch']}, selected by {header['selected_by']}){dropped}")
    print(f"{'split':<14}{'accuracy':>10}{'macro-F1':>10}{'loss':>9}")
    for split, values in metrics.items():
        print(f"{split:<14}{values['accuracy']:>10.4f}{values['macro_f1']:>10.4f}{values['loss']:>9.4f}")
    cross_modal = _cross_modal_lines(metrics)
    if cross_modal:
        print("\n" + "\n".join(cross_modal))
    for split, values in metrics.items():
        if "per_class" in values:
            print(f"\n{split}: per class (--json adds the confusion matrix)")
            print(f"  {'class':<24}{'precision':>10}{'recall':>10}{'F1':>10}{'support':>9}")
            for name, scores in values["per_class"].items():
                print(f"  {name[:24]:<24}{scores['precision']:>10.4f}{scores['recall']:>10.4f}{scores['f1']:>10.4f}"
                      f"{scores['support']:>9}")
    return EXIT_OK


def _cross_modal_lines(metrics: dict[str, Any]) -> list[str]:
    """Retrieval, zero-shot and transfer metrics of the splits that have them (runs with contrastive-alignment)."""
    lines: list[str] = []
    retrieval = {split: values["retrieval"] for split, values in metrics.items() if "retrieval" in values}
    if retrieval:
        lines.append("retrieval (ties count against the query; chance R@1 is 1/pool)")
        lines.append(f"{'split':<14}{'direction':<16}{'pool':>6}{'R@1':>8}{'R@5':>8}{'R@10':>8}{'median rank':>13}")
        for split, values in retrieval.items():
            for direction, scores in values.items():
                if isinstance(scores, dict):
                    lines.append(f"{split:<14}{direction:<16}{values['pool']:>6}{scores['R@1']:>8.4f}"
                                 f"{scores['R@5']:>8.4f}{scores['R@10']:>8.4f}{scores['median_rank']:>13g}")
    for split, values in metrics.items():
        if "zero_shot" in values:
            shot = values["zero_shot"]
            unknown = 100 * shot["unknown_token_fraction"]
            lines.append(f"{split}: zero-shot accuracy {shot['accuracy']:.4f} ({shot['modality']} against "
                         f"{shot['prototypes']} prototypes of the class names; {unknown:.0f}% of their tokens "
                         f"unknown to the tokenizer)")
    for split, values in metrics.items():
        for via, transfer in values.get("transfer", {}).items():
            lines.append(f"{split}: via {via} accuracy {transfer['accuracy']:.4f} (probe trained on "
                         f"{transfer['trained_on']}; trained on {via} itself: {transfer['within']['accuracy']:.4f})")
    return lines


def _predict(args: argparse.Namespace) -> int:
    from transmodal.predict import check_output, write_records
    from transmodal.trained_model import load

    if args.output is not None:
        check_output(args.output, args.output_format, args.inputs, args.run_dir)
    trained = load(args.run_dir, args.checkpoint, args.device)
    records = trained.predict(args.inputs, modality=args.modality, top_k=args.top_k, batch_size=args.batch_size,
                              domain=args.domain)
    write_records(records, args.output, args.output_format)
    if args.output is not None:
        print(f"wrote {len(records)} predictions to {args.output}", file=sys.stderr)
    return EXIT_OK


def _export(args: argparse.Namespace) -> int:
    from transmodal.trained_model import load

    trained = load(_existing_run_dir(args.run_dir), args.checkpoint, "cpu")
    output = args.output or args.run_dir / f"export-{args.format}"
    print(f"exported to {trained.export(output, args.format, args.domain)}")
    return EXIT_OK


def _compare(args: argparse.Namespace) -> int:
    from transmodal.compare import compare

    print(compare([_existing_run_dir(path) for path in args.run_dirs], args.table_format, args.metric).rstrip("\n"))
    return EXIT_OK


def _write_report(args: argparse.Namespace) -> int:
    from transmodal.report import write_report
    from transmodal.run_dir import refuse_repeated

    if args.samples < 1:
        raise ConfigError(f"--samples {args.samples}: give a positive number of samples per split")
    run_dirs = [_existing_run_dir(path) for path in args.run_dirs]
    refuse_repeated(run_dirs, "a report compares different runs")
    page = write_report(run_dirs, args.output, args.samples)
    print(f"report: {page}")
    return EXIT_OK


def _rank(args: argparse.Namespace) -> int:
    from transmodal.config import load_experiment
    from transmodal.ranking import METRICS, parse_candidates, rank

    candidates = parse_candidates(args.backbones, args.candidates)
    scores = [name.strip().lower().replace("-", "") for name in args.scores.split(",") if name.strip()]
    unknown = [name for name in scores if name not in METRICS]
    if unknown or not scores:
        raise ConfigError(f"--scores {args.scores}: choose among {', '.join(METRICS)}")
    sort_by = (args.sort_by or ("logme" if "logme" in scores else scores[0])).strip().lower().replace("-", "")
    if sort_by not in scores:
        raise ConfigError(f"--sort-by {args.sort_by}: choose one of the scores computed ({', '.join(scores)})")
    if args.batch_size is not None and args.batch_size < 1:
        raise ConfigError(f"--batch-size {args.batch_size}: give a positive number")
    experiment = load_experiment(args.config, args.overrides)
    quiet = args.quiet or args.json

    def progress(message: str) -> None:
        if not quiet:
            print(message, file=sys.stderr, flush=True)

    ranking = rank(experiment, candidates, modality=args.modality, split=args.split, max_samples=args.max_samples,
                   metrics=scores, sort_by=sort_by, hscore_shrinkage=args.hscore_shrinkage, device=args.device,
                   batch_size=args.batch_size, progress=progress)
    print(json.dumps(ranking.as_dict(), indent=2) if args.json else ranking.table())
    return EXIT_OK


def _plugins(args: argparse.Namespace) -> int:
    from transmodal.plugins import get_plugins

    plugins = get_plugins()
    if args.json:
        payload = {
            "plugins": [
                {"distribution": i.distribution, "version": i.version, "registers": i.registered}
                for i in plugins.infos.values()
            ],
            "failed": [{"distribution": f.distribution, "version": f.version, "error": f.error}
                       for f in plugins.failures],
        }
        print(json.dumps(payload, indent=2))
        return EXIT_OK
    for info in plugins.infos.values():
        print(f"{info.distribution} {info.version}")
        for kind, names in info.registered.items():
            print(f"  {kind}: {', '.join(sorted(names))}")
    for failure in plugins.failures:
        print(f"FAILED {failure.distribution} {failure.version}: {failure.error}")
    return EXIT_OK


def _components(args: argparse.Namespace) -> int:
    from transmodal.plugins import get_plugins
    from transmodal.registry import KINDS

    plugins = get_plugins()
    positional = list(args.args)
    if positional[:1] == ["show"]:
        if len(positional) != 2:
            raise ConfigError("usage: transmodal components show NAME")
        return _show_component(plugins, positional[1])
    kinds = list(KINDS)
    if positional and positional[0] in KINDS:
        kinds = [positional.pop(0)]
    elif positional and positional[0].rstrip("s") in KINDS:
        kinds = [positional.pop(0).rstrip("s")]
    if len(positional) > 1:
        raise ConfigError(f"expected [KIND] [PATTERN]; kinds are {', '.join(KINDS)}")
    pattern = positional[0] if positional else "*"
    found = 0
    for kind in kinds:
        registry = plugins.registry(kind)
        names = registry.names(pattern)
        if not names:
            continue
        print(f"{kind}:")
        for name in names:
            component = registry.components[name]
            print(f"  {name:<22} {component.description}  [{component.distribution}]")
            found += 1
    if not found:
        print(f"no component matches '{pattern}'" + (f" among {kinds[0]}s" if len(kinds) == 1 else ""))
    return EXIT_OK


def _show_component(plugins: Any, name: str) -> int:
    matches = plugins.find(name)
    if not matches:
        known = sorted({n for registry in plugins.registries.values() for n in registry.components})
        close = difflib.get_close_matches(name, known, n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ConfigError(f"No component named '{name}'.{hint} List them with: transmodal components")
    for component in matches:
        print(f"{component.name} ({component.kind}, from {component.distribution})")
        print(f"  {component.description}")
        fields = component.params.model_fields
        if not fields:
            print("  parameters: none")
        for field_name, field in fields.items():
            default = "required" if field.is_required() else f"default {field.get_default(call_default_factory=True)!r}"
            described = f"  {field.description}" if field.description else ""
            print(f"  {field_name}: {_type_name(field.annotation)}, {default}.{described}")
    return EXIT_OK


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def _config(args: argparse.Namespace) -> int:
    from transmodal.config import load_experiment, validate_components
    from transmodal.plugins import get_plugins

    if args.config_command == "schema":
        from transmodal.schema import experiment_schema

        print(json.dumps(experiment_schema(get_plugins()), indent=2))
        return EXIT_OK
    experiment = load_experiment(args.file, args.overrides)
    resolved = validate_components(experiment, get_plugins())
    print(f"{args.file or 'the default experiment'}: valid ({len(resolved)} components: "
          + ", ".join(f"{r.component.kind} {r.component.name}" for r in resolved.values()) + ")")
    return EXIT_OK


def _data(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from transmodal.builtin.datasets import SyntheticShapesParams
    from transmodal.config import apply_overrides
    from transmodal.datasets.export import export_synthetic_shapes

    try:
        params = SyntheticShapesParams.model_validate(apply_overrides({}, args.overrides))
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        raise ConfigError(f"synthetic-shapes parameters: {problems}") from None
    manifest, rows = export_synthetic_shapes(args.directory, params)
    print(f"wrote {rows} rows to {manifest} (images under {args.directory / 'images'})")
    return EXIT_OK


def _cache(args: argparse.Namespace) -> int:
    from transmodal.image_cache import ImageCache

    cache = ImageCache(args.dir)
    if args.cache_command == "clear":
        freed = cache.clear()
        print(f"cleared {cache.root} ({freed / 2**20:.1f} MiB freed)")
        return EXIT_OK
    entries = cache.entries()
    if not entries:
        print(f"{cache.root}: no cached images")
    for entry in entries:
        header = entry.header
        shape = header.get("shape") or ["?"] * 4
        print(f"{entry.path.name}  {header.get('files', '?')} files, {shape[-1]}x{shape[-1]}, "
              f"{entry.bytes / 2**20:.1f} MiB  {header.get('source', '(no readable header)')}")
    return EXIT_OK


COMMANDS = {
    "train": _train,
    "evaluate": _evaluate,
    "predict": _predict,
    "export": _export,
    "report": _write_report,
    "rank": _rank,
    "compare": _compare,
    "plugins": _plugins,
    "components": _components,
    "config": _config,
    "data": _data,
    "cache": _cache,
}

def console_main() -> None:
    """The ``transmodal`` command (and ``python -m transmodal``): :func:`main`, then exit with its status."""
    code = main()
    if os.environ.get("WORLD_SIZE", "1") != "1":
        # Under torchrun, skip the interpreter's teardown: after a complete run, torch's distributed internals
        # sometimes abort in their C++ destructors at exit ("terminate called without an active exception",
        # about one run in five here, with the process group already destroyed), which turned a finished job
        # into a failed one. Everything the run writes is closed by now; flush what is printed.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    console_main()
