"""Partial views: what an agent sees when it sees only ``radius`` far (``--obs-radius``).

    env = make_env("simple_spread", obs_radius=0.5)   # a PartialView around the mpe2 env
    obs, _ = env.reset(seed=0)                        # every agent's partial observation

The simulator's entry says how (its ``partial_view``: hidden entities read zero, and
visibility flags follow the full layout). The recorder and the scripted policies read the
wrapped env's observations like any others; what depends on the view (the models, the
arena's checks) reads the radius from the dataset spec (``extra["obs_radius"]``, see
:func:`foresight.datasets.schema.view_of`). The global ``state``, when logged, stays the
env's full state.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import numpy as np
from gymnasium import spaces

from foresight.datasets.sources.simulators import SIMULATORS, resolve_env_name


def check_obs_radius(env: str, radius: float | None) -> float | None:
    """``radius`` as a float after checking it (None: the full view).

    A radius that is not a finite number > 0, or an env whose simulator has no partial view,
    is refused naming the env and what it takes.
    """
    if radius is None:
        return None
    name = resolve_env_name(env)
    if isinstance(radius, bool) or not isinstance(radius, numbers.Real):
        raise ValueError(f"obs_radius must be a number > 0, got {radius!r}")
    if not math.isfinite(radius) or radius <= 0:
        raise ValueError(
            f"obs_radius must be a finite distance > 0 (how far an agent sees), got {radius!r}; "
            "leave it out for the full view"
        )
    if SIMULATORS[name].partial_view is None:
        takes = [s.name for s in SIMULATORS.values() if s.partial_view is not None]
        raise ValueError(
            f"{name} has no partial view (got obs_radius={radius!r}); envs that do: "
            f"{', '.join(takes)}"
        )
    return float(radius)


class PartialView:
    """A PettingZoo ParallelEnv whose agents observe ``view(full_obs, radius)``.

    Everything else (agents, actions, rewards, ``state()``, ``close()``) is the wrapped env's.
    """

    def __init__(
        self, env: Any, view: Callable[[np.ndarray, float], np.ndarray] | None, radius: float
    ) -> None:
        if view is None:
            raise ValueError("PartialView needs a view function (the simulator's partial_view)")
        self.env = env
        self.view = view
        self.radius = radius
        self._spaces: dict[str, spaces.Box] = {}

    def __getattr__(self, name: str) -> Any:
        if name == "env":  # not set yet (a copy being built): no recursion through it
            raise AttributeError(name)
        return getattr(self.env, name)

    @property
    def unwrapped(self) -> Any:
        return self.env.unwrapped

    def observation_space(self, agent: str) -> spaces.Box:
        if agent not in self._spaces:
            full = self.env.observation_space(agent)
            size = self.view(np.zeros(int(np.prod(full.shape)), np.float32), self.radius).size
            self._spaces[agent] = spaces.Box(-np.inf, np.inf, (size,), np.float32)
        return self._spaces[agent]

    def _see(self, obs: dict[str, Any]) -> dict[str, np.ndarray]:
        return {
            a: self.view(np.asarray(o, np.float32).reshape(-1), self.radius) for a, o in obs.items()
        }

    def reset(self, seed: int | None = None, options: dict | None = None):
        obs, infos = self.env.reset(seed=seed, options=options)
        return self._see(obs), infos

    def step(self, actions: dict[str, Any]):
        obs, rewards, terminated, truncated, infos = self.env.step(actions)
        return self._see(obs), rewards, terminated, truncated, infos
