"""Behavior model with a history against its 1-step self and the simple baselines.

    python bench/behavior_history.py --data DIR [--out runs/behavior_history] [--seed 0]
        [--variant gate=gru --variant noise_levels=0 ...]

Trains the behavior model with the default configs on the logs in DIR (a folder with
``foresight_spec.json``, e.g. made by ``generate_episodes(..., policy="mixed")``), the
same model with a context of 1 step, and one model per ``--variant`` (config fields
changed from the default, comma-separated), all on the same split and seed. Evaluates the
default model on the held-out episodes with every other model as an extra baseline, next
to the marginal and repeat-last baselines, and prints one JSON object with the NLL ratios
to the best simple baseline and to the 1-step model (the targets are in BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import fields, replace
from pathlib import Path

# Run as ``python bench/<script>.py``: the repository root on the path makes ``bench.*`` importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.end_to_end import behavior_targets, load_dataset
from foresight.training.evaluation.evaluate import evaluate
from foresight.training.loop.train import TrainConfig, train
from foresight.training.models.behavior_model import BehaviorModelConfig


def parse_variant(text: str) -> dict[str, object]:
    """``"gate=gru,noise_levels=0"`` -> config overrides, typed like the default's fields."""
    default = BehaviorModelConfig()
    types = {f.name: type(getattr(default, f.name)) for f in fields(default)}
    out: dict[str, object] = {}
    for item in filter(None, text.split(",")):
        name, _, value = item.partition("=")
        if name not in types or name in ("spec", "architecture"):
            raise SystemExit(f"--variant: unknown behavior config field {name!r}")
        cast = types[name]
        out[name] = value.lower() in ("1", "true") if cast is bool else cast(value)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="logs folder with foresight_spec.json")
    parser.add_argument("--out", default="runs/behavior_history", help="checkpoint folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variant", action="append", default=[], help="e.g. gate=gru")
    args = parser.parse_args()

    frame, spec = load_dataset(args.data)
    config = TrainConfig(seed=args.seed)
    base = BehaviorModelConfig()
    models = {"history": base, "context1": replace(base, context=1)}
    models |= {v: replace(base, **parse_variant(v)) for v in args.variant}
    trained, summary = {}, {"train_seconds": {}, "epochs_run": {}, "best_epoch": {}}
    for name, model_config in models.items():
        started = time.perf_counter()
        result = train("behavior", frame, spec, config, model_config, Path(args.out) / name)
        summary["train_seconds"][name] = round(time.perf_counter() - started, 1)
        summary["epochs_run"][name] = len(result.history)
        summary["best_epoch"][name] = result.best_epoch
        trained[name] = result
    history = trained.pop("history")
    assert all(r.val_episode_ids == history.val_episode_ids for r in trained.values())
    ev = evaluate(
        "behavior",
        history.model,
        frame,
        spec,
        history.val_episode_ids,
        extra_baselines={name: r.model for name, r in trained.items()},
        seed=args.seed,
    )
    model, baselines = ev["model"], ev["baselines"]
    ratios = behavior_targets(model, baselines)
    summary |= {
        "episodes": {
            "train": len(history.train_episode_ids),
            "evaluation": len(history.val_episode_ids),
        },
        "model": model,
        "baselines": baselines,
        "targets": {
            "nll_below_best_simple_baseline": round(1 - ratios["behavior_nll_vs_best_baseline"], 4),
            "nll_vs_context1": round(ratios["behavior_nll_vs_context1"], 4),
            "met": ratios["behavior_nll_vs_best_baseline"] <= 0.7
            and ratios["behavior_nll_vs_context1"] < 1,
        },
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
