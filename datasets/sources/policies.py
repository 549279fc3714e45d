"""Scripted policies for the mpe2 environments we record: random, greedy, noisy and mixed.

They exist to produce trajectories worth learning from: ``greedy`` agents do something
purposeful, ``noisy`` adds epsilon-random actions, and ``mixed`` draws a different target
rule and epsilon per agent and per episode, so a behavior model has to read an agent's own
history to tell which kind of agent it is facing.

Every policy is driven by a numpy ``Generator`` handed to :meth:`Policy.reset` at the start of
each episode, so the same seed gives the same episode.

What the scripts rely on (checked against the mpe2 1.1 source, default arguments):

* discrete movement actions: ``0`` no-op, ``1`` -x, ``2`` +x, ``3`` -y, ``4`` +y; an agent
  that also speaks (simple_reference) takes ``move + 5 * word``, 50 actions in all;
* physics: ``dt = 0.1``, damping ``0.25``, mass 1, force = ``accel * unit`` with ``accel`` 5
  unless the scenario sets it (simple_tag: adversaries 3, good agents 4);
* observation layouts (full observability):

  - simple_spread, N agents and N landmarks (18 floats for N=3):
    ``[self_vel(2), self_pos(2), landmark_rel_pos(2N), other_agent_rel_pos(2(N-1)),
    other_agent_comm(2(N-1))]``; agents are silent so the comm part is always zero;
  - simple_reference, 2 agents, 3 landmarks (21 floats; no own position):
    ``[self_vel(2), landmark_rel_pos(3*2), goal_color(3), other_agent_comm(10)]``;
    ``goal_color`` is the colour of the landmark the *other* agent must reach; landmark
    colours are fixed by index (red, green, blue), so ``argmax(goal_color)`` is its index;
    ``comm`` is the one-hot word the other agent said at the previous step (zeros at step 0);
  - simple_tag, A adversaries, G good agents, L obstacles (16 floats for an adversary and
    14 for the good agent with the defaults 3, 1, 2):
    ``[self_vel(2), self_pos(2), obstacle_rel_pos(2L), other_agent_rel_pos(2(A+G-1)),
    other_good_agent_vel(2 * good agents other than self)]``; other agents come in env order,
    adversaries first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
from gymnasium import spaces

Action = int | np.ndarray
"""An int for a Discrete action space, a float vector for a Box."""

SUPPORTED_ENVS: dict[str, str] = {
    "simple_spread": "simple_spread_v3",
    "simple_reference": "simple_reference_v3",
    "simple_tag": "simple_tag_v3",
}
"""Short env name -> mpe2 module (and env) name."""

POLICY_NAMES = ("random", "greedy", "noisy", "mixed")


def resolve_env_name(env: str) -> str:
    """The short name (``simple_spread``) of an env given by its short or versioned name."""
    for short, versioned in SUPPORTED_ENVS.items():
        if env in (short, versioned):
            return short
    raise ValueError(
        f"unknown env {env!r}; choose one of {', '.join(SUPPORTED_ENVS)} "
        f"(or {', '.join(SUPPORTED_ENVS.values())})"
    )


class Policy(Protocol):
    """Chooses every agent's action from that agent's own observation."""

    def reset(self, rng: np.random.Generator, agents: Sequence[str]) -> None:
        """Start an episode with these agents; all randomness comes from ``rng``."""

    def act(self, agent: str, obs: np.ndarray) -> Action:
        """The action of ``agent`` given what it sees now."""

    def policy_id(self, agent: str) -> str:
        """Which policy and parameters drive ``agent`` in the current episode."""


# -- physics shared by the mpe2 scenarios ----------------------------------------------------

DT = 0.1
DAMPING = 0.25
MOVES = np.array([[0, 0], [-1, 0], [1, 0], [0, -1], [0, 1]], dtype=np.float64)
"""Unit force of each discrete movement action, indexed by action."""


def resting_offsets(vel: np.ndarray, accel: float) -> np.ndarray:
    """Where the agent comes to rest, relative to now, if it takes each move once then idles.

    One step moves by ``vel * dt`` and sets ``vel' = (1 - damping) vel + accel * u * dt``;
    idling afterwards coasts a further ``vel' * dt / damping``. Aiming this resting point at
    a target (rather than steering by the target direction alone) brakes in time, so agents
    settle on their target instead of orbiting it. Returns shape (5, 2).
    """
    return (DT / DAMPING) * vel + (DT * DT / DAMPING) * accel * MOVES


def move_toward(target_rel: np.ndarray, vel: np.ndarray, accel: float) -> int:
    """The movement action whose resting point lands closest to ``target_rel``."""
    gap = target_rel - resting_offsets(vel, accel)  # (5, 2)
    return int(np.argmin(np.einsum("ij,ij->i", gap, gap)))


def _boundary_cost(pos: np.ndarray) -> np.ndarray:
    """simple_tag's penalty for a good agent leaving the arena, summed over x and y."""
    x = np.abs(pos)
    cost = np.where(
        x < 0.9, 0.0, np.where(x < 1.0, (x - 0.9) * 10, np.minimum(np.exp(2 * x - 2), 10))
    )
    return cost.sum(axis=-1)


