"""Training throughput: labels/s and the share of step time spent loading data.

Trains the world and behavior models with their default configs (``foresight train``'s)
on mixed-policy simple_spread logs and prints, per model, the mean and peak training
samples/s (world: windows; behavior: labelled actions), the data-loading share of step
time (target: under 10%) and epoch times. No evaluation: for model quality next to the
baselines run ``bench/end_to_end.py``.

    .venv/bin/python bench/train.py --data DIR --out runs/bench_train [--epochs 3]
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

# Run as ``python bench/<script>.py``: the repository root on the path makes ``bench.*`` importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.end_to_end import benchmark_parser, measure_training
from foresight.training.loop.train import TrainConfig


def main(argv: list[str] | None = None) -> None:
    parser = benchmark_parser(__doc__, "runs/bench_train")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per model")
    parser.add_argument("--kinds", default="world,behavior", help="models to train")
    args = parser.parse_args(argv)
    config = replace(TrainConfig(seed=args.seed, device=args.device), epochs=args.epochs)
    report = measure_training(
        args.out, args.data, args.episodes, args.seed, tuple(args.kinds.split(",")), config
    )
    print(json.dumps(report, indent=2))
    print("\n| model | device | median epoch | mean samples/s | peak samples/s | data share |")
    print("|---|---|---:|---:|---:|---:|")
    for kind in args.kinds.split(","):
        r = report[kind]
        print(
            f"| {kind} | {r['device']} | {r['median_epoch_s']:.1f} s "
            f"| {r['train_samples_per_s']:,.0f} | {r['peak_train_samples_per_s']:,.0f} "
            f"| {100 * r['data_loading_fraction']:.1f}% |"
        )


if __name__ == "__main__":
    main()
