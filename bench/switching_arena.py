"""Closed loop among partners that change: one anticipatory agent among switching partners.

    python bench/switching_arena.py --out runs/switching [--episodes 200] [--epochs 50]

Uses what ``bench/behavior_switching.py --out OUT`` left there (the switching logs in
``OUT/data-switching`` and the behavior models ``OUT/switching/model.pt``, trained on
switching logs, and ``OUT/mixed/model.pt``, trained where styles never change), trains a
world model with the default config on the switching logs (``TrainConfig`` defaults but
``--epochs``; kept in ``OUT/world/model.pt``), then plays simple_spread with the first agent
driven by each controller and the other two by the ``switching`` policy: greedy, random,
scripted anticipation, the planner with the switching-trained behavior model, and the
planner with the mixed-trained one (a model that ignores switches). Prints and writes
``OUT/switching-arena.json``: mean team return and 95% interval per team, same seeds, and
95% intervals of the paired per-episode differences.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.end_to_end import load_dataset
from foresight.training.agents.arena import ci95, run_arena
from foresight.training.loop.train import TrainConfig, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/switching")
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    parser.add_argument("--seed", type=int, default=100)
    args = parser.parse_args()
    out = Path(args.out)
    world_path = out / "world" / "model.pt"
    info = {}
    if world_path.exists():
        world = torch.load(world_path, weights_only=False)
    else:
        frame, spec = load_dataset(out / "data-switching")
        started = time.perf_counter()
        result = train("world", frame, spec, TrainConfig(epochs=args.epochs), None, out / "world")
        info["world_train_seconds"] = round(time.perf_counter() - started, 1)
        world = result.model
        torch.save(world, world_path)
    behavior = {
        n: torch.load(out / n / "model.pt", weights_only=False) for n in ("switching", "mixed")
    }
    teams = {}
    started = time.perf_counter()
    base = run_arena(
        "simple_spread",
        args.episodes,
        ["random", "greedy", "scripted-anticipation", "anticipatory"],
        args.seed,
        world=world,
        behavior=behavior["switching"],
        partners="switching",
    )
    teams |= base["controllers"]
    ignoring = run_arena(
        "simple_spread",
        args.episodes,
        ["anticipatory"],
        args.seed,
        world=world,
        behavior=behavior["mixed"],
        partners="switching",
    )
    teams["anticipatory (mixed-trained behavior)+switching"] = ignoring["controllers"][
        "anticipatory+switching"
    ]
    paired = {}  # same start states and partner draws: per-episode differences
    for a, b in (
        ("anticipatory+switching", "greedy+switching"),
        ("anticipatory+switching", "anticipatory (mixed-trained behavior)+switching"),
        ("scripted-anticipation+switching", "greedy+switching"),
    ):
        diff = np.subtract(teams[a]["returns"], teams[b]["returns"])
        paired[f"{a} - {b}"] = {"mean": float(diff.mean()), "ci95": ci95(diff)}
    result = {
        "episodes": args.episodes,
        "seed": args.seed,
        "arena_seconds": round(time.perf_counter() - started, 1),
        "load_average": os.getloadavg(),
        **info,
        "teams": {
            t: {"mean_return": r["mean_return"], "ci95": r["ci95"], "returns": r["returns"]}
            for t, r in teams.items()
        },
        "paired": paired,
    }
    (out / "switching-arena.json").write_text(json.dumps(result, indent=1))
    for t, r in teams.items():
        lo, hi = r["ci95"]
        print(f"{t:50s} {r['mean_return']:8.2f}  [{lo:.2f}, {hi:.2f}]")
    for name, d in paired.items():
        print(f"{name}: {d['mean']:.2f} [{d['ci95'][0]:.2f}, {d['ci95'][1]:.2f}]")
    print({k: v for k, v in result.items() if k not in ("teams", "paired")})


if __name__ == "__main__":
    main()
