"""Data-parallel scaling on this machine: samples/s of the same experiment in 1 process and under torchrun.

Runs the default experiment (image + caption, concat, DANN) at the same global batch, first as one process, then as
``torchrun --standalone --nproc_per_node N -m transmodal train``, each process with one torch thread, and reads
``train_samples_per_second`` from each run's summary.json (global samples over the whole fit, evaluation included).
Prints both, their ratio and the final target/test accuracy of each; the last line is one JSON object.

    python bench/ddp_scaling.py [--processes 2] [--epochs 2] [--train-size 4096] [--batch-size 128]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def run(command: list[str], output: Path, name: str, args: argparse.Namespace) -> dict:
    overrides = [f"trainer.epochs={args.epochs}", f"trainer.batch_size={args.batch_size}", "trainer.num_threads=1",
                 f"data.dataset.train_size={args.train_size}", f"output.dir={output}", f"output.name={name}"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([*command, "train", "--quiet", *[item for o in overrides for item in ("--set", o)]],
                   check=True, env=environment, stdout=subprocess.DEVNULL)
    return json.loads((output / name / "summary.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-size", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        output = Path(folder)
        single = run([sys.executable, "-m", "transmodal"], output, "one", args)
        parallel = run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                        f"--nproc_per_node={args.processes}", "-m", "transmodal"], output, "many", args)
    one, many = single["train_samples_per_second"], parallel["train_samples_per_second"]
    print(f"1 process:   {one:8.1f} samples/s   target/test accuracy {single['final']['target/test']['accuracy']:.4f}")
    print(f"{args.processes} processes: {many:8.1f} samples/s   target/test accuracy "
          f"{parallel['final']['target/test']['accuracy']:.4f}")
    print(f"speed-up {many / one:.2f}x on {os.cpu_count()} CPU cores")
    print(json.dumps({"processes": args.processes, "cpu_cores": os.cpu_count(), "samples_per_second_1": one,
                      f"samples_per_second_{args.processes}": many, "speedup": round(many / one, 3),
                      "global_batch": args.batch_size, "train_size": args.train_size, "epochs": args.epochs}))


if __name__ == "__main__":
    main()