# -- per-env controllers: how a greedy agent of each env picks its action ---------------------


class Controller:
    """The greedy behaviour of one env: target rules per agent and the action for a rule."""

    n_actions: int = 5

    def reset(self, agents: Sequence[str]) -> None:
        """Learn the episode's roster (some layouts depend on how many agents of a kind exist)."""

    def rules(self, agent: str) -> tuple[str, ...]:
        """The rules this agent can follow; the first is the plain greedy default."""
        raise NotImplementedError

    def draw_rule(self, agent: str, rng: np.random.Generator) -> str:
        """A rule for the mixed policy (uniform over :meth:`rules` unless overridden)."""
        options = self.rules(agent)
        return options[int(rng.integers(len(options)))]

    def action(self, agent: str, obs: np.ndarray, rule: str) -> int:
        raise NotImplementedError


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


class ReferenceController(Controller):
    """simple_reference: tell the other agent its goal, go where the other agent says.

    A rule is ``{move}+{speech}``. Moves: ``listen`` (the landmark the other agent named last
    step; the landmarks' centre before anything was heard), ``nearest`` landmark, or
    ``fixed{k}``. Speech: ``honest`` (the index of the goal colour) or ``shifted`` (the next
    index: a consistent liar, recognisable only over time).
    """

    n_actions = 50
    accel = 5.0
    n_landmarks = 3
    n_words = 10

    def rules(self, agent: str) -> tuple[str, ...]:
        moves = ("listen", "nearest", *(f"fixed{k}" for k in range(self.n_landmarks)))
        return tuple(f"{m}+{s}" for s in ("honest", "shifted") for m in moves)

    def draw_rule(self, agent: str, rng: np.random.Generator) -> str:
        move = ("listen", "nearest", "fixed")[int(rng.integers(3))]
        if move == "fixed":
            move = f"fixed{int(rng.integers(self.n_landmarks))}"
        speech = "honest" if rng.random() < 0.75 else "shifted"
        return f"{move}+{speech}"

    def action(self, agent: str, obs: np.ndarray, rule: str) -> int:
        move_rule, _, speech = rule.partition("+")
        vel = obs[0:2]
        landmarks = obs[2:8].reshape(3, 2)
        goal_color = obs[8:11]
        heard = obs[11:21]
        if move_rule == "listen":
            word = int(np.argmax(heard))
            if heard[word] > 0 and word < self.n_landmarks:
                target = landmarks[word]
            else:
                target = landmarks.mean(axis=0)
        elif move_rule == "nearest":
            target = landmarks[int(np.argmin(np.linalg.norm(landmarks, axis=1)))]
        elif move_rule.startswith("fixed"):
            target = landmarks[int(move_rule[5:]) % self.n_landmarks]
        else:
            raise ValueError(f"simple_reference has no rule {rule!r}; rules: {self.rules(agent)}")
        say = int(np.argmax(goal_color)) if goal_color.any() else 0
        if speech == "shifted":
            say = (say + 1) % self.n_landmarks
        elif speech != "honest":
            raise ValueError(f"simple_reference has no rule {rule!r}; rules: {self.rules(agent)}")
        return move_toward(target, vel, self.accel) + 5 * say


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
        score = score - _boundary_cost(pos[None, :] + rest)
        return int(np.argmax(score))


CONTROLLERS: dict[str, type[Controller]] = {
    "simple_spread": SpreadController,
    "simple_reference": ReferenceController,
    "simple_tag": TagController,
}


# -- policies ---------------------------------------------------------------------------------


class RandomPolicy:
    """Uniformly random actions from each agent's action space (Discrete or bounded Box).

    Works for any env: give one space for all agents, or a mapping agent -> space.
    """

    def __init__(self, space: int | spaces.Space | Mapping[str, spaces.Space]) -> None:
        if isinstance(space, int):
            space = spaces.Discrete(space)
        self._space = space
        self._rng = np.random.default_rng(0)

    def _space_of(self, agent: str) -> spaces.Space:
        return self._space[agent] if isinstance(self._space, Mapping) else self._space

    def reset(self, rng: np.random.Generator, agents: Sequence[str]) -> None:
        self._rng = rng

    def act(self, agent: str, obs: np.ndarray) -> Action:
        space = self._space_of(agent)
        if isinstance(space, spaces.Discrete):
            return int(space.start) + int(self._rng.integers(int(space.n)))
        if isinstance(space, spaces.Box) and space.is_bounded():
            return self._rng.uniform(space.low, space.high).astype(space.dtype)
        raise ValueError(
            f"RandomPolicy samples Discrete and bounded Box spaces; agent {agent!r} has {space}"
        )

    def policy_id(self, agent: str) -> str:
        return "random"


