"""Planner decision latency against the number of agents, at the default model sizes.

One `Planner.decide` for all N simple_spread agents (every agent an ego, as the arena's
anticipatory team plans), default PlannerConfig (H, K), CPU. The models are randomly
initialised with the default architecture for simple_spread's spec at each N: latency
does not depend on the weights, only on the sizes.

    .venv/bin/python bench/plan_latency.py --agents 3,6,10 --threads 2
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from foresight.datasets.schema import ActionSpec, DatasetSpec  # noqa: E402
from foresight.training.agents.planning import JointHistory, Planner, PlannerConfig  # noqa: E402
from foresight.training.models.behavior_model import BehaviorModel, BehaviorModelConfig  # noqa: E402
from foresight.training.models.world_model import WorldModel, WorldModelConfig  # noqa: E402


def spread_spec(n_agents: int) -> DatasetSpec:
    """simple_spread's spec for N agents (mpe2: self vel/pos, N landmarks, N-1 others, comm)."""
    size = 4 + 2 * n_agents + 2 * (n_agents - 1) + 2 * (n_agents - 1)
    agents = {f"agent_{i}": size for i in range(n_agents)}
    return DatasetSpec(env="simple_spread_v3", agents=agents, action=ActionSpec("discrete", n=5))


WORLDS = {"default": {}, "d64": {"d_model": 64}}
"""World model sizes: the default (d_model 128) and the arena's (bench/plan.py, 64)."""


def measure(
    n_agents: int, world_cfg: dict, repeats: int, planner_cfg: PlannerConfig
) -> list[float]:
    """Seconds of each of ``repeats`` decisions for all ``n_agents`` agents (after warm-up)."""
    torch.manual_seed(0)
    spec = spread_spec(n_agents)
    D = max(spec.agents.values())
    world = WorldModel(WorldModelConfig(spec=spec.to_dict(), **world_cfg)).eval()
    beh = BehaviorModel(BehaviorModelConfig(spec=spec.to_dict())).eval()
    planner = Planner(world, beh, planner_cfg)
    T = beh.context  # a full window of history
    rng = np.random.default_rng(0)
    h = JointHistory(
        agent_ids=list(spec.agents),
        obs=rng.normal(size=(T, n_agents, D)).astype(np.float32),
        prev_actions=rng.integers(0, 5, size=(T, n_agents)),
        start_step=4,
    )
    for _ in range(3):
        planner.decide(h, h.agent_ids)
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        planner.decide(h, h.agent_ids)
        ts.append(time.perf_counter() - t)
    return ts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--agents", default="3,6,10", help="comma-separated agent counts N")
    p.add_argument("--worlds", default="default,d64", help=f"world sizes among {list(WORLDS)}")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--repeats", type=int, default=30, help="timed decisions per setting")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"threads {torch.get_num_threads()}  load average {os.getloadavg()[0]:.2f} (start)")
    print("| world | N | median ms | p90 ms | ms per agent |")
    print("|---|---|---|---|---|")
    for name in args.worlds.split(","):
        for n in (int(x) for x in args.agents.split(",")):
            ts = 1000 * np.array(measure(n, WORLDS[name], args.repeats, PlannerConfig()))
            med = float(np.median(ts))
            print(
                f"| {name} | {n} | {med:.1f} | {np.percentile(ts, 90):.1f} | {med / n:.1f} |",
                flush=True,
            )
    print(f"load average {os.getloadavg()[0]:.2f} (end)")


if __name__ == "__main__":
    main()
