"""Closed-loop return of the current planner against an older one, on the same episodes.

    .venv/bin/python bench/plan_compare.py --store .foresight --baseline c781ea7 --episodes 300

Loads ``world`` and ``behavior`` from the store's registry (``--world``/``--behavior`` for
other refs), plays simple_spread with every agent driven by the planner of git revision
``--baseline`` (its training/agents/planning.py) and by the current one (default
``PlannerConfig`` each), same episode seeds, and prints both means with 95% intervals and the
paired difference's.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.plan_latency import load_baseline
from foresight.datasets import Store
from foresight.training.agents import planning
from foresight.training.agents.arena import AnticipatoryController, run_arena
from foresight.training.registry import load_registered


def ci95(x: np.ndarray) -> tuple[float, float, float]:
    half = 1.96 * x.std(ddof=1) / np.sqrt(len(x))
    return float(x.mean()), float(x.mean() - half), float(x.mean() + half)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--store", default=".foresight")
    p.add_argument("--world", default="world")
    p.add_argument("--behavior", default="behavior")
    p.add_argument("--baseline", required=True, help="git revision of the planner to compare")
    p.add_argument("--episodes", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    store = Store(args.store)
    world, wmv = load_registered(args.world, store)
    behavior, bmv = load_registered(args.behavior, store)

    def factory(module):
        def build(env, models):
            cfg = module.PlannerConfig()
            return AnticipatoryController(module.Planner(world, behavior, cfg, wmv.card, bmv.card))

        return build

    teams = {"before": factory(load_baseline(args.baseline)), "after": factory(planning)}
    print(f"load average {os.getloadavg()[0]:.2f} (start); {wmv.ref} + {bmv.ref}")
    r = run_arena(
        "simple_spread",
        args.episodes,
        list(teams),
        seed=args.seed,
        world=world,
        behavior=behavior,
        factories=teams,
        progress=True,
    )
    returns = {t: np.array(r["controllers"][t]["returns"]) for t in teams}
    print("| planner | mean team return | 95% CI |\n|---|---:|---|")
    for name, x in [*returns.items(), ("after - before", returns["after"] - returns["before"])]:
        m, lo, hi = ci95(x)
        print(f"| {name} | {m:.2f} | [{lo:.2f}, {hi:.2f}] |")
    print(f"load average {os.getloadavg()[0]:.2f} (end)")


if __name__ == "__main__":
    main()
