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

from foresight.datasets.sources.policies import (
    CONTROLLERS,
    ReferenceController,
    SpreadController,
    TagController,
    move_toward,
    resolve_env_name,
    resting_offsets,
)


def spread_targets(
    obs: dict[str, np.ndarray], agents: Sequence[str], controlled: Sequence[str]
) -> dict[str, int]:
    """Landmark index each ``controlled`` agent heads for, given everyone's observation.

    Every agent not in ``controlled`` is assumed to head for its nearest landmark. The
    controlled agents choose in the order of ``agents``: the nearest landmark that neither
    an uncontrolled agent nor an earlier controlled one is heading for (the nearest of all
    when every landmark is taken). Landmarks are indexed as in the observations (the same
    order for every agent).
    """
    taken: set[int] = set()
    for a in agents:
        if a not in controlled:
            n = obs[a].size // 6
            landmarks = obs[a][4 : 4 + 2 * n].reshape(n, 2)
            taken.add(int(np.argmin(np.linalg.norm(landmarks, axis=1))))
    targets: dict[str, int] = {}
    for a in agents:
        if a not in controlled:
            continue
        n = obs[a].size // 6
        dist = np.linalg.norm(obs[a][4 : 4 + 2 * n].reshape(n, 2), axis=1)
        free = [k for k in range(n) if k not in taken]
        target = min(free, key=lambda k: dist[k]) if free else int(np.argmin(dist))
        targets[a] = target
        taken.add(target)
    return targets


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
                o = obs[a]
                n = o.size // 6
                landmark = o[4 : 4 + 2 * n].reshape(n, 2)[targets[a]]
                out[a] = move_toward(landmark, o[0:2], SpreadController.accel)
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
        # Where will the prey rest after the flight action its greedy rule picks now?
        o = obs[agent]
        n_others = rules.n_adversaries + rules.n_good - 1
        n_obstacles = (o.size - 4 - 2 * n_others - 2 * rules.n_good) // 2
        start = 4 + 2 * n_obstacles
        others = o[start : start + 2 * n_others].reshape(n_others, 2)
        prey_rel = others[rules.n_adversaries - 1 :]  # (G, 2) good agents after adversaries
        goods = [a for a in self.agents if not a.startswith("adversary")]
        j = int(np.argmin(np.linalg.norm(prey_rel, axis=1)))
        prey = goods[j]
        flight = rules.action(prey, obs[prey], rules.rules(prey)[0])
        prey_vel = obs[prey][0:2]
        ahead = resting_offsets(prey_vel, rules.good_accel)[flight]
        return move_toward(prey_rel[j] + ahead, o[0:2], rules.adversary_accel)
