"""Scripted anticipation: the yardstick for what knowing the others' next moves is worth.

A hand-written controller that knows the other agents' true rule instead of learning it.
In simple_spread every other (greedy) agent heads for its nearest landmark; the scripted
agents take those landmarks as spoken for and head for the nearest landmark that none of
them is about to take. When several agents are driven by this controller they assign
themselves in index order, each treating the landmarks of lower-indexed teammates as taken
too: the same consistent tie-break a deployed team of planners can use. A learned planner
that infers the others' rule from data should come close to this.

Other envs: simple_tag adversaries chase where the prey will be after its (known, greedy)
flight action instead of where it is; simple_reference has nothing to anticipate beyond
what greedy already does (the other agent goes where it is told), so it plays greedy.

It follows the arena's controller protocol (``reset(info)``, ``act(history, agents)``)
without importing it: ``datasets`` imports nothing from ``training``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from foresight.datasets.sources.mpe import move_toward
from foresight.datasets.sources.simple_reference import ReferenceController
from foresight.datasets.sources.simple_spread import (
    SpreadController,
    read_obs,
    search,
    spread_targets,
)
from foresight.datasets.sources.simple_tag import TagController, anticipating_chase
from foresight.datasets.sources.simulators import CONTROLLERS, resolve_env_name

__all__ = ["ScriptedAnticipation", "spread_targets"]


class ScriptedAnticipation:
    """The ``scripted-anticipation`` controller for an mpe2 env (see the module docstring)."""

    name = "scripted-anticipation"

    def __init__(self, env: str) -> None:
        self.env = resolve_env_name(env)
        self.rules = CONTROLLERS[self.env]()

    def reset(self, info: Any) -> None:
        """Start an episode; ``info`` has ``agents`` (the roster, in env order)."""
        self.agents = list(info.agents)
        self.rules.reset(self.agents)

    def act(self, history: Any, agents: Sequence[str]) -> dict[str, int]:
        """Actions of ``agents`` from the latest joint observation of ``history``.

        ``history.obs`` is (T, N, D) with columns in ``history.agent_ids`` order; each
        agent's real observation is its first ``obs_sizes[agent]`` features.
        """
        ids = list(history.agent_ids)
        sizes = history.obs_sizes or {}
        last = np.asarray(history.obs[-1], dtype=np.float64)  # (N, D)
        obs = {a: last[n, : sizes.get(a, last.shape[1])] for n, a in enumerate(ids)}
        if isinstance(self.rules, SpreadController):
            targets = spread_targets(obs, ids, list(agents))
            out = {}
            for a in agents:
                o, k, accel = read_obs(obs[a]), targets[a], SpreadController.accel
                # no landmark in sight (k = -1): search, as the greedy rules do
                out[a] = move_toward(o.landmarks[k], o.vel, accel) if k >= 0 else search(o, accel)
            return out
        if isinstance(self.rules, TagController):
            return {a: self._tag(a, obs) for a in agents}
        if not isinstance(self.rules, ReferenceController):
            raise TypeError(
                f"no scripted anticipation for rules of type {type(self.rules).__name__}"
            )
        return {a: self.rules.action(a, obs[a], self.rules.rules(a)[0]) for a in agents}

    def _tag(self, agent: str, obs: dict[str, np.ndarray]) -> int:
        rules = self.rules
        if not isinstance(rules, TagController):
            raise TypeError(f"_tag needs TagController rules, not {type(rules).__name__}")
        if not agent.startswith("adversary"):
            return rules.action(agent, obs[agent], rules.rules(agent)[0])
        return anticipating_chase(rules, agent, obs, self.agents)
