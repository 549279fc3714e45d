"""Planner: an ego agent asks the models what the others will do and which action pays most.

    planner = Planner(world, behavior, PlannerConfig())        # or Planner.from_registry
    [decision] = planner.decide(history, ["agent_0"])           # history: a JointHistory
    decision.action, decision.predicted_return, decision.candidate_scores

For each ego agent, every candidate ego plan (a sequence of ``horizon`` actions) is rolled
through the world model ``n_samples`` times; in each sampled future the other agents'
actions are drawn from the behavior model step after step (so they react to the imagined
world), and the plan is scored by the mean discounted predicted reward of the whole team
(or of the ego alone), plus what the world model's value head expects the team to earn
after the horizon (``terminal_value``), minus ``disagreement_penalty`` times the std over
samples. The best plan's first action is returned, with the score of the best plan
starting with every other first action and the behavior model's most likely next action
of every other agent.

Candidates for discrete actions: "pulse" plans (default: each first action held for 1, 3
or all ``horizon`` steps, then ``idle_action``; 13 plans for MPE's 5 moves), exhaustive
search over the first ``depth`` actions with the last one held (``n_actions ** depth``
plans), or beam search over the whole horizon. Continuous actions: the cross-entropy method
(CEM). All candidates and samples run as one batch of
:func:`~foresight.training.models.rollout.rollout` (the rollout evaluation and ``/imagine``
use, with its termination and state rules: an agent whose termination is sampled earns
nothing after it), and the samples share their random numbers across candidates (common
random numbers), so two candidates are compared in the same sampled futures.

Several ego agents: by default (``sequential=False``) every ego plans in one batch, each
against the behavior model's forecast of all the others. With ``sequential=True`` egos plan
one after the other, in the order of their index in the history, and each later ego's
futures hold the earlier egos to their chosen plans, so a team of planners cannot all rush
for the same target on the strength of the same forecast (a deployed team can do this:
each agent can compute its lower-indexed teammates' decisions). On simple_spread both reach
the same team return (BENCHMARKS.md): the team reward already makes an ego leave a landmark
it forecasts a teammate to take. Sequential planning costs one rollout batch per ego.

History format (:class:`JointHistory`), the same windows the models train on: the last
``T`` joint observations of the episode, oldest first, every agent's observation padded
with zeros to the widest; with each of them the joint action taken just before it
(``prev_actions[t]`` led from ``obs[t-1]`` to ``obs[t]``), and ``start_step``, the episode
step of ``obs[0]``. When ``start_step == 0`` the first row of ``prev_actions`` is ignored.
A history shorter than a model's context is padded exactly as training windows are at an
episode start, so it is accepted when it begins at the episode start (``start_step == 0``);
a short history that begins later is refused (ValueError) unless
``PlannerConfig.pad_short_history`` is set.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from foresight.datasets.schema import DatasetSpec, view_of
from foresight.training.agents.objectives import LEARNED, resolve_objective
from foresight.training.data import Window, describe_spec
from foresight.training.models.graphs import BehaviorStep, TracedWorld
from foresight.training.models.rollout import (
    BehaviorStepper,
    RolloutNoise,
    low_precision,
    rollout,
)
from foresight.training.registry.card import ModelCard

Action = int | list[float]


@dataclass
class PlannerConfig:
    horizon: int = 6
    """H: imagined steps per plan. simple_spread agents need ~5-10 steps to reach a
    landmark; 6 sees which landmark ends up covered and keeps a decision for 3 agents
    under 50 ms on 2 CPU cores (8 does no better with a simulator as the world model)."""
    n_samples: int = 3
    """K: sampled futures per candidate (others' actions and world noise); common random
    numbers make few enough: 3 and 6 plan equally well on simple_spread."""
    search: str = "auto"
    """"exhaustive", "pulse", "beam" (discrete), "cem" (continuous) or "auto" (pulse for
    discrete actions, CEM for continuous ones)."""
    depth: int = 2
    """Exhaustive search: actions chosen freely at the first ``depth`` steps, the last
    one held to the horizon (n_actions ** depth plans: 25 for MPE's 5 moves)."""
    pulses: tuple[int, ...] = (1, 3)
    """Pulse search: each first action held for k steps (each k here, and the whole
    horizon), then ``idle_action``: cheap plans that can brake on a target."""
    idle_action: int = 0
    """The do-nothing action of pulse plans (MPE: 0)."""
    max_plans: int = 256
    """Refuse exhaustive searches larger than this (n_actions ** depth plans)."""
    beam_width: int = 2
    """Beam search: partial plans kept per first action after every step."""
    cem_population: int = 32
    """CEM: plans drawn per iteration."""
    cem_iterations: int = 3
    """CEM: refits of the plan distribution."""
    cem_elites: int = 6
    """CEM: best plans the distribution is refit to."""
    discount: float = 0.95
    """Per-step discount of predicted rewards (near steps are predicted better)."""
    terminal_value: bool = True
    """Add ``discount ** horizon`` times the world model's value at the last imagined step
    (the rewards the logged agents went on to earn from such a state:
    ``WorldModelConfig.value_steps``, discounted inside by the world model's
    ``value_discount``) to every plan's score, so plans are ranked beyond the horizon too.
    Only when plans are scored by the learned reward head (a known objective is not the
    reward the value was learned from), and only with a world model that has a value
    head."""
    team_reward: bool = True
    """Score by the sum of every present agent's predicted reward (shared tasks) rather
    than the ego's own. Not under a partial view: there a decentralized world model
    predicts each agent from what it sees, and an ego scores by its own reward."""
    disagreement_penalty: float = 0.0
    """Subtract this times the std of the return over samples (risk aversion, and a
    guard against futures the world model is unsure about)."""
    precision: str = "auto"
    """Arithmetic of the world model in rollouts: "float32", "bfloat16" (a copy of it with
    bfloat16 weights and activations; scores move by ~1e-2, so decisions near a tie can
    change), or "auto": bfloat16 for world models 128 or more wide on a device with
    bfloat16 matrix units, float32 otherwise (:func:`resolve_precision`). BENCHMARKS.md has
    the speed and the closed-loop return of both."""
    traced: bool = True
    """Run the world model's network and the behavior model's step in rollouts from frozen
    TorchScript graphs (:mod:`foresight.training.models.graphs`): the same outputs without
    Python between their ops, ~1 ms less per imagined step on a CPU; traced on the first
    decision (~0.5 s). False runs them eagerly."""
    objective: str = "learned"
    """What imagined futures are scored by (:mod:`foresight.training.agents.objectives`):
    "learned", the world model's reward head (and its value head: ``terminal_value``); a
    built-in objective (the env's own reward computed on imagined observations:
    "simple_spread", "simple_tag"); or a user's, from the ``foresight.objectives`` entry
    points."""
    sample_obs: bool = True
    """Sample the world model's next observations; False rolls its mean forward."""
    incremental_behavior: bool = True
    """Advance the behavior model's state (its evidence for each style, and its GRU state
    where it has one) one step per imagined step (fast) instead of re-reading its last
    ``context`` steps every step (exact, ~context times the work). The two agree at the
    first step; later the state also remembers steps the window drops."""
    sequential: bool = False
    """Egos plan in index order, later ones holding earlier ones to their chosen plans
    (one rollout batch per ego). False: one batch for all, each ego against the behavior
    model's forecast of the others; as good on simple_spread, and 2-3x faster."""
    pad_short_history: bool = False
    """Accept a history shorter than the models' context that does not begin at the
    episode start, padding it as if it did (otherwise ValueError)."""
    seed: int = 0
    """Seeds the sampled futures; each decide() call draws fresh ones from this stream."""

    def __post_init__(self) -> None:
        for name in ("horizon", "n_samples", "depth", "beam_width", "cem_population"):
            if getattr(self, name) < 1:
                raise ValueError(f"PlannerConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.search not in ("auto", "exhaustive", "pulse", "beam", "cem"):
            raise ValueError(
                "PlannerConfig.search must be auto, exhaustive, pulse, beam or cem, "
                f"got {self.search!r}"
            )
        if self.precision not in ("auto", "float32", "bfloat16"):
            raise ValueError(
                f"PlannerConfig.precision must be auto, float32 or bfloat16, got {self.precision!r}"
            )
        if not 0 < self.cem_elites <= self.cem_population:
            raise ValueError("PlannerConfig.cem_elites must be in 1..cem_population")


@dataclass
class JointHistory:
    """The last ``T`` joint observations of one episode (see the module docstring)."""

    agent_ids: list[str]
    """Agent id of each column n."""
    obs: Any
    """(T, N, D) observations, oldest first, zero-padded to the widest agent's size D."""
    prev_actions: Any
    """(T, N) int or (T, N, A) float: the joint action taken just before each observation."""
    start_step: int = 0
    """Episode step of ``obs[0]``; 0 means the history begins at the episode start."""
    obs_sizes: dict[str, int] | None = None
    """Observation size of each agent (default: D for all)."""

    @property
    def length(self) -> int:
        return int(np.shape(self.obs)[0])


@dataclass
class Decision:
    """What the planner decided for one ego agent."""

    agent: str
    action: Action
    """Best first action: an int (discrete) or a list of floats (continuous)."""
    predicted_return: float
    """Score of the best plan: mean discounted predicted return, plus the value after the
    horizon (``terminal_value``), minus the penalty."""
    candidate_scores: list[tuple[Action, float]]
    """(first action, score of the best plan that starts with it); discrete: every action
    in index order; continuous: the final CEM population's best, best first."""
    predicted_others: dict[str, Action]
    """Behavior model's most likely next action of every other agent."""
    plan: list[Action] = field(default_factory=list)
    """The whole best plan (``horizon`` actions)."""


def spec_core(spec: dict | None) -> dict[str, Any]:
    """The parts of a dataset spec two models must share to plan together."""
    if spec is None:
        return {}
    s = DatasetSpec.from_dict(spec)
    return {
        "env": s.env,
        "agents": dict(s.agents),
        "action": s.action,
        "state_dim": s.state_dim,
        "view": view_of(s),
    }


def check_same_dataset(
    world,
    behavior,
    world_card: ModelCard | Mapping | None = None,
    behavior_card: ModelCard | Mapping | None = None,
) -> None:
    """ValueError, naming both, when the models were trained on different datasets.

    The specs in their configs must agree (env, agents and observation sizes, action spec,
    state size); with cards (or their JSON), their dataset names must agree too (versions
    may differ).
    """
    world_card, behavior_card = ModelCard.coerce(world_card), ModelCard.coerce(behavior_card)

    def label(kind: str, model, card: ModelCard | None) -> str:
        spec = getattr(model.config, "spec", None)
        where = ""
        if card is not None and card.dataset is not None:
            where = f" trained on {card.dataset.resolved or card.dataset.name}"
        desc = describe_spec(DatasetSpec.from_dict(spec)) if spec else "no spec"
        return f"{kind} model{where} [{desc}]"

    ws, bs = getattr(world.config, "spec", None), getattr(behavior.config, "spec", None)
    if ws is None or bs is None:
        raise ValueError(
            "cannot check that the world and behavior models fit each other: "
            f"{label('world', world, world_card)}, {label('behavior', behavior, behavior_card)}"
        )
    problem = None
    if spec_core(ws) != spec_core(bs):
        problem = "their dataset specs differ"
    elif world_card is not None and behavior_card is not None:
        wn = world_card.dataset.name if world_card.dataset else None
        bn = behavior_card.dataset.name if behavior_card.dataset else None
        if wn and bn and wn != bn:
            problem = f"they come from different datasets ({wn!r} vs {bn!r})"
    if problem:
        raise ValueError(
            f"world and behavior models were trained on different datasets: {problem}. "
            f"{label('world', world, world_card)}; {label('behavior', behavior, behavior_card)}. "
            "Plan with a world and a behavior model trained on the same dataset."
        )


class Planner:
    """Plans for ego agents with a world model and a behavior model (see module docstring).

    ``world``: a :class:`~foresight.training.models.world_model.WorldModel` (or anything with ``predict``,
    ``context`` and ``config.spec``); ``behavior``: a
    :class:`~foresight.training.models.behavior_model.BehaviorModel`. Pass their registry cards to check the
    dataset names as well as the specs.

    ``reward_fn`` (optional): a known objective, ``(next_obs (R, N, D), joint action (R, N))
    -> (R, N)`` rewards, used instead of the world model's reward head; the models still
    forecast the world and the others. Without it plans are scored by predicted reward.
    """

    def __init__(
        self,
        world,
        behavior,
        config: PlannerConfig | None = None,
        world_card: ModelCard | Mapping | None = None,
        behavior_card: ModelCard | Mapping | None = None,
        reward_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    ):
        check_same_dataset(world, behavior, world_card, behavior_card)
        self.world, self.behavior = world.eval(), behavior.eval()
        self.config = config or PlannerConfig()
        spec = DatasetSpec.from_dict(world.config.spec)
        self.spec = spec
        if reward_fn is not None and self.config.objective != LEARNED:
            raise ValueError(
                f"pass a reward_fn or PlannerConfig.objective ({self.config.objective!r}), not both"
            )
        self.reward_fn = reward_fn or resolve_objective(self.config.objective, spec)
        self._objective_reads_roster = reward_fn is None and self.reward_fn is not None
        """A named objective reads the models' roster, in its order (see _in_roster_order)."""
        self._objectives: dict[str, Callable | None] = {}  # shared by with_objective copies
        self.discrete = spec.action.discrete
        self.n_actions = spec.action.n if self.discrete else spec.action.dim
        self.low = spec.action.low if spec.action.low is not None else -1.0
        self.high = spec.action.high if spec.action.high is not None else 1.0
        self.context = max(world.context, behavior.context)
        self.team_reward = self.config.team_reward and not getattr(world, "decentralized", False)
        """Score by every present agent's predicted reward. With a decentralized world model
        (a partial view) an ego scores by its own: then nothing the ego does not see (the
        others' histories, their predicted rewards) changes its decision."""
        self.device = next(world.parameters()).device
        self.rollout_world = self.world
        """The world model rollouts run (a bfloat16 copy with ``precision="bfloat16"``,
        traced with ``traced``)."""
        if resolve_precision(self.config.precision, self.device, world) == "bfloat16":
            self.rollout_world = low_precision(self.world)
        self.behavior_step = None
        """The behavior model's incremental step from graphs (with ``traced``), or None."""
        if self.config.traced:
            if hasattr(self.rollout_world, "network"):
                self.rollout_world = TracedWorld(self.rollout_world)
            if hasattr(self.behavior, "scan"):
                self.behavior_step = BehaviorStep(self.behavior)
        self.generator = torch.Generator(device=self.device).manual_seed(self.config.seed)
        search = self.config.search
        if search == "auto":
            search = "pulse" if self.discrete else "cem"
        if self.discrete and search == "cem":
            raise ValueError("CEM searches continuous actions; this action spec is discrete")
        if not self.discrete and search != "cem":
            raise ValueError(f"{search} search needs discrete actions; use search='cem'")
        if search == "exhaustive" and self.n_actions ** min(
            self.config.depth, self.config.horizon
        ) > (self.config.max_plans):
            raise ValueError(
                f"exhaustive search over {self.n_actions}**{self.config.depth} plans exceeds "
                f"max_plans={self.config.max_plans}; lower depth or use search='beam'"
            )
        if search == "pulse" and not 0 <= self.config.idle_action < self.n_actions:
            raise ValueError(
                f"idle_action {self.config.idle_action} is not an action (0..{self.n_actions - 1})"
            )
        self.search = search

    @classmethod
    def from_registry(
        cls, world_ref: str, behavior_ref: str, store=None, config: PlannerConfig | None = None
    ) -> Planner:
        """Load both models from the registry and check their cards name the same dataset."""
        from foresight.training.registry import load_registered

        world, wmv = load_registered(world_ref, store)
        behavior, bmv = load_registered(behavior_ref, store)
        return cls(world, behavior, config, world_card=wmv.card, behavior_card=bmv.card)

    # -- input ---------------------------------------------------------------------------
    def window(self, history: JointHistory) -> Window:
        """The history as a batch-of-one :class:`Window` of ``self.context`` steps."""
        return history_window(
            history,
            self.context,
            self.world.obs_dim,
            self.spec.action,
            self.device,
            self.config.pad_short_history,
        )

    def with_objective(self, name: str) -> Planner:
        """This planner (same models, graphs and random stream) scoring by objective
        ``name`` (:mod:`~foresight.training.agents.objectives`); each objective is resolved
        once per planner. ValueError naming it when it is unknown or does not fit."""
        if name == self.config.objective:
            return self
        if name not in self._objectives:
            self._objectives[name] = resolve_objective(name, self.spec)
        other = copy.copy(self)
        other.config = replace(self.config, objective=name)
        other.reward_fn = self._objectives[name]
        other._objective_reads_roster = other.reward_fn is not None
        return other

    def warm_up(self) -> None:
        """One decision on a made-up history of every agent, so that the first real one
        does not pay for tracing the graphs (``traced``); the stream of sampled futures is
        left where it was."""
        spec = self.spec
        ids = list(spec.agents)
        zeros = (
            (self.context, len(ids)) if self.discrete else (self.context, len(ids), self.n_actions)
        )
        history = JointHistory(
            agent_ids=ids,
            obs=np.zeros((self.context, len(ids), self.world.obs_dim), dtype=np.float32),
            prev_actions=np.zeros(zeros, dtype=np.int64 if self.discrete else np.float32),
            obs_sizes=dict(spec.agents),
        )
        state = self.generator.get_state()
        try:
            self.decide(history, ids)
        finally:
            self.generator.set_state(state)

    # -- deciding ------------------------------------------------------------------------
    def decide(
        self,
        history: JointHistory,
        ego_agents: Sequence[str],
        team: Sequence[str] | None = None,
    ) -> list[Decision]:
        """One :class:`Decision` per ego agent, in the order given. ``team``: the agents
        whose predicted rewards a plan's score sums (a competitive env's own side; None:
        every agent). It applies with ``team_reward``; without it (a decentralized world
        model) an ego scores by its own reward anyway."""
        with torch.inference_mode():
            return self._decide(history, ego_agents, team)

    def _decide(
        self, history: JointHistory, ego_agents: Sequence[str], team: Sequence[str] | None
    ) -> list[Decision]:
        ids = list(history.agent_ids)
        for role, agents in (("ego", ego_agents), ("team", team or [])):
            for a in agents:
                if a not in ids:
                    raise ValueError(f"{role} agent {a!r} is not in this episode; agents are {ids}")
        if len(set(ego_agents)) != len(ego_agents):
            raise ValueError(f"ego agents repeat: {list(ego_agents)}")
        scoring = self._scoring(ids, team)
        base = self.window(history)
        stepper = BehaviorStepper(
            self.behavior, base, self.config.incremental_behavior, self.behavior_step
        )
        dist = stepper.distribution()
        mode = dist.mode()[0]  # (N,) or (N, A)
        order = sorted(ego_agents, key=ids.index)
        chosen: dict[int, torch.Tensor] = {}  # ego index -> plan (H[, A])
        results: dict[str, Decision] = {}
        if self.config.sequential:
            for a in order:
                n = ids.index(a)
                [res] = self._plan([n], base, stepper, chosen, scoring)
                chosen[n] = res[1]
                results[a] = self._decision(a, res, ids, mode)
        else:
            idx = [ids.index(a) for a in order]
            for a, res in zip(order, self._plan(idx, base, stepper, {}, scoring), strict=True):
                results[a] = self._decision(a, res, ids, mode)
        return [results[a] for a in ego_agents]

    def _scoring(self, ids: list[str], team: Sequence[str] | None) -> _Scoring:
        """How this decision's plans are scored, for a history of agents ``ids``."""
        mask = None
        if team is not None:
            if not team:
                raise ValueError("team is empty: name the agents whose rewards count, or None")
            mask = torch.tensor([a in team for a in ids], device=self.device)
        reward_fn = self.reward_fn
        if reward_fn is not None and self._objective_reads_roster:
            reward_fn = _in_roster_order(
                reward_fn, ids, list(self.spec.agents), self.config.objective
            )
        return _Scoring(mask, reward_fn)

    def _to_action(self, x: torch.Tensor) -> Action:
        return int(x) if self.discrete else [float(v) for v in x.reshape(-1)]

    def _decision(self, agent, res, ids, mode) -> Decision:
        score, plan, cands = res
        n = ids.index(agent)
        others = {b: self._to_action(mode[m]) for m, b in enumerate(ids) if m != n}
        return Decision(
            agent=agent,
            action=self._to_action(plan[0]),
            predicted_return=float(score),
            candidate_scores=cands,
            predicted_others=others,
            plan=[self._to_action(p) for p in plan],
        )

    def _plan(
        self, egos: list[int], base: Window, stepper, fixed: dict[int, torch.Tensor], scoring
    ):
        """[(score, plan (H[, A]), candidate scores)] for each ego index."""
        if self.search in ("exhaustive", "pulse"):
            plans = self._exhaustive_plans() if self.search == "exhaustive" else self._pulses()
            scores = self._score([plans] * len(egos), egos, base, stepper, fixed, scoring)
            return [self._best_discrete(plans, s) for s in scores]
        if self.search == "beam":
            return [self._beam(e, base, stepper, fixed, scoring) for e in egos]
        return [self._cem(e, base, stepper, fixed, scoring) for e in egos]

    def _exhaustive_plans(self) -> torch.Tensor:
        H, n = self.config.horizon, self.n_actions
        d = min(self.config.depth, H)
        grids = torch.cartesian_prod(*[torch.arange(n)] * d) if d > 1 else torch.arange(n)[:, None]
        tail = grids[:, -1:].expand(-1, H - d)  # hold the last chosen action
        return torch.cat([grids, tail], 1).to(self.device)  # (n**d, H)

    def _pulses(self) -> torch.Tensor:
        H, n = self.config.horizon, self.n_actions
        lengths = sorted({min(k, H) for k in self.config.pulses} | {H})
        plans = {(a,) * k + (self.config.idle_action,) * (H - k) for a in range(n) for k in lengths}
        return torch.tensor(sorted(plans), device=self.device)  # (P, H)

    def _best_discrete(self, plans: torch.Tensor, scores: torch.Tensor):
        best = int(scores.argmax())
        cands = []
        for a in range(self.n_actions):
            mask = plans[:, 0] == a
            if mask.any():
                cands.append((a, float(scores[mask].max())))
        return float(scores[best]), plans[best], cands

    def _beam(self, ego: int, base: Window, stepper, fixed, scoring):
        """Beam search over the whole horizon, keeping ``beam_width`` plans per first action.

        Partial plans are extended by every action and re-scored from the start (with the
        last action held to the horizon), so each round is one batched exhaustive scoring.
        """
        H, n, W = self.config.horizon, self.n_actions, self.config.beam_width
        prefixes = torch.arange(n, device=self.device)[:, None]  # (P, 1)
        for d in range(1, H + 1):
            plans = torch.cat([prefixes, prefixes[:, -1:].expand(-1, H - d)], 1)  # (P, H)
            [scores] = self._score([plans], [ego], base, stepper, fixed, scoring)
            if d == H:
                break
            keep = []
            for a in range(n):  # the best W partial plans for each first action
                idx = torch.nonzero(prefixes[:, 0] == a).squeeze(1)
                keep.append(idx[scores[idx].argsort(descending=True)[:W]])
            prefixes = prefixes[torch.cat(keep)]
            P = prefixes.shape[0]
            grow = torch.arange(n, device=self.device).repeat(P)[:, None]
            prefixes = torch.cat([prefixes.repeat_interleave(n, 0), grow], 1)
        return self._best_discrete(plans, scores)

    def _cem(self, ego: int, base: Window, stepper, fixed, scoring):
        c = self.config
        H, A = c.horizon, self.n_actions
        mean = torch.zeros(H, A, device=self.device)
        std = torch.full((H, A), (self.high - self.low) / 2, device=self.device)
        best_plans = best_scores = None
        for _ in range(c.cem_iterations):
            eps = torch.randn(c.cem_population, H, A, generator=self.generator, device=self.device)
            plans = (mean + std * eps).clamp(self.low, self.high)
            plans[0] = mean.clamp(self.low, self.high)
            [scores] = self._score([plans], [ego], base, stepper, fixed, scoring)
            elite = scores.argsort(descending=True)[: c.cem_elites]
            mean, std = plans[elite].mean(0), plans[elite].std(0).clamp_min(1e-3)
            best_plans, best_scores = plans, scores
        top = best_scores.argsort(descending=True)
        cands = [(self._to_action(best_plans[i, 0]), float(best_scores[i])) for i in top[:8]]
        i = int(top[0])
        return float(best_scores[i]), best_plans[i], cands

    def _score(
        self,
        plan_sets: list[torch.Tensor],
        egos: list[int],
        base: Window,
        stepper: BehaviorStepper,
        fixed: dict[int, torch.Tensor],
        scoring: _Scoring | None = None,
    ) -> list[torch.Tensor]:
        """Score every plan of every ego in one batched rollout: a (P_e,) tensor per ego."""
        c = self.config
        K, H = c.n_samples, c.horizon
        N, D = base.num_agents, base.obs.shape[-1]
        dev = self.device
        sizes = [p.shape[0] for p in plan_sets]
        R = sum(sizes) * K
        # Row r = (ego group, plan p, sample k): plan actions and which agents follow plans.
        shape = (R, H, N) if self.discrete else (R, H, N, self.n_actions)
        acts = torch.zeros(shape, dtype=torch.long if self.discrete else torch.float32, device=dev)
        held = torch.zeros(R, N, dtype=torch.bool, device=dev)
        start = 0
        for plans, e in zip(plan_sets, egos, strict=True):
            rows = slice(start, start + plans.shape[0] * K)
            acts[rows, :, e] = plans.repeat_interleave(K, 0)
            held[rows, e] = True
            for m, plan in fixed.items():
                acts[rows, :, m] = plan
                held[rows, m] = True
            start += plans.shape[0] * K
        reward_fn = self.reward_fn if scoring is None else scoring.reward_fn
        # Common random numbers: sample k sees the same noise under every candidate.
        noise = RolloutNoise.draw(
            K,
            H,
            N,
            D,
            self.n_actions,
            self.discrete,
            getattr(getattr(self.world, "config", None), "n_mixture", 1),
            self.generator,
            dev,
        )
        out = rollout(
            self.rollout_world,
            stepper,
            base,
            H,
            noise,
            start_of=torch.zeros(R, dtype=torch.long, device=dev),
            sample_of=torch.arange(R, device=dev) % K,
            plans=acts,
            held=held,
            reward_fn=reward_fn,
            sample_next=c.sample_obs,
        )
        team = None if scoring is None else scoring.team
        ego_col = None if self.team_reward else self._ego_col(sizes, egos, K)  # (R, 1)

        def counted(x: torch.Tensor) -> torch.Tensor:
            """(R, ..., N) per agent -> (R, ...): the team's sum, or the ego's own."""
            if ego_col is None:
                return (x if team is None else x * team).sum(-1)
            col = ego_col.view(R, *([1] * (x.ndim - 1)))
            return x.gather(-1, col.expand(*x.shape[:-1], 1))[..., 0]

        per_step = counted(out.reward)  # (R, H)
        ret = torch.zeros(R, device=dev)
        for h in range(H):
            ret = ret + (c.discount**h) * per_step[:, h]  # (R,)
        if c.terminal_value and reward_fn is None and out.value is not None:
            ret = ret + (c.discount**H) * counted(out.value)
        ret = ret.view(-1, K)  # (P_total, K)
        score = ret.mean(1)
        if c.disagreement_penalty and K > 1:
            score = score - c.disagreement_penalty * ret.std(1)
        return list(score.split(sizes))

    def _ego_col(self, sizes, egos, K) -> torch.Tensor:
        cols = [torch.full((s * K,), e, dtype=torch.long) for s, e in zip(sizes, egos, strict=True)]
        return torch.cat(cols).to(self.device)[:, None]


@dataclass
class _Scoring:
    """What one decision's plans are scored by."""

    team: torch.Tensor | None
    """(N,) bool: the agents whose rewards a team score sums (None: every agent)."""
    reward_fn: Callable | None
    """The objective's rewards of imagined steps (None: the world model's reward head)."""


def _in_roster_order(
    reward_fn: Callable, ids: list[str], roster: list[str], objective: str
) -> Callable:
    """``reward_fn`` of a named objective, made for the models' ``roster`` (its order and
    agents: simple_tag's tells adversaries from the prey by row), applied to a history of
    agents ``ids``: the rows are put in roster order and the rewards back. A history
    without every agent of the roster is refused, naming the missing ones."""
    if ids == roster:
        return reward_fn
    missing = [a for a in roster if a not in ids]
    if missing or len(ids) != len(roster):
        raise ValueError(
            f"objective {objective!r} reads every agent of the models' roster "
            f"{roster}; this history lacks {missing or 'none'} and has {ids}"
        )
    to_roster = [ids.index(a) for a in roster]
    back = [roster.index(a) for a in ids]

    def reordered(next_obs: torch.Tensor, joint: torch.Tensor) -> torch.Tensor:
        return reward_fn(next_obs[:, to_roster], joint[:, to_roster])[:, back]

    return reordered


def resolve_precision(precision: str, device: torch.device, world=None) -> str:
    """The arithmetic ``precision="auto"`` means for ``world`` on ``device``: bfloat16 for
    world models at least 128 wide on a device with bfloat16 matrix units (a CPU with AMX
    or AVX512-BF16, a CUDA GPU that supports it), float32 otherwise: narrower models spend
    their time between the matrix products, where bfloat16 is slower on the CPU."""
    if precision != "auto":
        return precision
    if getattr(getattr(world, "config", None), "d_model", 0) < 128:
        return "float32"
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    if device.type == "cpu" and (
        torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()
    ):
        return "bfloat16"
    return "float32"


def history_window(
    history: JointHistory,
    context: int,
    obs_dim: int,
    action_spec,
    device: torch.device | str = "cpu",
    pad_short_history: bool = False,
) -> Window:
    """A :class:`JointHistory` as a batch-of-one :class:`Window` of ``context`` steps.

    ``action_spec``: the models' :class:`~foresight.datasets.schema.ActionSpec`. Errors name the
    field and what it should be.
    """
    discrete = action_spec.discrete
    n_actions = action_spec.n if discrete else action_spec.dim
    ids = list(history.agent_ids)
    obs = torch.as_tensor(np.asarray(history.obs, dtype=np.float32), device=device)
    if obs.ndim != 3 or obs.shape[1] != len(ids):
        raise ValueError(
            f"history.obs must be (T, N, D) with N = {len(ids)} agents, got {tuple(obs.shape)}"
        )
    T, N, D = obs.shape
    if T < 1:
        raise ValueError("history holds no observation")
    if obs_dim < D:
        raise ValueError(f"history observations have {D} features; the models read {obs_dim}")
    if obs_dim > D:
        obs = F.pad(obs, (0, obs_dim - D))
    sizes = history.obs_sizes or {}
    unknown = sorted(set(sizes) - set(ids))
    if unknown:
        raise ValueError(f"history.obs_sizes names agents {unknown} not in agent_ids {ids}")
    fm = torch.zeros(N, obs_dim, dtype=torch.bool, device=device)
    for n, a in enumerate(ids):
        fm[n, : sizes.get(a, D)] = True
    dtype = torch.long if discrete else torch.float32
    prev = torch.as_tensor(np.asarray(history.prev_actions), device=device).to(dtype)
    want = (T, N) if discrete else (T, N, n_actions)
    if tuple(prev.shape) != want:
        raise ValueError(f"history.prev_actions must have shape {want}, got {tuple(prev.shape)}")
    if discrete and ((prev < 0) | (prev >= n_actions)).any():
        raise ValueError(f"history.prev_actions hold actions outside 0..{n_actions - 1}")
    if context > T and history.start_step > 0 and not pad_short_history:
        raise ValueError(
            f"history has {T} steps but the models read {context}, and it does not begin at "
            f"the episode start (start_step={history.start_step}); pass at least {context} "
            "steps, the whole episode so far, or set pad_short_history"
        )
    prev_valid = torch.ones(T, N, dtype=torch.bool, device=device)
    if history.start_step == 0:
        prev_valid[0] = False
        prev[0] = 0
    action = torch.cat([prev[1:], torch.zeros_like(prev[:1])], 0)  # (T, N[, A]) taken at t
    one = lambda x: x[None]  # noqa: E731  (T, ...) -> (1, T, ...)
    w = Window(
        obs=one(obs * fm),  # (1, T, N, D)
        feat_mask=fm,
        present=torch.ones(1, T, N, dtype=torch.bool, device=device),
        time_valid=torch.ones(1, T, dtype=torch.bool, device=device),
        action=one(action),
        prev_action=one(prev),
        prev_valid=one(prev_valid),
        prev_reward=torch.zeros(1, T, N, device=device),
    )
    return w.last(context)


def history_from_episode(
    agent_ids: list[str],
    obs: Sequence[np.ndarray],
    actions: Sequence[np.ndarray],
    context: int,
    obs_sizes: dict[str, int] | None = None,
    action_dim: int | None = None,
) -> JointHistory:
    """The :class:`JointHistory` of the last ``context`` steps of an episode in progress.

    ``obs``: every joint observation so far (each (N, D)); ``actions``: the joint actions
    taken so far (one fewer than ``obs``; each (N,) int or (N, A) float with
    ``action_dim=A``).
    """
    if len(actions) != len(obs) - 1:
        raise ValueError(
            f"an episode of {len(obs)} observations needs {len(obs) - 1} actions, got {len(actions)}"
        )
    n = len(agent_ids)
    T = min(context, len(obs))
    start = len(obs) - T
    none = np.zeros(n, np.int64) if action_dim is None else np.zeros((n, action_dim), np.float32)
    prev = [np.asarray(actions[t - 1]) if t > 0 else none for t in range(start, len(obs))]
    return JointHistory(
        agent_ids, np.stack(obs[start:]), np.stack(prev), start_step=start, obs_sizes=obs_sizes
    )
