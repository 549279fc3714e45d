"""simple_spread: N agents cover N landmarks without colliding.

Observation of each agent, N agents and N landmarks (18 floats for N = 3):
``[self_vel(2), self_pos(2), landmark_rel_pos(2N), other_agent_rel_pos(2(N-1)),
other_agent_comm(2(N-1))]``; agents are silent, so the comm part is always zero. Landmarks
come in the same order for every agent.

Here: the scripted rules (:class:`SpreadController`), the landmarks scripted anticipation
assigns (:func:`spread_targets`), the reward (:func:`spread_reward`) and the kinematics of
the layout (:func:`kinematics`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from foresight.datasets.sources.mpe import Controller, Kinematics, Simulator, move_toward

if TYPE_CHECKING:
    import torch

    from foresight.datasets.schema import DatasetSpec


class SpreadController(Controller):
    """simple_spread: go to a landmark chosen by the rule and settle there.

    Rules: ``nearest`` landmark; ``unclaimed``, the nearest landmark that no other agent is
    closer to; ``farthest``, the landmark farthest from every other agent; ``fixed{k}``,
    always landmark ``k``.
    """

    accel = 5.0

    def __init__(self) -> None:
        self.n_landmarks = 3

    def reset(self, agents: Sequence[str]) -> None:
        self.n_landmarks = max(len(agents), 1)  # N agents and N landmarks

    def rules(self, agent: str) -> tuple[str, ...]:
        fixed = tuple(f"fixed{k}" for k in range(self.n_landmarks))
        return ("nearest", "unclaimed", "farthest", *fixed)

    def draw_rule(self, agent: str, rng: np.random.Generator) -> str:
        family = ("nearest", "unclaimed", "farthest", "fixed")[int(rng.integers(4))]
        if family == "fixed":
            return f"fixed{int(rng.integers(self.n_landmarks))}"
        return family

    def action(self, agent: str, obs: np.ndarray, rule: str) -> int:
        n = obs.size // 6  # 18 = 4 + 2N + 2(N-1) + 2(N-1) for N = 3
        vel = obs[0:2]
        landmarks = obs[4 : 4 + 2 * n].reshape(n, 2)
        others = obs[4 + 2 * n : 4 + 2 * n + 2 * (n - 1)].reshape(n - 1, 2)
        mine = np.linalg.norm(landmarks, axis=1)  # (N,) my distance to each landmark
        if rule == "nearest" or n == 1:
            target = int(np.argmin(mine))
        elif rule.startswith("fixed"):
            target = int(rule[5:]) % n
        elif rule in ("unclaimed", "farthest"):
            # (N,): how far the nearest other agent is from each landmark
            theirs = np.linalg.norm(landmarks[None, :, :] - others[:, None, :], axis=2).min(axis=0)
            if rule == "farthest":
                target = int(np.argmax(theirs))
            else:
                mine_first = mine <= theirs
                target = int(
                    np.argmin(np.where(mine_first, mine, np.inf) if mine_first.any() else mine)
                )
        else:
            raise ValueError(f"simple_spread has no rule {rule!r}; rules: {self.rules(agent)}")
        return move_toward(landmarks[target], vel, self.accel)


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


def spread_reward(next_obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """simple_spread's reward of each agent, (R, N), from the joint observation reached.

    Half the shared term (minus the sum over landmarks of the distance to the closest
    agent) plus half the agent's own collision penalty (-1 per agent within 0.3), as mpe2
    computes it with ``local_ratio=0.5``. Takes and returns torch tensors (the planner's
    ``reward_fn``) without importing torch here.
    """
    R, N, _ = next_obs.shape
    landmarks = next_obs[..., 4 : 4 + 2 * N].reshape(R, N, N, 2)  # (R, agent, landmark, 2)
    shared = -landmarks.norm(dim=-1).min(dim=1).values.sum(-1)  # (R,)
    others = next_obs[..., 4 + 2 * N : 4 + 2 * N + 2 * (N - 1)].reshape(R, N, N - 1, 2)
    collisions = (others.norm(dim=-1) < 0.3).float().sum(-1)  # (R, N)
    return 0.5 * shared[:, None] - 0.5 * collisions


def kinematics(spec: DatasetSpec) -> Kinematics | None:
    """The kinematics of the layout, or None when the observation sizes do not fit it.

    The own position moves by the own velocity and the landmarks (which stand still)
    relative to the agent move the opposite way; as mpe2 moves positions by the velocity
    the step starts with, this is exact for them. D = 6N for N agents.
    """
    sizes = set(spec.agents.values())
    if len(sizes) != 1:
        return None
    (D,) = sizes
    if D % 6:
        return None
    moves = [(2, 0, 1.0), (3, 1, 1.0)]
    for lm in range(D // 6):  # landmark positions relative to self move opposite
        moves += [(4 + 2 * lm, 0, -1.0), (5 + 2 * lm, 1, -1.0)]
    return Kinematics(moves, 0.1, [0, 1])


AGENTS = (2, 10)
"""The agent counts ``--agents`` takes: at least one partner to anticipate, and at most the
largest team the scripted rules, the planner and the arena are measured with."""

SIMULATOR = Simulator(
    "simple_spread", "simple_spread_v3", SpreadController, kinematics, agents=AGENTS
)
