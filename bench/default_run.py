"""Wall time and peak memory of the default experiment (`transmodal train`), as a whole process.

    python bench/default_run.py [--repeats 3]

Runs the command in a fresh process each time and reports the median wall time and the largest peak resident
memory; the last line is one JSON object. Targets on a 2-core machine: under 90 s and under 2 GiB.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    walls, peaks = [], []
    with tempfile.TemporaryDirectory() as output:
        for repeat in range(args.repeats):
            command = [sys.executable, "-m", "transmodal.cli", "train", "--quiet",
                       "--set", f"output.dir={output}", "--set", f"output.name=run{repeat}"]
            started = time.perf_counter()
            completed = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy())
            walls.append(time.perf_counter() - started)
            if completed.returncode != 0:
                sys.exit(f"default run failed:\n{completed.stderr}")
            # ru_maxrss of children is the largest peak of any child so far, in KiB on Linux
            peaks.append(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
            print(next(line for line in completed.stdout.splitlines() if line.startswith("target/test")), flush=True)

    result = {
        "wall_s_median": round(statistics.median(walls), 1),
        "wall_s_all": [round(w, 1) for w in walls],
        "peak_rss_mib": round(max(peaks), 1),
        "under_90_s": statistics.median(walls) < 90,
        "under_2_gib": max(peaks) < 2048,
        "cpus": os.cpu_count(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
