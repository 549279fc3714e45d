"""End-to-end benchmark: data -> world model, behavior model (+ its 1-step variant) ->
evaluation next to baselines -> reports and a summary with wall times and throughput.

    python bench/end_to_end.py --episodes 2000 --seed 0 --out runs/benchmark
    python bench/end_to_end.py --data path/to/logs_dir --out runs/bench_logs

Without ``--data`` it records simple_spread episodes under the mixed scripted policy with
``foresight.datasets.sources.generate`` (cached in ``OUT/data``). Prints the summary as JSON and
writes it to ``OUT/summary.json``; reports go to ``OUT/world`` and ``OUT/behavior``.
The other bench scripts import its helpers (data loading, timed training, targets, options).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import polars as pl
import torch

from foresight.datasets.schema import SPEC_FILENAME, DatasetSpec
from foresight.training.evaluation.evaluate import evaluate, write_report
from foresight.training.loop.train import TrainConfig, TrainResult, train
from foresight.training.models.behavior_model import BehaviorModelConfig
from foresight.training.models.world_model import WorldModelConfig


def load_dataset(path: str | Path) -> tuple[pl.DataFrame, DatasetSpec]:
    """A folder of JSONL (.jsonl / .jsonl.gz) or Parquet logs with ``foresight_spec.json``."""
    path = Path(path)
    spec_path = path / SPEC_FILENAME if path.is_dir() else path.parent / SPEC_FILENAME
    if not spec_path.exists():
        raise FileNotFoundError(f"no {SPEC_FILENAME} beside the logs in {path}")
    spec = DatasetSpec.from_json(spec_path.read_text())
    files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
    if files and files[0].suffix == ".parquet":
        frame = pl.concat([pl.read_parquet(f) for f in files], how="diagonal_relaxed")
    else:
        files = sorted(path.glob("*.jsonl")) + sorted(path.glob("*.jsonl.gz"))
        if not files:
            raise FileNotFoundError(f"no .jsonl, .jsonl.gz or .parquet logs in {path}")
        frame = pl.concat([pl.read_ndjson(f) for f in files], how="diagonal_relaxed")
    return frame, spec


def _timed_train(
    kind: str, frame, spec, config: TrainConfig, model_config, workdir
) -> tuple[TrainResult, float]:
    start = time.perf_counter()
    result = train(kind, frame, spec, config, model_config, workdir=workdir)
    return result, time.perf_counter() - start


def _throughput(result: TrainResult) -> dict[str, float]:
    hist = result.history
    return {
        "epochs": len(hist),
        "best_epoch": result.best_epoch,
        "train_samples_per_s": sum(h["perf/train_samples_per_s"] for h in hist) / len(hist),
        "data_loading_fraction": sum(h["perf/data_fraction"] for h in hist) / len(hist),
    }


def measure_training(
    out: str | Path,
    data: str | None = None,
    episodes: int = 2000,
    seed: int = 0,
    kinds: tuple[str, ...] = ("world", "behavior"),
    train_config: TrainConfig | None = None,
) -> dict[str, Any]:
    """Train each model kind with its default config and report the training throughput:
    labels per second and the share of step time spent gathering batches (no evaluation)."""
    out = Path(out)
    frame, spec = load_dataset(data or _generated(out, episodes, seed))
    config = train_config or TrainConfig(seed=seed)
    configs = {"world": WorldModelConfig(), "behavior": BehaviorModelConfig()}
    report: dict[str, Any] = {
        "data": {"episodes": frame["episode_id"].n_unique(), "rows": frame.height},
        "torch_threads": torch.get_num_threads(),
        "train": asdict(config),
    }
    for kind in kinds:
        result, seconds = _timed_train(
            kind, frame, spec, config, configs[kind], out / f"train_{kind}"
        )
        epoch_s = sorted(h["time/epoch_s"] for h in result.history)
        report[kind] = {
            **_throughput(result),
            "device": str(next(result.model.parameters()).device),
            "wall_s": seconds,
            "fastest_epoch_s": epoch_s[0],
            "median_epoch_s": epoch_s[len(epoch_s) // 2],
            "peak_train_samples_per_s": max(h["perf/train_samples_per_s"] for h in result.history),
        }
    (out / "training_throughput.json").write_text(json.dumps(report, indent=2))
    return report


def _generated(out: Path, episodes: int, seed: int) -> str:
    """Mixed-policy simple_spread logs under ``out/data`` (generated once, then reused)."""
    from foresight.datasets.sources.generate import generate_episodes

    data_dir = out / "data"
    if not (data_dir / SPEC_FILENAME).exists():
        generate_episodes(
            env="simple_spread", episodes=episodes, policy="mixed", out=str(data_dir), seed=seed
        )
    return str(data_dir)


def run(
    out: str | Path,
    data: str | None = None,
    episodes: int = 2000,
    seed: int = 0,
    world_config: WorldModelConfig | None = None,
    behavior_config: BehaviorModelConfig | None = None,
    train_config: TrainConfig | None = None,
) -> dict[str, Any]:
    out = Path(out)
    data = data or _generated(out, episodes, seed)
    frame, spec = load_dataset(data)
    config = train_config or TrainConfig(seed=seed)
    world_config = world_config or WorldModelConfig()
    behavior_config = behavior_config or BehaviorModelConfig()

    world, world_s = _timed_train("world", frame, spec, config, world_config, out / "train_world")
    behavior, behavior_s = _timed_train(
        "behavior", frame, spec, config, behavior_config, out / "train_behavior"
    )
    one_step, one_step_s = _timed_train(
        "behavior",
        frame,
        spec,
        config,
        replace(behavior_config, context=1),
        out / "train_behavior_ctx1",
    )
    assert world.val_episode_ids == behavior.val_episode_ids == one_step.val_episode_ids

    start = time.perf_counter()
    world_eval = evaluate(
        "world",
        world.model,
        frame,
        spec,
        world.heldout_episode_ids,
        behavior=behavior.model,
        seed=seed,
    )
    behavior_eval = evaluate(
        "behavior",
        behavior.model,
        frame,
        spec,
        behavior.val_episode_ids,
        extra_baselines={"context1": one_step.model},
        seed=seed,
    )
    eval_s = time.perf_counter() - start
    write_report(world_eval, world.history, out / "world")
    write_report(
        behavior_eval,
        {"behavior": behavior.history, "context1": one_step.history},
        out / "behavior",
    )

    wm, wb = world_eval["model"], world_eval["baselines"]
    bm, bb = behavior_eval["model"], behavior_eval["baselines"]
    summary = {
        "data": {
            "source": data,
            "episodes": frame["episode_id"].n_unique(),
            "rows": frame.height,
            "seed": seed,
            "val_episodes": len(world.val_episode_ids),
            "world_eval_episodes": len(world.heldout_episode_ids),
        },
        "device": str(next(world.model.parameters()).device),
        "torch_threads": torch.get_num_threads(),
        "wall_s": {
            "world": world_s,
            "behavior": behavior_s,
            "behavior_context1": one_step_s,
            "evaluation": eval_s,
        },
        "throughput": {
            "world": _throughput(world),
            "behavior": _throughput(behavior),
            "behavior_context1": _throughput(one_step),
        },
        "world": world_eval["model"],
        "world_baselines": world_eval["baselines"],
        "behavior": behavior_eval["model"],
        "behavior_baselines": behavior_eval["baselines"],
        "targets": {
            **world_targets(wm, wb),
            **behavior_targets(bm, bb),
        },
        "configs": {
            "train": asdict(config),
            "world": {k: v for k, v in asdict(world.model_config).items() if k != "spec"},
            "behavior": {k: v for k, v in asdict(behavior.model_config).items() if k != "spec"},
        },
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def world_targets(model: dict[str, float], baselines: dict[str, dict]) -> dict[str, Any]:
    """The world model's headline ratios to its baselines (MSE, 10-step rollout) and its 90%
    coverage, from one evaluation's ``model`` and ``baselines``; targets in BENCHMARKS.md."""
    rollouts = [b["rollout_mse_10"] for b in baselines.values()]
    return {
        "world_mse_vs_persistence": model["mse"] / baselines["persistence"]["mse"],
        "world_mse_vs_linear": model["mse"] / baselines["linear"]["mse"],
        "rollout10_below_every_baseline": all(model["rollout_mse_10"] < r for r in rollouts),
        "rollout10_vs_best_baseline": model["rollout_mse_10"] / min(rollouts),
        "coverage_90": model["coverage_90"],
    }


