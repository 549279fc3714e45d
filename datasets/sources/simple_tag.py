"""simple_tag: adversaries chase the good agents among obstacles.

Observation, A adversaries, G good agents, L obstacles (16 floats for an adversary and 14
for the good agent with the defaults 3, 1, 2): ``[self_vel(2), self_pos(2),
obstacle_rel_pos(2L), other_agent_rel_pos(2(A+G-1)), other_good_agent_vel(2 * good agents
other than self)]``; other agents come in env order, adversaries first. Adversaries
accelerate with 3, good agents with 4; a good agent pays :func:`boundary_cost` for leaving
the arena.

Here: the scripted rules (:class:`TagController`), the boundary term of the good agents'
reward (:func:`boundary_cost`) and the adversary of scripted anticipation
(:func:`anticipating_chase`). The env is competitive: in the arena a team is the
adversaries (the predators), the prey flees by its ``flee-nearest`` rule without noise, and
the team's return is the adversaries' own.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from foresight.datasets.sources.mpe import Controller, Simulator, move_toward, resting_offsets


def boundary_cost(pos: np.ndarray) -> np.ndarray:
    """simple_tag's penalty for a good agent leaving the arena, summed over x and y."""
    x = np.abs(pos)
    cost = np.where(
        x < 0.9, 0.0, np.where(x < 1.0, (x - 0.9) * 10, np.minimum(np.exp(2 * x - 2), 10))
    )
    return cost.sum(axis=-1)


class TagController(Controller):
    """simple_tag: adversaries chase the good agents, good agents flee the adversaries.

    Adversary rules: ``chase-nearest`` (the nearest good agent where it is) and
    ``chase-lead`` (where it will be in half a second). Good-agent rules: ``flee-nearest``
    (maximise the distance to the nearest adversary) and ``flee-all`` (keep away from all of
    them, closer ones counting more); both pay the env's penalty for leaving the arena.
    """

    adversary_accel = 3.0
    good_accel = 4.0
    lead_seconds = 0.5

    def __init__(self) -> None:
        self.n_adversaries = 3
        self.n_good = 1

    def reset(self, agents: Sequence[str]) -> None:
        self.n_adversaries = sum(a.startswith("adversary") for a in agents)
        self.n_good = len(agents) - self.n_adversaries

    def rules(self, agent: str) -> tuple[str, ...]:
        if agent.startswith("adversary"):
            return ("chase-nearest", "chase-lead")
        return ("flee-nearest", "flee-all")

    def action(self, agent: str, obs: np.ndarray, rule: str) -> int:
        adversary = agent.startswith("adversary")
        n_others = self.n_adversaries + self.n_good - 1
        n_vel = self.n_good if adversary else self.n_good - 1
        n_obstacles = (obs.size - 4 - 2 * n_others - 2 * n_vel) // 2
        vel, pos = obs[0:2], obs[2:4]
        start = 4 + 2 * n_obstacles
        others = obs[start : start + 2 * n_others].reshape(n_others, 2)
        if adversary:
            prey = others[self.n_adversaries - 1 :]  # (G, 2): good agents come after adversaries
            prey_vel = obs[start + 2 * n_others :].reshape(-1, 2)
            j = int(np.argmin(np.linalg.norm(prey, axis=1)))
            if rule == "chase-nearest":
                target = prey[j]
            elif rule == "chase-lead":
                target = prey[j] + self.lead_seconds * prey_vel[j]
            else:
                raise ValueError(f"simple_tag has no rule {rule!r}; rules: {self.rules(agent)}")
            return move_toward(target, vel, self.adversary_accel)

        hunters = others[: self.n_adversaries]  # (A, 2)
        rest = resting_offsets(vel, self.good_accel)  # (5, 2)
        dist = np.linalg.norm(hunters[None, :, :] - rest[:, None, :], axis=2)  # (5, A)
        if rule == "flee-nearest":
            score = dist[:, int(np.argmin(np.linalg.norm(hunters, axis=1)))]
        elif rule == "flee-all":
            score = -(1.0 / np.maximum(dist, 0.05)).sum(axis=1) * 0.25
        else:
            raise ValueError(f"simple_tag has no rule {rule!r}; rules: {self.rules(agent)}")
        score = score - boundary_cost(pos[None, :] + rest)
        return int(np.argmax(score))


