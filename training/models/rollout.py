"""One imagined rollout, shared by evaluation, the service's ``/imagine`` and the planner.

    noise = RolloutNoise.draw(S, H, N, D, n_actions, discrete, n_mixture, generator)
    out = rollout(world, policy, start, H, noise, sample_of=..., plans=..., held=...)
    out.reward  # (R, H, N)

Each row of a rollout is one imagined future: a start (a row of the ``start`` window), a
noise sample, and a plan for the agents it holds. At every step h the agents without a plan
act by the policy (a behavior model, read through a :class:`BehaviorStepper`), the world
model predicts the step after the joint action, and the rollout samples it. What the steps
mean (one contract for every caller):

- ``reward[h]``: each agent's expected reward for the joint action at h (the world model's
  reward head, or ``reward_fn`` of the sampled next observation).
- ``value``: what each agent is expected to earn after the last step, from the world
  model's value head at that step (None from a world without one); zero for an agent
  whose episode ended.
- Termination is per agent and absorbing. An agent whose termination is sampled after
  step h keeps its reward and its final observation of h; from h+1 on it is absent, as
  agents that leave are in the data: zero observation, zero reward, its actions have no
  effect, and returns stop counting it. ``terminated[h:]`` stays True. Agents absent at the
  start stay absent.
- The global state is not predicted: steps of the start window keep their logged state,
  imagined steps have none (``state_valid`` False).
- Noise is drawn up front per sample index. Rows with the same ``sample_of`` see the same
  random numbers (common random numbers: the planner compares plans in the same futures);
  :func:`imagine` gives every future its own sample. Rows that share a start, a sample
  and every joint action so far are in the same state: the models run once per distinct
  state, which is exact.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch

from foresight.training.data import Window
from foresight.training.models.world_model import ObsDistribution


def append_step(
    w: Window, obs: torch.Tensor, action: torch.Tensor, present: torch.Tensor, reward: torch.Tensor
) -> Window:
    """Shift the window by one step: the new last step holds ``obs`` (B, N, D), reached by
    ``action`` from the old last step; its own action is unset. ``present`` (B, N): who is
    there at the new step (and acted at the old one); ``reward`` (B, N) of that action."""
    one = lambda x: x[:, None]  # noqa: E731  (B, ...) -> (B, 1, ...)
    B = w.batch_size
    new = Window(
        obs=torch.cat([w.obs[:, 1:], one(obs)], 1),
        feat_mask=w.feat_mask,
        present=torch.cat([w.present[:, 1:], one(present)], 1),
        time_valid=torch.cat([w.time_valid[:, 1:], w.time_valid.new_ones(B, 1)], 1),
        action=torch.cat([w.action[:, 1:], one(torch.zeros_like(action))], 1),
        prev_action=torch.cat([w.prev_action[:, 1:], one(action)], 1),
        prev_valid=torch.cat([w.prev_valid[:, 1:], one(present)], 1),
        prev_reward=torch.cat([w.prev_reward[:, 1:], one(reward * present)], 1),
    )
    if w.state is not None:  # the state is not predicted: unknown from here on
        new.state = torch.cat([w.state[:, 1:], torch.zeros_like(w.state[:, :1])], 1)
        new.state_valid = torch.cat([w.state_valid[:, 1:], w.state_valid.new_zeros(B, 1)], 1)
    return new


def _concat_step(w: Window, step: Window) -> Window:
    cat = lambda a, b: torch.cat([a, b], dim=1)  # noqa: E731
    return Window(
        obs=cat(w.obs, step.obs),
        feat_mask=w.feat_mask,
        present=cat(w.present, step.present),
        time_valid=cat(w.time_valid, step.time_valid),
        action=cat(w.action, step.action),
        prev_action=cat(w.prev_action, step.prev_action),
        prev_valid=cat(w.prev_valid, step.prev_valid),
        prev_reward=cat(w.prev_reward, step.prev_reward),
    )


class BehaviorStepper:
    """A policy's action distribution, advanced one imagined step at a time.

    A behavior model with that structure reads the history once and carries its state (the
    evidence for each style, and the GRU state where it has one), so each imagined step
    costs one step of the model. Other policies (centralized models, baselines with only
    ``action_distribution``), or ``incremental=False``, re-read their last ``context``
    steps at every step: exact, and ~context times the work. The two agree at the first
    step; later the incremental state also remembers steps the window drops.
    """

    def __init__(self, policy, window: Window, incremental: bool = True, step=None):
        self.model = m = policy
        self.step = step
        """The incremental step from graphs of ``policy`` (a :class:`~.graphs.BehaviorStep`),
        or None: the model's own methods."""
        self.incremental = (
            incremental
            and all(hasattr(m, a) for a in ("step_features", "scan", "distribution"))
            and not getattr(getattr(m, "config", None), "centralized", False)
        )
        self.window = window.last(getattr(policy, "context", 1))
        if self.incremental:
            self.out, self.state = self._encode(self.window)  # out (B, N, out)
        else:
            self.out = None

    def _encode(self, w: Window, state=None):
        if self.step is not None:
            return self.step(w, state)
        x = self.model.step_features(w)
        out, state = self.model.scan(x, w, state, last_only=True)  # (B, 1, N, out)
        return out[:, -1], state

    def distribution(self):
        """The next action of every agent of every row, batch dims (B, N)."""
        if self.incremental:
            return self.model.distribution(self.out)
        return self.model.action_distribution(self.window)

    def repeat(self, rows: torch.Tensor) -> BehaviorStepper:
        """A stepper for a batch whose row i is this batch's row ``rows[i]``."""
        new = object.__new__(BehaviorStepper)
        new.model, new.incremental, new.step = self.model, self.incremental, self.step
        new.window = self.window if self.incremental else self.window.index(rows)
        if self.incremental:
            new.state = self.state.index(rows)
            new.out = self.out[rows]
        return new

    def advance(self, step: Window) -> None:
        """Feed one new step (a window of length 1 holding obs, prev action and flags)."""
        if self.incremental:
            self.out, self.state = self._encode(step, self.state)
        else:
            self.window = _concat_step(self.window, step).last(getattr(self.model, "context", 1))


