"""simple_spread: N agents cover N landmarks without colliding.

Observation of each agent, N agents and N landmarks (18 floats for N = 3):
``[self_vel(2), self_pos(2), landmark_rel_pos(2N), other_agent_rel_pos(2(N-1)),
other_agent_comm(2(N-1))]``; agents are silent, so the comm part is always zero. Landmarks
come in the same order for every agent.

Under a partial view of radius r (:func:`partial_view`, ``--obs-radius``) every landmark
and other agent farther than r is hidden: its relative position (and comm) reads zero, and
``N + (N - 1)`` visibility flags follow the full layout, ``[landmark_seen(N),
other_seen(N-1)]`` (8N - 1 floats: 23 for N = 3). :func:`read_obs` reads either layout.

Here: the scripted rules (:class:`SpreadController`), the landmarks scripted anticipation
assigns (:func:`spread_targets`), the reward (:func:`spread_reward`), the partial view and
the kinematics of the layout (:func:`kinematics`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from foresight.datasets.schema import view_of
from foresight.datasets.sources.mpe import Controller, Kinematics, Simulator, move_toward

if TYPE_CHECKING:
    import torch

    from foresight.datasets.schema import DatasetSpec


@dataclass(frozen=True)
class SpreadObs:
    """One agent's observation, split into its parts (either layout, see the module doc)."""

    n: int
    """Agents (and landmarks) of the episode."""
    vel: np.ndarray
    pos: np.ndarray
    landmarks: np.ndarray
    """(N, 2) relative positions; zero where hidden."""
    others: np.ndarray
    """(N - 1, 2) relative positions of the other agents; zero where hidden."""
    landmark_seen: np.ndarray
    """(N,) bool: all True under the full view."""
    other_seen: np.ndarray
    """(N - 1,) bool."""


def search(o: SpreadObs, accel: float) -> int:
    """The move of an agent with no landmark to go to (none in sight): toward the centre of
    the arena, where landmarks are spawned around, until one comes into sight."""
    return move_toward(-o.pos, o.vel, accel)


def layout(size: int) -> tuple[int, bool]:
    """(N, partial) of an observation of ``size`` floats: 6N full, 8N - 1 partial."""
    if size % 6 == 0 and size >= 12:
        return size // 6, False
    if (size + 1) % 8 == 0 and size >= 15:
        return (size + 1) // 8, True
    raise ValueError(
        f"a simple_spread observation has 6N floats (full view) or 8N - 1 (partial view) "
        f"for N >= 2 agents, got {size}"
    )


def read_obs(obs: np.ndarray) -> SpreadObs:
    """Split an observation of either layout into its parts."""
    n, partial = layout(obs.size)
    landmarks = obs[4 : 4 + 2 * n].reshape(n, 2)
    others = obs[4 + 2 * n : 4 + 2 * n + 2 * (n - 1)].reshape(n - 1, 2)
    if partial:
        flags = obs[6 * n :] > 0.5
        landmark_seen, other_seen = flags[:n], flags[n:]
    else:
        landmark_seen, other_seen = np.ones(n, bool), np.ones(n - 1, bool)
    return SpreadObs(n, obs[0:2], obs[2:4], landmarks, others, landmark_seen, other_seen)


def partial_view(obs: np.ndarray, radius: float) -> np.ndarray:
    """The observation an agent seeing ``radius`` far gets from its full one (8N - 1 floats).

    Landmarks and other agents beyond ``radius`` read zero (positions and comm) and their
    visibility flag 0; the agent's own velocity and position are always seen.
    """
    n, partial = layout(obs.size)
    if partial:
        raise ValueError("partial_view takes a full-view observation (6N floats)")
    o = read_obs(obs)
    out = np.empty(8 * n - 1, dtype=obs.dtype)
    out[: 6 * n] = obs
    landmark_seen = np.hypot(o.landmarks[:, 0], o.landmarks[:, 1]) <= radius
    other_seen = np.hypot(o.others[:, 0], o.others[:, 1]) <= radius
    out[4 : 4 + 2 * n] *= np.repeat(landmark_seen, 2)
    keep = np.repeat(other_seen, 2)
    out[4 + 2 * n : 4 + 4 * n - 2] *= keep  # positions
    out[4 + 4 * n - 2 : 6 * n] *= keep  # comm
    out[6 * n : 7 * n] = landmark_seen
    out[7 * n :] = other_seen
    return out