class GreedyPolicy:
    """Every agent follows its env's greedy rule; with probability ``epsilon`` it acts at random.

    ``epsilon=0`` is the ``greedy`` policy, ``epsilon=0.2`` the ``noisy`` one. ``rule`` picks
    one of the controller's rules for every agent (default: each agent's first rule).
    """

    def __init__(self, controller: Controller, epsilon: float = 0.0, rule: str | None = None):
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")
        self.controller = controller
        self.epsilon = float(epsilon)
        self.rule = rule
        self._rng = np.random.default_rng(0)
        self._plans: dict[str, tuple[str, float, str]] = {}  # agent -> (rule, epsilon, id)

    def _plan(self, agent: str, rng: np.random.Generator) -> tuple[str, float]:
        """This episode's (rule, epsilon) for ``agent``."""
        rule = self.rule or self.controller.rules(agent)[0]
        if rule not in self.controller.rules(agent):
            raise ValueError(
                f"agent {agent!r} has no rule {rule!r}; rules: {self.controller.rules(agent)}"
            )
        return rule, self.epsilon

    def reset(self, rng: np.random.Generator, agents: Sequence[str]) -> None:
        self._rng = rng
        self.controller.reset(agents)
        self._plans = {}
        for agent in agents:
            self._add(agent)

    def _add(self, agent: str) -> tuple[str, float, str]:
        rule, eps = self._plan(agent, self._rng)
        plan = (rule, eps, f"greedy-{rule}/eps={eps:.2f}")
        self._plans[agent] = plan
        return plan

    def act(self, agent: str, obs: np.ndarray) -> int:
        rule, eps, _ = self._plans.get(agent) or self._add(agent)  # late joiners get a plan too
        if eps > 0 and self._rng.random() < eps:
            return int(self._rng.integers(self.controller.n_actions))
        return self.controller.action(agent, np.asarray(obs), rule)

    def policy_id(self, agent: str) -> str:
        return (self._plans.get(agent) or self._add(agent))[2]


class MixedPolicy(GreedyPolicy):
    """Per agent and per episode, a random rule and a random epsilon in ``epsilon_range``.

    The drawn parameters are in :meth:`policy_id` (e.g. ``greedy-fixed2/eps=0.30``). One step
    rarely tells them apart; a few steps of the agent's own history do.
    """

    def __init__(self, controller: Controller, epsilon_range: tuple[float, float] = (0.0, 0.6)):
        low, high = epsilon_range
        if not 0.0 <= low <= high <= 1.0:
            raise ValueError(
                f"epsilon_range must satisfy 0 <= low <= high <= 1, got {epsilon_range}"
            )
        super().__init__(controller)
        self.epsilon_range = (float(low), float(high))

    def _plan(self, agent: str, rng: np.random.Generator) -> tuple[str, float]:
        rule = self.controller.draw_rule(agent, rng)
        eps = round(float(rng.uniform(*self.epsilon_range)), 2)  # acted on exactly as recorded
        return rule, eps


_POLICY_PARAMS = {
    "random": (),
    "greedy": ("epsilon", "rule"),
    "noisy": ("epsilon", "rule"),
    "mixed": ("epsilon_range",),
}


def make_policy(name: str, env_name: str, **params: Any) -> Policy:
    """A scripted policy by name (``random``, ``greedy``, ``noisy``, ``mixed``) for an mpe2 env.

    Params: ``epsilon`` and ``rule`` for greedy/noisy (noisy defaults to ``epsilon=0.2``),
    ``epsilon_range`` for mixed (default ``(0.0, 0.6)``).
    """
    env = resolve_env_name(env_name)
    if name not in _POLICY_PARAMS:
        raise ValueError(f"unknown policy {name!r}; choose one of {', '.join(POLICY_NAMES)}")
    unknown = sorted(set(params) - set(_POLICY_PARAMS[name]))
    if unknown:
        accepted = ", ".join(_POLICY_PARAMS[name]) or "none"
        raise ValueError(f"policy {name!r} takes no parameter {unknown}; it accepts: {accepted}")
    controller = CONTROLLERS[env]()
    if name == "random":
        return RandomPolicy(controller.n_actions)
    if name == "greedy":
        return GreedyPolicy(controller, params.get("epsilon", 0.0), params.get("rule"))
    if name == "noisy":
        return GreedyPolicy(controller, params.get("epsilon", 0.2), params.get("rule"))
    return MixedPolicy(controller, tuple(params.get("epsilon_range", (0.0, 0.6))))
