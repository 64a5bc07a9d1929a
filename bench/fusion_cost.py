"""Cost of each fusion operator: forward + backward time as a ratio to concat, and parameter count.

Every operator is built with its default parameters from the registry (the attention operators too when
transmodal-attention is installed) over two modalities, 512 and 256 wide, at batch 256, and timed round-robin
in the same process so that a busy machine slows all of them alike. Reported: the median over repeats, its
ratio to concat's median, and the parameter count. The last stdout line is one JSON object.

    python bench/fusion_cost.py                      # CPU, one thread
    python bench/fusion_cost.py --device cuda --repeats 50
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from transmodal.plugins import get_plugins


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step(fusion: torch.nn.Module, features: dict[str, torch.Tensor], present: dict[str, torch.Tensor]) -> None:
    """One forward and backward pass, as in training: gradients reach the inputs (the encoders upstream)."""
    out = fusion(features, present)
    out.square().mean().backward()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--widths", type=int, nargs=2, default=[512, 256], metavar=("IMAGE", "TEXT"))
    parser.add_argument("--repeats", type=int, default=15, help="timed passes per operator")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for torch")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--absent", type=float, default=0.25,
                        help="fraction of samples missing each modality (the missing-modality paths are timed too)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    dims = {"image": args.widths[0], "text": args.widths[1]}
    registry = get_plugins().registry("fusion")
    names = ["concat"] + [name for name in registry.names() if name != "concat"]
    fusions = {name: registry.get(name).build(dims).to(device) for name in names}
    features = {m: torch.randn(args.batch, d, device=device, requires_grad=True) for m, d in dims.items()}
    present = {m: torch.rand(args.batch, device=device) >= args.absent for m in dims}

    for _ in range(args.warmup):
        for fusion in fusions.values():
            step(fusion, features, present)
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(args.repeats):
        for name, fusion in fusions.items():
            fusion.zero_grad(set_to_none=True)
            synchronize(device)
            started = time.perf_counter()
            step(fusion, features, present)
            synchronize(device)
            times[name].append(time.perf_counter() - started)

    medians = {name: statistics.median(values) for name, values in times.items()}
    rows = {
        name: {
            "ms": round(medians[name] * 1e3, 3),
            "ratio_to_concat": round(medians[name] / medians["concat"], 2),
            "params": sum(p.numel() for p in fusions[name].parameters()),
            "provider": registry.get(name).distribution,
        }
        for name in names
    }
    print(f"{'operator':<20}{'ms':>10}{'x concat':>10}{'params':>12}")
    for name, row in rows.items():
        print(f"{name:<20}{row['ms']:>10.3f}{row['ratio_to_concat']:>10.2f}{row['params']:>12,}")
    print(json.dumps({
        "benchmark": "fusion_cost",
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "threads": args.threads,
        "batch": args.batch,
        "widths": dims,
        "absent": args.absent,
        "repeats": args.repeats,
        "statistic": "median forward+backward time, ratio to concat measured in the same run",
        "operators": rows,
    }))


if __name__ == "__main__":
    main()
