"""Source-only transfer between every pair of glyphs domains: which shifts are hard before any adaptation.

    python examples/glyphs_matrix.py                      # 4 sources x 3 seeds, examples/glyphs.yaml
    python examples/glyphs_matrix.py --seeds 0 --set trainer.num_threads=1

One source-only run per source domain and seed; each run is tested on every other domain (the dataset's
``also_test``), at the checkpoint chosen on source validation. Prints target accuracy in % (mean ± standard
deviation over seeds), rows = source, columns = target.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import transmodal
from transmodal.config import apply_overrides, load_yaml, parse_experiment

DOMAINS = ["print", "scan", "handwritten", "signs"]
CONFIG = Path(__file__).parent / "glyphs.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE")
    args = parser.parse_args()
    accuracy: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as runs:
        for source in DOMAINS:
            others = [d for d in DOMAINS if d != source]
            for seed in args.seeds:
                raw = load_yaml(CONFIG)
                raw["data"]["dataset"].update(source=[source], target=others[0], also_test=others[1:])
                raw["trainer"]["seed"] = seed
                raw["output"] = {"dir": runs}
                apply_overrides(raw, args.overrides)
                summary, _ = transmodal.train(parse_experiment(raw), quiet=True)
                for target in others:
                    split = "target/test" if target == others[0] else f"test/{target}"
                    accuracy.setdefault((source, target), []).append(summary["best"][split]["accuracy"])
                print(f"{source}, seed {seed}: " + ", ".join(
                    f"{t} {accuracy[(source, t)][-1]:.3f}" for t in others), flush=True)
    print(f"\nglyphs, source-only ({CONFIG.name}{', ' + ', '.join(args.overrides) if args.overrides else ''}); "
          f"seeds {args.seeds}; target accuracy in %, rows: source, columns: target.\n")
    print("| source \\ target | " + " | ".join(DOMAINS) + " |")
    print("| --- |" + " --- |" * len(DOMAINS))
    for source in DOMAINS:
        cells = []
        for target in DOMAINS:
            values = accuracy.get((source, target))
            if values is None:
                cells.append("—")
                continue
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{100 * statistics.mean(values):.1f} ± {100 * spread:.1f}")
        print(f"| {source} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
