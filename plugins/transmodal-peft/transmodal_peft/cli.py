"""``transmodal-peft``: merge a run's adapters into its weights, or export the adapters on their own."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from transmodal.errors import ConfigError, TransmodalError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="transmodal-peft", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    merge = commands.add_parser("merge", help="write a new run directory with the adapters merged into the weights")
    merge.add_argument("run_dir", type=Path)
    merge.add_argument("out_dir", type=Path)
    adapters = commands.add_parser("adapters", help="save the adapters (and fully trained groups) on their own")
    adapters.add_argument("run_dir", type=Path)
    adapters.add_argument("out_file", type=Path)
    for command in (merge, adapters):
        command.add_argument("--checkpoint", default="best", choices=["best", "last"])
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        from transmodal_peft.adapters import export_adapters, merge_run

        if args.command == "merge":
            print(merge_run(args.run_dir, args.out_dir, args.checkpoint))
        else:
            print(export_adapters(args.run_dir, args.out_file, args.checkpoint))
    except TransmodalError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2 if isinstance(error, ConfigError) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
