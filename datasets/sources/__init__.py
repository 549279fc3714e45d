"""Trajectory sources: record PettingZoo episodes (mpe2 or your own env) as JSONL logs.

- :class:`TrajectoryRecorder` wraps any ``ParallelEnv`` and writes rows in the trajectory
  contract plus a ``foresight_spec.json``;
- :func:`make_policy` gives the scripted mpe2 policies (random, greedy, noisy, mixed);
- :func:`generate_episodes` records a whole dataset of one env and policy.
"""

from foresight.datasets.sources.generate import GenerateResult, generate_episodes, make_env
from foresight.datasets.sources.policies import (
    POLICY_NAMES,
    SUPPORTED_ENVS,
    GreedyPolicy,
    MixedPolicy,
    Policy,
    RandomPolicy,
    make_policy,
    resolve_env_name,
)
from foresight.datasets.sources.recorder import EpisodeStats, TrajectoryRecorder

__all__ = [
    "POLICY_NAMES",
    "SUPPORTED_ENVS",
    "EpisodeStats",
    "GenerateResult",
    "GreedyPolicy",
    "MixedPolicy",
    "Policy",
    "RandomPolicy",
    "TrajectoryRecorder",
    "generate_episodes",
    "make_env",
    "make_policy",
    "resolve_env_name",
]
