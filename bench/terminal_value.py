"""What the world model's value head is worth to the planner: the same models, with and without it.

    FORESIGHT_STORE=<store> python bench/terminal_value.py --env simple_tag \
        --world world@2 --behavior behavior@1 [--episodes 200] [--out FILE]

Plays the anticipatory team twice on the same start states (arena seed 0) with the same
registered models: with the default ``PlannerConfig`` (``terminal_value=True``: plans are
scored by the predicted rewards of the horizon plus the value head at its end) and with
``terminal_value=False`` (the predicted rewards only). Prints each run's mean team return
with its 95% interval and writes them as JSON. The world model must have a value head
(``WorldModelConfig.value_steps`` > 0), or the two runs are the same.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from foresight.datasets.storage import Store
from foresight.training.agents.arena import run_arena
from foresight.training.agents.planning import PlannerConfig
from foresight.training.registry import load_registered


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="simple_spread")
    parser.add_argument("--world", default="world@production")
    parser.add_argument("--behavior", default="behavior@production")
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--obs-radius", type=float, default=None)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()
    store = Store.from_env()
    world, wmv = load_registered(args.world, store, kind="world")
    behavior, bmv = load_registered(args.behavior, store, kind="behavior")
    if getattr(world, "value_head", None) is None:
        raise SystemExit(f"{wmv.ref} has no value head: both runs would be the same")
    runs = {}
    for terminal_value in (True, False):
        started = time.perf_counter()
        result = run_arena(
            args.env,
            args.episodes,
            ["anticipatory"],
            seed=0,
            world=world,
            behavior=behavior,
            planner_config=PlannerConfig(terminal_value=terminal_value),
            world_card=wmv.card,
            behavior_card=bmv.card,
            obs_radius=args.obs_radius,
        )
        team = result["controllers"]["anticipatory"]
        runs[f"terminal_value={terminal_value}"] = {
            "mean": team["mean_return"],
            "ci95": team["ci95"],
            "seconds": round(time.perf_counter() - started, 1),
        }
        lo, hi = team["ci95"]
        print(
            f"terminal_value={terminal_value!s:5s}  {team['mean_return']:8.2f} [{lo:.2f}, {hi:.2f}]"
        )
    report = {
        "env": args.env,
        "episodes": args.episodes,
        "obs_radius": args.obs_radius,
        "models": {"world": wmv.ref, "behavior": bmv.ref},
        "runs": runs,
        "load_average": os.getloadavg(),
    }
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