def behavior_targets(model: dict[str, float], baselines: dict[str, dict]) -> dict[str, float]:
    """The behavior model's NLL ratios from one evaluation's ``model`` and ``baselines``:
    against the best simple baseline (marginal, repeat-last) and against the same model
    with a context of 1 step (``baselines["context1"]``); targets in BENCHMARKS.md."""
    best_simple = min(baselines["marginal"]["nll"], baselines["repeat_last"]["nll"])
    return {
        "behavior_nll_vs_best_baseline": model["nll"] / best_simple,
        "behavior_nll_vs_context1": model["nll"] / baselines["context1"]["nll"],
    }


def benchmark_parser(doc: str, out: str) -> argparse.ArgumentParser:
    """The options every training benchmark takes: where, which data, seed, device."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--out", default=out, help="output folder")
    parser.add_argument("--data", default=None, help="logs folder (default: generate)")
    parser.add_argument("--episodes", type=int, default=2000, help="episodes to generate")
    parser.add_argument("--seed", type=int, default=0, help="data and training seed")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = benchmark_parser(__doc__, "runs/benchmark")
    parser.add_argument("--epochs", type=int, default=None, help="override TrainConfig.epochs")
    args = parser.parse_args(argv)
    config = TrainConfig(seed=args.seed, device=args.device)
    if args.epochs is not None:
        config = replace(config, epochs=args.epochs)
    summary = run(args.out, args.data, args.episodes, args.seed, train_config=config)
    print(
        json.dumps({k: summary[k] for k in ("data", "wall_s", "throughput", "targets")}, indent=2)
    )


if __name__ == "__main__":
    main()
