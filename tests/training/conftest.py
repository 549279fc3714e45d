"""Tiny synthetic multi-agent data for the training tests (fast, no simulator needed)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from foresight.datasets.schema import ActionSpec, DatasetSpec

MOVES = np.array([[0, 0], [-1, 0], [1, 0], [0, -1], [0, 1]], dtype=np.float32)
"""Discrete action -> push direction (MPE's order: noop, -x, +x, -y, +y)."""


def make_frame(
    episodes: int = 24,
    agents: int = 3,
    steps: int = 12,
    seed: int = 0,
    obs_sizes: dict[str, int] | None = None,
    absent: dict[str, tuple[int, int]] | None = None,
    env: str = "synthetic",
) -> tuple[pl.DataFrame, DatasetSpec]:
    """Point masses: obs = [vel(2), pos(2), zeros...]; vel' = 0.7 vel + 0.3 push(action) +
    a repulsion from the nearest other agent; pos' = pos + 0.1 vel. Each agent has a style:
    a preferred action taken with probability 1 - eps, else a random one.

    ``absent``: agent -> (first, last) steps during which it has no rows.
    """
    rng = np.random.default_rng(seed)
    names = [f"agent_{i}" for i in range(agents)]
    sizes = obs_sizes or dict.fromkeys(names, 4)
    rows: dict[str, list] = {
        k: [] for k in ("episode_id", "step", "agent_id", "obs", "action", "reward")
    }
    for ep in range(episodes):
        pos = rng.uniform(-1, 1, (agents, 2)).astype(np.float32)
        vel = np.zeros((agents, 2), np.float32)
        pref = rng.integers(0, 5, agents)
        eps = rng.uniform(0.0, 0.5, agents)
        for t in range(steps):
            act = np.where(rng.random(agents) < eps, rng.integers(0, 5, agents), pref)
            for i, name in enumerate(names):
                lo, hi = (absent or {}).get(name, (-1, -2))
                if lo <= t <= hi:
                    continue
                obs = np.zeros(sizes[name], np.float32)
                obs[:2], obs[2:4] = vel[i], pos[i]
                rows["episode_id"].append(f"ep{ep:03d}")
                rows["step"].append(t)
                rows["agent_id"].append(name)
                rows["obs"].append(obs.tolist())
                rows["action"].append(int(act[i]))
                rows["reward"].append(float(-np.abs(pos[i]).sum()))
            diff = pos[:, None] - pos[None]  # (A, A, 2)
            dist = np.linalg.norm(diff, axis=-1) + np.eye(agents) * 1e3
            near = dist.argmin(1)
            push = diff[np.arange(agents), near] * (dist.min(1) < 0.5)[:, None]
            pos = pos + 0.1 * vel
            vel = 0.7 * vel + 0.3 * MOVES[act] + 0.5 * push
    n = len(rows["step"])
    frame = pl.DataFrame(
        {
            **rows,
            "terminated": [False] * n,
            "truncated": [s == steps - 1 for s in rows["step"]],
        },
        schema_overrides={
            "step": pl.Int32,
            "obs": pl.List(pl.Float32),
            "action": pl.Int32,
            "reward": pl.Float32,
        },
    )
    spec = DatasetSpec(env=env, agents=sizes, action=ActionSpec("discrete", n=5))
    return frame, spec


@pytest.fixture(scope="session")
def tiny():
    return make_frame()


def continuous_store(tmp_path, name: str = "cont"):
    """A store holding dataset ``name``: :func:`make_frame`'s episodes with 2-float
    continuous actions (for the paths that take only discrete ones)."""
    from foresight.datasets import Store, ingest_logs

    frame, spec = make_frame(episodes=3)
    frame = frame.with_columns(
        pl.col("action").map_elements(lambda a: [float(a), 0.0], return_dtype=pl.List(pl.Float32))
    )
    spec = DatasetSpec(env="synthetic", agents=spec.agents, action=ActionSpec("continuous", dim=2))
    frame.write_parquet(tmp_path / f"{name}.parquet")
    store = Store(str(tmp_path / "store"))
    ingest_logs([str(tmp_path / f"{name}.parquet")], name, store, spec=spec)
    return store
