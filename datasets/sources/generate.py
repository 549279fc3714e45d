"""Generate datasets of mpe2 episodes driven by scripted policies (``foresight generate``).

Episode ``i`` of a run with seed ``s`` is seeded from ``(s, i)`` alone, so it is the same
episode whatever the file rotation or how many episodes the run has, and ids
``{env}-s{seed}-e{i:06d}`` never collide between runs with different seeds.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from pettingzoo.utils.conversions import aec_to_parallel_wrapper

from foresight.datasets.sources.policies import POLICY_NAMES, make_policy
from foresight.datasets.sources.recorder import TrajectoryRecorder
from foresight.datasets.sources.simulators import (
    SIMULATORS,
    SUPPORTED_ENVS,
    agent_kwargs,
    resolve_env_name,
)
from foresight.datasets.sources.views import PartialView, check_obs_radius

if TYPE_CHECKING:
    from pettingzoo import ParallelEnv

    from foresight.datasets.storage import FileSystem


@dataclass
class GenerateResult:
    """What :func:`generate_episodes` wrote."""

    files: list[str]
    """URIs of the log files, in order."""
    spec_uri: str
    """URI of the ``foresight_spec.json`` beside them."""
    episodes: int
    rows: int
    seconds: float
    """Wall time of the whole run."""
    mean_team_return: float = float("nan")
    """Mean over episodes of the mean over agents of each agent's episode return."""
    team_returns: list[float] = field(default_factory=list, repr=False)
    """Per episode, the mean over agents of each agent's episode return."""


def make_env(
    env: str,
    max_cycles: int = 25,
    checked: bool = True,
    obs_radius: float | None = None,
    **kwargs: Any,
) -> ParallelEnv:
    """A supported mpe2 env (short or versioned name) as a PettingZoo ParallelEnv.

    ``checked=False`` leaves out mpe2's argument-checking wrappers (action bounds, call
    order): the same env about 25% faster, for callers that check actions themselves, as
    :class:`TrajectoryRecorder` does. ``obs_radius`` gives every agent a partial view of
    that radius (:mod:`foresight.datasets.sources.views`; None: the full view). Other
    ``kwargs`` go to the mpe2 env (e.g. ``N``).
    """
    name = resolve_env_name(env)
    radius = check_obs_radius(name, obs_radius)
    module = importlib.import_module(f"mpe2.{SUPPORTED_ENVS[name]}")
    if checked:
        game = module.parallel_env(max_cycles=max_cycles, **kwargs)
    else:
        game = aec_to_parallel_wrapper(module.raw_env(max_cycles=max_cycles, **kwargs))
    return game if radius is None else PartialView(game, SIMULATORS[name].partial_view, radius)


def generate_episodes(
    env: str,
    episodes: int,
    policy: str,
    out: str,
    seed: int = 0,
    episodes_per_file: int = 250,
    max_cycles: int = 25,
    record_state: bool = False,
    gzip: bool = False,
    fs: FileSystem | None = None,
    progress: bool = False,
    policy_params: Mapping[str, Any] | None = None,
    agents: int | None = None,
    obs_radius: float | None = None,
) -> GenerateResult:
    """Record ``episodes`` episodes of ``env`` under a scripted ``policy`` into ``out``.

    ``out`` is a local folder or ``s3://bucket/prefix``; files are
    ``{env}-s{seed}[-n{agents}][-r{radius}]-part{k:04d}.jsonl[.gz]`` plus
    ``foresight_spec.json``.
    ``policy`` is one of ``random``, ``greedy``, ``noisy``, ``mixed``, ``switching``;
    ``policy_params`` go to
    :func:`~foresight.datasets.sources.policies.make_policy` (e.g. ``{"epsilon": 0.1}``,
    ``{"hazard": 0.2}`` for switching, whose switch steps are in each row's ``policy_id``).
    ``agents`` sets the team size where the env takes one (simple_spread's ``N``; None: the
    env's default); the spec's agents and observation sizes follow, and ``extra["agents"]``
    records the count (the default roster's too). ``obs_radius`` records what agents seeing
    that far observe, and the scripted policies act on that same partial view
    (:mod:`foresight.datasets.sources.views`); ``extra["obs_radius"]`` records it (None:
    the full view) and the file names carry ``-r{radius}``.
    """
    name = resolve_env_name(env)
    env_kwargs = agent_kwargs(name, agents)
    obs_radius = check_obs_radius(name, obs_radius)
    if policy not in POLICY_NAMES:
        raise ValueError(f"unknown policy {policy!r}; choose one of {', '.join(POLICY_NAMES)}")
    params = dict(policy_params or {})
    driver = make_policy(policy, name, **params)
    for arg, value, low in (
        ("episodes", episodes, 0),
        ("seed", seed, 0),
        ("episodes_per_file", episodes_per_file, 1),
        ("max_cycles", max_cycles, 1),
    ):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"{arg} must be an int >= {low}, got {value!r}")

    started = time.perf_counter()
    game = make_env(  # the recorder checks actions
        name, max_cycles=max_cycles, checked=False, obs_radius=obs_radius, **env_kwargs
    )
    # team size and view in the names too: logs at N=3 and N=6, or seen at another radius,
    # in one folder never share a file
    prefix = f"{name}-s{seed}" + (f"-n{agents}" if agents is not None else "")
    prefix += f"-r{obs_radius:g}" if obs_radius is not None else ""
    extra = {
        "source": "mpe2",
        "policy": policy,
        "policy_params": params,
        "seed": seed,
        "episodes": episodes,
        "max_cycles": max_cycles,
        "agents": len(game.possible_agents),
        "obs_radius": obs_radius,
        "generator": "foresight.datasets.sources.generate_episodes",
    }
    indices: Any = range(episodes)
    if progress:
        from tqdm import tqdm

        indices = tqdm(indices, desc=f"{name} {policy}", unit="ep")

    team_returns = []
    with TrajectoryRecorder(
        game,
        out,
        env_name=SUPPORTED_ENVS[name],
        file_prefix=prefix,
        episodes_per_file=episodes_per_file,
        record_state=record_state,
        gzip=gzip,
        extra=extra,
        fs=fs,
    ) as recorder:
        for i in indices:
            rng = np.random.default_rng([seed, i])
            env_seed = int(rng.integers(2**31 - 1))
            stats = recorder.record_episode(
                driver, episode_id=f"{prefix}-e{i:06d}", seed=env_seed, rng=rng
            )
            team_returns.append(stats.team_return)
    return GenerateResult(
        files=list(recorder.files),
        spec_uri=recorder.spec_uri,
        episodes=recorder.episodes,
        rows=recorder.rows,
        seconds=time.perf_counter() - started,
        mean_team_return=float(np.mean(team_returns)) if team_returns else float("nan"),
        team_returns=team_returns,
    )