class SpreadController(Controller):
    """simple_spread: go to a landmark chosen by the rule and settle there.

    Rules: ``nearest`` landmark; ``unclaimed``, the nearest landmark that no other agent is
    closer to; ``farthest``, the landmark farthest from every other agent; ``fixed{k}``,
    always landmark ``k``.

    Under a partial view the rules read what is seen: landmarks and agents out of sight do
    not exist for them, and an agent whose landmark is out of sight (no landmark at all, or
    not its ``fixed`` one) heads for the centre of the arena, where landmarks are spawned
    around, until it sees one.
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
        o = read_obs(obs)
        n, landmarks = o.n, o.landmarks
        # my distance to each landmark; inf where not seen
        mine = np.where(o.landmark_seen, np.linalg.norm(landmarks, axis=1), np.inf)
        if not o.landmark_seen.any():
            return search(o, self.accel)
        if rule == "nearest":
            target = int(np.argmin(mine))
        elif rule.startswith("fixed"):
            target = int(rule[5:]) % n
            if not o.landmark_seen[target]:
                return search(o, self.accel)
        elif rule in ("unclaimed", "farthest"):
            others = o.others[o.other_seen]
            if len(others) == 0:  # nobody in sight claims anything
                target = int(np.argmin(mine))
            else:
                # (N,): how far the nearest other agent is from each landmark
                theirs = np.linalg.norm(landmarks[None, :, :] - others[:, None, :], axis=2).min(
                    axis=0
                )
                if rule == "farthest":
                    target = int(np.argmax(np.where(o.landmark_seen, theirs, -np.inf)))
                else:
                    mine_first = mine <= theirs
                    target = int(
                        np.argmin(np.where(mine_first, mine, np.inf) if mine_first.any() else mine)
                    )
        else:
            raise ValueError(f"simple_spread has no rule {rule!r}; rules: {self.rules(agent)}")
        return move_toward(landmarks[target], o.vel, self.accel)


def spread_targets(
    obs: dict[str, np.ndarray], agents: Sequence[str], controlled: Sequence[str]
) -> dict[str, int]:
    """Landmark index each ``controlled`` agent heads for, given everyone's observation.

    Every agent not in ``controlled`` is assumed to head for its nearest landmark. The
    controlled agents choose in the order of ``agents``: the nearest landmark that neither
    an uncontrolled agent nor an earlier controlled one is heading for (the nearest of all
    when every landmark is taken). Landmarks are indexed as in the observations (the same
    order for every agent). Under a partial view an agent only reckons with the landmarks
    it sees; one that sees none claims nothing, and a controlled one gets -1 (search).
    """
    seen = {a: read_obs(obs[a]) for a in agents}
    # an agent's distance to each landmark it sees (inf for the hidden ones)
    dist = {
        a: np.where(o.landmark_seen, np.linalg.norm(o.landmarks, axis=1), np.inf)
        for a, o in seen.items()
    }
    taken: set[int] = set()
    for a in agents:
        if a not in controlled and np.isfinite(dist[a]).any():
            taken.add(int(np.argmin(dist[a])))
    targets: dict[str, int] = {}
    for a in agents:
        if a not in controlled:
            continue
        if not np.isfinite(dist[a]).any():
            targets[a] = -1  # sees no landmark: nothing to claim
            continue
        free = [k for k in range(seen[a].n) if k not in taken and np.isfinite(dist[a][k])]
        target = min(free, key=lambda k: dist[a][k]) if free else int(np.argmin(dist[a]))
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
    R, N, D = next_obs.shape
    if D != 6 * N:
        raise ValueError(
            f"spread_reward reads full-view observations (6N = {6 * N} floats for {N} agents), "
            f"got {D}: under a partial view the reward is not in what the agents see"
        )
    landmarks = next_obs[..., 4 : 4 + 2 * N].reshape(R, N, N, 2)  # (R, agent, landmark, 2)
    shared = -landmarks.norm(dim=-1).min(dim=1).values.sum(-1)  # (R,)
    others = next_obs[..., 4 + 2 * N : 4 + 2 * N + 2 * (N - 1)].reshape(R, N, N - 1, 2)
    collisions = (others.norm(dim=-1) < 0.3).float().sum(-1)  # (R, N)
    return 0.5 * shared[:, None] - 0.5 * collisions


def kinematics(spec: DatasetSpec) -> Kinematics | None:
    """The kinematics of the layout, or None when the observation sizes do not fit it.

    The own position moves by the own velocity and the landmarks (which stand still)
    relative to the agent move the opposite way; as mpe2 moves positions by the velocity
    the step starts with, this is exact for them. D = 6N for N agents; a partial view
    (8N - 1) has none, as a landmark coming into sight jumps from zero.
    """
    sizes = set(spec.agents.values())
    if len(sizes) != 1 or view_of(spec) is not None:
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
    "simple_spread",
    "simple_spread_v3",
    SpreadController,
    kinematics,
    agents=AGENTS,
    partial_view=partial_view,
)