def low_precision(world: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``world`` whose weights are bfloat16 (its normalization buffers stay
    float32), for rollouts on CPUs with bfloat16 matrix units: the weights are cast once
    (autocast casts them per call) and the activations between the layers stay bfloat16,
    half the memory traffic. Its outputs are float32; they differ from the float32 model's
    by that rounding."""
    low = copy.deepcopy(world).eval()
    for p in low.parameters():
        p.data = p.data.to(torch.bfloat16)
    return low


@dataclass
class RolloutNoise:
    """Every random number of a rollout, per sample index s, step h and agent n."""

    action: torch.Tensor
    """(S, H, N, n) uniforms driving categorical actions (Gumbel), or (S, H, N, A)
    standard normals for continuous ones."""
    obs: torch.Tensor
    """(S, H, N, D) standard normals of the next observation."""
    mix: torch.Tensor | None
    """(S, H, N, D, M) uniforms choosing a mixture component (None: one component)."""
    term: torch.Tensor
    """(S, H, N) uniforms of the termination draw."""

    @property
    def samples(self) -> int:
        return self.obs.shape[0]

    @classmethod
    def draw(
        cls,
        samples: int,
        horizon: int,
        n_agents: int,
        obs_dim: int,
        n_actions: int,
        discrete: bool,
        n_mixture: int = 1,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
    ) -> RolloutNoise:
        S, H, N, g = samples, horizon, n_agents, generator
        act = (torch.rand if discrete else torch.randn)(
            S, H, N, n_actions, generator=g, device=device
        )
        obs = torch.randn(S, H, N, obs_dim, generator=g, device=device)
        mix = None
        if n_mixture > 1:
            mix = torch.rand(S, H, N, obs_dim, n_mixture, generator=g, device=device)
        term = torch.rand(S, H, N, generator=g, device=device)
        return cls(act, obs, mix, term)


@dataclass
class Rollout:
    """What a rollout of R rows and H steps produced."""

    reward: torch.Tensor
    """(R, H, N) each agent's reward for the joint action at h; 0 once it has terminated."""
    terminated: torch.Tensor
    """(R, H, N) bool: the agent's episode has ended by the end of step h (absorbing)."""
    value: torch.Tensor | None = None
    """(R, N) each agent's predicted earnings after step H-1 (0 once it has terminated);
    None when the world model has no value head."""
    action: torch.Tensor | None = None
    """(R, H, N[, A]) the joint action at h (recorded with ``record_all``)."""
    obs: torch.Tensor | None = None
    """(R, H, N, D) the sampled observation after step h (zeros once the agent is gone)."""
    obs_dist: ObsDistribution | None = None
    """The predicted distribution of each of those observations, batch dims (R, H, N)."""
    states: int = 0
    """World-model rows computed, summed over steps (R * H without shared states)."""


def gumbel_argmax(logits: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Categorical sample from ``logits`` (..., n) driven by uniforms ``u`` of that shape."""
    g = -torch.log(-torch.log(u.clamp(1e-9, 1 - 1e-9)))
    return (logits.float() + g).argmax(-1)


def sample_obs(dist: ObsDistribution, z: torch.Tensor, u: torch.Tensor | None) -> torch.Tensor:
    """A sample of the next observation driven by normals ``z`` (..., D) and, for a
    mixture, uniforms ``u`` (..., D, M) choosing the component."""
    M = dist.logits.shape[-1]
    if M == 1 or u is None:
        loc, scale = dist.loc[..., 0], dist.scale[..., 0]
    else:
        k = gumbel_argmax(dist.logits, u[..., :M])[..., None]  # (..., D, 1)
        loc, scale = dist.loc.gather(-1, k)[..., 0], dist.scale.gather(-1, k)[..., 0]
    return loc + scale * z


def distinct_states(
    state_of: torch.Tensor, sample_of: torch.Tensor, joint: torch.Tensor, discrete: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The distinct (parent state, sample, joint action) of R rows, in lexicographic order:
    ``(parent (U,), sample (U,), inverse (R,))``, row r being state ``inverse[r]``.

    Discrete joint actions are packed with the parent and sample into one int64 key per row
    (the digits of a number, most significant first, so the order is the same), and the
    keys deduplicated: a sort of R numbers, where ``torch.unique(dim=0)`` compares rows
    one by one (~1 ms a step for 117 rows on a CPU, as much as a world model step). Rows
    that do not fit a key (negative actions, keys of 2**62 or more) and continuous actions
    take ``torch.unique(dim=0)``."""
    R = state_of.shape[0]
    if discrete and R:
        flat = joint.reshape(R, -1)
        low, high = (int(x) for x in torch.aminmax(flat))
        S = int(sample_of.max()) + 1
        radix = [S] + [high + 1] * flat.shape[1]
        if low >= 0 and (int(state_of.max()) + 1) * math.prod(radix) < 2**62:
            key = state_of.long()
            for digit, size in zip([sample_of, *flat.unbind(1)], radix, strict=True):
                key = key * size + digit.long()
            uniq, inverse = torch.unique(key, return_inverse=True)
            joint_radix = math.prod(radix[1:])
            return uniq // (S * joint_radix), (uniq // joint_radix) % S, inverse
    parts = [state_of[:, None], sample_of[:, None], joint.reshape(R, -1)]
    if not discrete:
        parts = [x.double() for x in parts]
    uniq, inverse = torch.unique(torch.cat(parts, 1), dim=0, return_inverse=True)
    return uniq[:, 0].long(), uniq[:, 1].long(), inverse


def _first_rows(inverse: torch.Tensor, n: int) -> torch.Tensor:
    """(n,) a row of each group: ``inverse[_first_rows(inverse, n)[u]] == u``."""
    rows = torch.arange(inverse.shape[0], device=inverse.device)
    return torch.full((n,), -1, dtype=torch.long, device=inverse.device).scatter_(0, inverse, rows)


@torch.no_grad()
def rollout(
    world,
    policy,
    start: Window,
    horizon: int,
    noise: RolloutNoise,
    *,
    start_of: torch.Tensor | None = None,
    sample_of: torch.Tensor | None = None,
    plans: torch.Tensor | None = None,
    held: torch.Tensor | None = None,
    reward_fn=None,
    sample_next: bool = True,
    record_all: bool = False,
) -> Rollout:
    """Roll R imagined futures ``horizon`` steps forward (see the module docstring).

    ``world``: anything with ``predict(window)`` and ``context``. ``policy``: a
    :class:`BehaviorStepper` built on ``start``, a behavior model (or anything with
    ``action_distribution``), or None when every agent is held. ``start``: B windows ending
    at the current step (their last action is ignored). ``start_of`` (R,): each row's start
    (default: row r starts at r); ``sample_of`` (R,): each row's noise sample (default: r).
    ``plans`` (R, H, N[, A]) with ``held`` (R, N) bool: the agents that follow a plan.
    ``reward_fn(next_obs (U, N, D), joint (U, N[, A])) -> (U, N)`` replaces the reward
    head. ``sample_next=False`` rolls the predicted mean forward instead of a sample.
    """
    dev = start.obs.device
    B, N = start.batch_size, start.num_agents
    start_of = torch.arange(B, device=dev) if start_of is None else start_of
    R = start_of.shape[0]
    sample_of = torch.arange(R, device=dev) if sample_of is None else sample_of
    discrete = not torch.is_floating_point(start.action)
    if held is None:
        held = torch.zeros(R, N, dtype=torch.bool, device=dev)
    if policy is None and not bool(held.all()):
        raise ValueError(f"{int((~held).sum())} agent rows have no plan and no policy is given")
    if policy is not None and not isinstance(policy, BehaviorStepper):
        policy = BehaviorStepper(policy, start)
    # States: rows sharing a start, a sample and every joint action so far. With fewer
    # samples than rows the states are found each step from (parent, sample, joint);
    # otherwise every row is its own state from the first step on.
    merge = noise.samples < R
    state_of = start_of
    w, beh = start.last(world.context), policy
    reward = torch.zeros(R, horizon, N, device=dev)
    terminated = torch.zeros(R, horizon, N, dtype=torch.bool, device=dev)
    acts, obs_out, dists, states = [], [], [], 0
    value = None
    for h in range(horizon):
        if beh is not None:
            dist = beh.distribution()
            if discrete:
                others = gumbel_argmax(dist.logits[state_of], noise.action[sample_of, h])
            else:
                others = dist.mean[state_of] + dist.std[state_of] * noise.action[sample_of, h]
            joint = (
                others if plans is None else torch.where(_bcast(held, plans), plans[:, h], others)
            )
        else:
            joint = plans[:, h]
        if merge:
            parent, k_of, state_of = distinct_states(state_of, sample_of, joint, discrete)
            joint_u = joint[_first_rows(state_of, parent.shape[0])]  # (U, N[, A])
        else:
            parent, k_of, joint_u = state_of, sample_of, joint
            state_of = torch.arange(R, device=dev)
        w = w.index(parent)
        w.action[:, -1] = joint_u.to(w.action.dtype)
        present = w.present[:, -1]  # (U, N) who acts at h
        pred = world.predict(w)
        states += w.batch_size
        last = h == horizon - 1
        nxt = None
        if not last or reward_fn is not None or record_all:
            if sample_next:
                mix = None if noise.mix is None else noise.mix[k_of, h]
                nxt = sample_obs(pred.obs, noise.obs[k_of, h], mix)
            else:
                nxt = pred.obs.mean()
            nxt = nxt * w.feat_mask * present[..., None]  # (U, N, D)
        r = pred.reward if reward_fn is None else reward_fn(nxt, joint_u)
        r = r * present  # (U, N)
        ended = present & (noise.term[k_of, h] < pred.term_prob)  # (U, N)
        alive = present & ~ended
        reward[:, h] = r[state_of]
        terminated[:, h] = ~alive[state_of]
        if record_all:
            acts.append(joint_u[state_of])
            obs_out.append(nxt[state_of])
            dists.append(pred.obs.index(lambda x, s=state_of: x[s]))
        if last:
            if pred.value is not None:
                value = (pred.value * alive)[state_of]
            break
        U = w.batch_size
        step = Window(
            obs=(nxt * alive[..., None])[:, None],
            feat_mask=w.feat_mask,
            present=alive[:, None],
            time_valid=torch.ones(U, 1, dtype=torch.bool, device=dev),
            action=torch.zeros_like(joint_u)[:, None],
            prev_action=joint_u[:, None],
            prev_valid=alive[:, None],
            prev_reward=r[:, None],
        )
        w = append_step(w, step.obs[:, 0], joint_u, alive, r)
        if beh is not None:
            beh = beh.repeat(parent)
            beh.advance(step)
    # Agents absent at the start never count as terminated; ``~alive`` marks them too.
    terminated &= start.present[:, -1][start_of][:, None]
    out = Rollout(reward=reward, terminated=terminated, value=value, states=states)
    if record_all:
        out.action = torch.stack(acts, 1)
        out.obs = torch.stack(obs_out, 1)
        out.obs_dist = ObsDistribution.stack(dists, 1)
    return out


def _bcast(held: torch.Tensor, plans: torch.Tensor) -> torch.Tensor:
    """(R, N) held mask shaped to broadcast against one step of ``plans`` (R, N[, A])."""
    return held if plans.ndim == 3 else held[..., None]


@dataclass
class Imagination:
    """Sampled futures: batch of starts B, samples S, horizon H, agents N."""

    obs: torch.Tensor
    """(B, S, H, N, D) sampled observations at steps t+1..t+H."""
    action: torch.Tensor
    """(B, S, H, N) or (B, S, H, N, A): the joint action taken at steps t..t+H-1."""
    reward: torch.Tensor
    """(B, S, H, N) expected reward for each of those actions (0 once terminated)."""
    terminated: torch.Tensor
    """(B, S, H, N) bool: the agent's episode has ended by then (absorbing)."""
    obs_dist: ObsDistribution
    """Predicted distribution of each sampled step, batch dims (B, S, H, N)."""


@torch.no_grad()
def imagine(
    model,
    start_history: Window,
    horizon: int,
    n_samples: int = 1,
    actions: dict[int | str, torch.Tensor] | None = None,
    policy=None,
    agent_ids: list[str] | None = None,
    generator: torch.Generator | None = None,
) -> Imagination:
    """Roll out ``n_samples`` sampled futures of ``horizon`` steps from each start.

    ``model``: a WorldModel or any world predictor with ``predict(window)`` and ``context``.
    ``start_history``: windows (B starts) ending at the current step; the action stored at
    their last step is ignored. ``actions``: agent (index, or id with ``agent_ids``) -> plan
    of shape (H,) / (H, A) for every start or (B, H) / (B, H, A) per start; those agents
    follow the plan. Every other agent's action comes from ``policy`` (a BehaviorModel or
    anything with ``action_distribution``). Each future has its own random numbers; the
    termination and state semantics are :func:`rollout`'s.
    """
    B, N = start_history.batch_size, start_history.num_agents
    dev = start_history.obs.device
    discrete = not torch.is_floating_point(start_history.action)
    S = n_samples
    R = B * S
    start_of = torch.arange(B, device=dev).repeat_interleave(S)  # row = (start b, sample s)
    plans = torch.zeros((R, horizon, *start_history.action.shape[2:]), device=dev)
    plans = plans.to(start_history.action.dtype)
    held = torch.zeros(R, N, dtype=torch.bool, device=dev)
    for agent, plan in (actions or {}).items():
        if isinstance(agent, str):
            if agent_ids is None:
                raise ValueError(f"agent {agent!r} given by id: pass agent_ids")
            if agent not in agent_ids:
                raise ValueError(f"unknown agent {agent!r}; agents are {agent_ids}")
            agent = agent_ids.index(agent)
        if not (0 <= agent < N):
            raise ValueError(f"agent index {agent} out of range for {N} agents")
        plan = torch.as_tensor(plan, device=dev)
        per_start = plan.ndim == (2 if discrete else 3)  # (B, H[, A]) rather than (H[, A])
        H_plan = plan.shape[1] if per_start else plan.shape[0]
        if H_plan < horizon:
            raise ValueError(f"plan of agent {agent} covers {H_plan} steps < horizon {horizon}")
        plan = plan[:, :horizon] if per_start else plan[None, :horizon].expand(B, *plan.shape)
        plans[:, :, agent] = plan[:, :horizon].repeat_interleave(S, 0).to(plans.dtype)
        held[:, agent] = True
    if policy is None and not bool(held.all()):
        missing = int((~held[0]).sum())
        raise ValueError(f"{missing} agents have no fixed actions and no policy is given")
    n_actions = 1
    if policy is not None:
        policy = BehaviorStepper(policy, start_history)
        first = policy.distribution()
        n_actions = (first.logits if discrete else first.mean).shape[-1]
    noise = RolloutNoise.draw(
        R,
        horizon,
        N,
        start_history.obs.shape[-1],
        n_actions,
        discrete,
        getattr(getattr(model, "config", None), "n_mixture", 1),
        generator,
        dev,
    )
    out = rollout(
        model,
        policy,
        start_history,
        horizon,
        noise,
        start_of=start_of,
        plans=plans,
        held=held,
        record_all=True,
    )
    split = lambda x: x.reshape(B, S, *x.shape[1:])  # noqa: E731  (B*S, ...) -> (B, S, ...)
    return Imagination(
        obs=split(out.obs),
        action=split(out.action),
        reward=split(out.reward),
        terminated=split(out.terminated),
        obs_dist=out.obs_dist.index(split),
    )
