"""World model with and without its std calibration, on the same trained model.

    python bench/world_calibration.py --data DIR [--out runs/world_calibration] [--seed 0]

Trains the world model with the default configs on the logs in DIR (a folder with
``foresight_spec.json``, e.g. made by ``generate_episodes(..., policy="mixed")``), then
evaluates it on the held-out episodes (validation minus the calibration half) twice: with
the fitted per-feature std factors and with them reset to 1. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

# Run as ``python bench/<script>.py``: the repository root on the path makes ``bench.*`` importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.end_to_end import load_dataset, world_targets
from foresight.training.evaluation.evaluate import evaluate
from foresight.training.loop.train import TrainConfig, train

HEADLINE = ("mse", "rollout_mse_10", "coverage_90", "nll")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="logs folder with foresight_spec.json")
    parser.add_argument("--out", default="runs/world_calibration", help="checkpoint folder")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    frame, spec = load_dataset(args.data)
    started = time.perf_counter()
    result = train("world", frame, spec, TrainConfig(seed=args.seed), None, args.out)
    summary = {
        "train_seconds": round(time.perf_counter() - started, 1),
        "epochs_run": len(result.history),
        "best_epoch": result.best_epoch,
        "episodes": {
            "train": len(result.train_episode_ids),
            "calibration": len(result.calib_episode_ids),
            "evaluation": len(result.heldout_episode_ids),
        },
        "std_scale": [round(x, 3) for x in result.model.std_scale.tolist()],
    }
    for name in ("calibrated", "raw"):
        if name == "raw":
            result.model.std_scale.fill_(1.0)
        ev = evaluate(
            "world",
            result.model,
            frame,
            spec,
            result.heldout_episode_ids,
            train_episode_ids=result.train_episode_ids,
            seed=args.seed,
        )
        model, baselines = ev["model"], ev["baselines"]
        summary[name] = {k: model[k] for k in HEADLINE} | world_targets(model, baselines)
    summary["baselines"] = {k: {m: v[m] for m in HEADLINE if m in v} for k, v in baselines.items()}
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
