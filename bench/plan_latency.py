"""Planner decision latency at default sizes, untrained (same compute as trained) models.

One `Planner.decide` for all 3 simple_spread agents, default PlannerConfig (H, K), CPU.

    .venv/bin/python bench/plan_latency.py
"""

import time

import numpy as np
import torch

from serving.testing import spread_spec
from training.behavior_model import BehaviorModel, BehaviorModelConfig
from training.planning import JointHistory, Planner, PlannerConfig
from training.world_model import WorldModel, WorldModelConfig

torch.manual_seed(0)
spec = spread_spec().to_dict()
for wcfg in [dict(), dict(d_model=64)]:
    world = WorldModel(WorldModelConfig(spec=spec, **wcfg)).eval()
    beh = BehaviorModel(BehaviorModelConfig(spec=spec)).eval()
    planner = Planner(world, beh, PlannerConfig())
    T = beh.context  # a full window of history
    rng = np.random.default_rng(0)
    h = JointHistory(
        agent_ids=["agent_0", "agent_1", "agent_2"],
        obs=rng.normal(size=(T, 3, 18)).astype(np.float32),
        prev_actions=rng.integers(0, 5, size=(T, 3)),
        start_step=4,
    )
    for _ in range(3):
        planner.decide(h, h.agent_ids)
    ts = []
    for _ in range(30):
        t = time.perf_counter()
        planner.decide(h, h.agent_ids)
        ts.append(time.perf_counter() - t)
    print(
        wcfg or "default (d_model 128)",
        "threads",
        torch.get_num_threads(),
        f"median ms {1000 * np.median(ts):.1f} p90 {1000 * np.percentile(ts, 90):.1f}",
    )
