"""Planner decision latency against the number of agents, at the default model sizes.

One `Planner.decide` for all N simple_spread agents (every agent an ego, as the arena's
anticipatory team plans), default PlannerConfig (H, K), CPU. The models are randomly
initialised with the default architecture for simple_spread's spec at each N: latency
does not depend on the weights, only on the sizes.

    .venv/bin/python bench/plan_latency.py --agents 3,6,10 --threads 2
    .venv/bin/python bench/plan_latency.py --baseline c781ea7   # against an older planner

``--baseline REF`` times the planner of that git revision (its training/agents/planning.py)
alternately with the current one on the same models and history, so the ratio holds on a
shared machine whose load moves between runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from foresight.datasets.schema import ActionSpec, DatasetSpec
from foresight.training.agents.planning import JointHistory, Planner, PlannerConfig
from foresight.training.models.behavior_model import BehaviorModel, BehaviorModelConfig
from foresight.training.models.world_model import WorldModel, WorldModelConfig


def spread_spec(n_agents: int) -> DatasetSpec:
    """simple_spread's spec for N agents (mpe2: self vel/pos, N landmarks, N-1 others, comm)."""
    size = 4 + 2 * n_agents + 2 * (n_agents - 1) + 2 * (n_agents - 1)
    agents = {f"agent_{i}": size for i in range(n_agents)}
    return DatasetSpec(env="simple_spread_v3", agents=agents, action=ActionSpec("discrete", n=5))


WORLDS = {"default": {}, "d64": {"d_model": 64}}
"""World model sizes: the default (d_model 128) and the arena's (bench/plan.py, 64)."""


def load_baseline(ref: str):
    """The planning module of git revision ``ref``, imported under its own name."""
    root = Path(__file__).resolve().parents[1]
    src = subprocess.run(
        ["git", "show", f"{ref}:training/agents/planning.py"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    path = Path(tempfile.mkdtemp()) / "planning_baseline.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("planning_baseline", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["planning_baseline"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def measure(
    n_agents: int, world_cfg: dict, repeats: int, planner_cfg: dict, baseline=None
) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """(wall, process CPU) seconds of each of ``repeats`` decisions for all ``n_agents``
    agents (after warm-up), for the current planner and (alternating with it) the
    ``baseline`` module's. CPU time moves less than wall time with other load on the
    machine (it still grows when the cores' caches are shared)."""
    torch.manual_seed(0)
    spec = spread_spec(n_agents)
    D = max(spec.agents.values())
    world = WorldModel(WorldModelConfig(spec=spec.to_dict(), **world_cfg)).eval()
    beh = BehaviorModel(BehaviorModelConfig(spec=spec.to_dict())).eval()
    planners = [Planner(world, beh, PlannerConfig(**planner_cfg))]
    if baseline is not None:
        planners.append(baseline.Planner(world, beh, baseline.PlannerConfig()))
    T = beh.context  # a full window of history
    rng = np.random.default_rng(0)
    h = JointHistory(
        agent_ids=list(spec.agents),
        obs=rng.normal(size=(T, n_agents, D)).astype(np.float32),
        prev_actions=rng.integers(0, 5, size=(T, n_agents)),
        start_step=4,
    )
    for planner in planners:
        for _ in range(3):
            planner.decide(h, h.agent_ids)
    ts: list[list[tuple[float, float]]] = [[] for _ in planners]
    for _ in range(repeats):
        for planner, out in zip(planners, ts, strict=True):
            t, c = time.perf_counter(), time.process_time()
            planner.decide(h, h.agent_ids)
            out.append((time.perf_counter() - t, time.process_time() - c))
    return ts[0], (ts[1] if baseline is not None else [])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--agents", default="3,6,10", help="comma-separated agent counts N")
    p.add_argument("--worlds", default="default,d64", help=f"world sizes among {list(WORLDS)}")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--repeats", type=int, default=30, help="timed decisions per setting")
    p.add_argument("--precision", default="auto", help="PlannerConfig.precision")
    p.add_argument("--samples", type=int, default=None, help="PlannerConfig.n_samples (K)")
    p.add_argument("--baseline", default=None, help="git revision whose planner to time too")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    baseline = load_baseline(args.baseline) if args.baseline else None
    print(f"threads {torch.get_num_threads()}  load average {os.getloadavg()[0]:.2f} (start)")
    print(
        f"precision {args.precision}; K {args.samples or 'default'}; baseline {args.baseline or '-'}"
    )
    print(
        "| world | N | median ms | p90 ms | ms per agent | CPU ms | baseline median ms "
        "| baseline CPU ms | speed-up (wall) | speed-up (CPU) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in args.worlds.split(","):
        for n in (int(x) for x in args.agents.split(",")):
            cfg = {"precision": args.precision}
            if args.samples is not None:
                cfg["n_samples"] = args.samples
            now, before = measure(n, WORLDS[name], args.repeats, cfg, baseline)
            wall, cpu = (1000 * np.array(x) for x in zip(*now, strict=True))
            med, cmed = float(np.median(wall)), float(np.median(cpu))
            row = f"| {name} | {n} | {med:.1f} | {np.percentile(wall, 90):.1f} | {med / n:.1f} "
            row += f"| {cmed:.1f} "
            if before:
                bwall, bcpu = (1000 * np.array(x) for x in zip(*before, strict=True))
                bmed, bcmed = float(np.median(bwall)), float(np.median(bcpu))
                row += f"| {bmed:.1f} | {bcmed:.1f} | {bmed / med:.2f}x | {bcmed / cmed:.2f}x |"
            else:
                row += "| | | | |"
            print(row, flush=True)
    print(f"load average {os.getloadavg()[0]:.2f} (end)")


if __name__ == "__main__":
    main()
