"""Trajectory sources: record PettingZoo episodes (mpe2 or your own env) as JSONL logs.

- :class:`TrajectoryRecorder` wraps any ``ParallelEnv`` and writes rows in the trajectory
  contract plus a ``foresight_spec.json``;
- :func:`make_policy` gives the scripted policies (random, greedy, noisy, mixed);
- :func:`generate_episodes` records a whole dataset of one env and policy;
- one module per simulator (``simple_spread``, ``simple_reference``, ``simple_tag``) holds
  its observation layout, scripted rules, reward and kinematics; :data:`SIMULATORS` lists
  them (:mod:`foresight.datasets.sources.simulators`).
"""

from foresight.datasets.sources.generate import GenerateResult, generate_episodes, make_env
from foresight.datasets.sources.policies import (
    POLICY_NAMES,
    GreedyPolicy,
    MixedPolicy,
    Policy,
    RandomPolicy,
    make_policy,
)
from foresight.datasets.sources.recorder import EpisodeStats, TrajectoryRecorder
from foresight.datasets.sources.simulators import (
    SIMULATORS,
    SUPPORTED_ENVS,
    resolve_env_name,
    simulator_of,
)

__all__ = [
    "POLICY_NAMES",
    "SIMULATORS",
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
    "simulator_of",
]