COLLISION_DISTANCE = 0.075 + 0.05
"""An adversary touches a good agent within the sum of their sizes (mpe2's simple_tag)."""


def tag_reward(agents: Sequence[str], obs_sizes: Sequence[int], shaped: bool = False):
    """simple_tag's reward of each agent from the joint observation reached, as a planner's
    ``reward_fn`` ``(next_obs (R, N, D), action) -> (R, N)`` for the roster ``agents`` (env
    order) with those observation sizes. Each adversary gets +10 per contact between any
    adversary and any good agent; a good agent -10 per adversary touching it and
    :func:`boundary_cost` of its position. ``shaped``: mpe2's optional shaping too (off in
    the env): every adversary -0.1 x the sum over adversaries of the distance to the nearest
    good agent, a good agent +0.1 x its distance to each adversary. Takes and returns torch
    tensors without importing torch here."""
    adversary = [a.startswith("adversary") for a in agents]
    A, G = sum(adversary), len(agents) - sum(adversary)
    size = obs_sizes[adversary.index(True)] if A else 0
    L = (size - 4 - 2 * (A + G - 1) - 2 * G) // 2  # obstacles
    start = 4 + 2 * L
    adv_rows, good_rows = (
        [n for n, a in enumerate(adversary) if a is side] for side in (True, False)
    )

    def reward(next_obs, action):
        R, N, _ = next_obs.shape
        if len(agents) != N:
            raise ValueError(f"tag_reward was made for {len(agents)} agents, got {N}")
        others = next_obs[..., start : start + 2 * (A + G - 1)].reshape(R, N, A + G - 1, 2)
        near = others.norm(dim=-1) < COLLISION_DISTANCE  # (R, N, others)
        out = next_obs.new_zeros(R, N)
        contacts = near[:, adv_rows, A - 1 :].sum((1, 2))  # (R,) adversary-prey pairs
        out[:, adv_rows] = 10.0 * contacts[:, None].to(out.dtype)
        if shaped:
            chase = others[:, adv_rows, A - 1 :].norm(dim=-1).min(-1).values.sum(-1)  # (R,)
            out[:, adv_rows] -= 0.1 * chase[:, None]
        if good_rows:
            pos = next_obs[:, good_rows, 2:4].abs()  # (R, G, 2)
            edge = (pos - 0.9) * 10
            far = (2 * pos - 2).exp().clamp(max=10)
            bound = edge.where(pos < 1.0, far).where(pos >= 0.9, edge.new_zeros(())).sum(-1)
            touched = near[:, good_rows, :A].sum(-1).to(out.dtype)  # (R, G)
            out[:, good_rows] = -10.0 * touched - bound
            if shaped:
                out[:, good_rows] += 0.1 * others[:, good_rows, :A].norm(dim=-1).sum(-1)
        return out

    return reward


def anticipating_chase(
    rules: TagController, agent: str, obs: dict[str, np.ndarray], roster: Sequence[str]
) -> int:
    """An adversary's move toward where its nearest prey will rest after the flight action
    the prey's greedy rule picks now (``obs``: every agent's observation; ``roster``: the
    agents in env order)."""
    o = obs[agent]
    n_others = rules.n_adversaries + rules.n_good - 1
    n_obstacles = (o.size - 4 - 2 * n_others - 2 * rules.n_good) // 2
    start = 4 + 2 * n_obstacles
    others = o[start : start + 2 * n_others].reshape(n_others, 2)
    prey_rel = others[rules.n_adversaries - 1 :]  # (G, 2) good agents after adversaries
    goods = [a for a in roster if not a.startswith("adversary")]
    j = int(np.argmin(np.linalg.norm(prey_rel, axis=1)))
    prey = goods[j]
    flight = rules.action(prey, obs[prey], rules.rules(prey)[0])
    prey_vel = obs[prey][0:2]
    ahead = resting_offsets(prey_vel, rules.good_accel)[flight]
    return move_toward(prey_rel[j] + ahead, o[0:2], rules.adversary_accel)


SIMULATOR = Simulator(
    "simple_tag",
    "simple_tag_v3",
    TagController,
    opponent=lambda agent: not agent.startswith("adversary"),
)
