"""CLI start-up: the median wall time of ``python -m transmodal --help``, ``components``, ``plugins`` and
``config validate``, each as a ratio to ``python -c "import torch"`` measured side by side (the commands take turns
in every round).

    python bench/startup.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

CONFIG = Path(__file__).resolve().parents[1] / "examples" / "shapes_fused.yaml"
COMMANDS: dict[str, list[str]] = {
    "import torch": ["-c", "import torch"],
    "--help": ["-m", "transmodal", "--help"],
    "components": ["-m", "transmodal", "components"],
    "plugins": ["-m", "transmodal", "plugins"],
    "config validate": ["-m", "transmodal", "config", "validate", str(CONFIG)],
}


def seconds(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    for command in COMMANDS.values():  # warm the file cache so that the first round is not an outlier
        seconds(command)
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.repeats):
        for name, command in COMMANDS.items():
            times[name].append(seconds(command))
    medians = {name: statistics.median(values) for name, values in times.items()}
    baseline = medians["import torch"]
    for name, median in medians.items():
        print(f"{name:<16} median {median * 1000:7.0f} ms   ratio to import torch {median / baseline:.2f}")
    print(json.dumps({"repeats": args.repeats, "median_s": {k: round(v, 4) for k, v in medians.items()},
                      "ratio_to_import_torch": {k: round(v / baseline, 3) for k, v in medians.items()}}))


if __name__ == "__main__":
    main()
