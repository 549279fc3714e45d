"""From a trajectory table (the contract's long format) to tensors the models train on.

The table is turned once into dense, flat-in-time tensors: every logged step of every
episode is one row ``s`` of ``obs[s, agent, feature]`` (episodes concatenated, agents in
the dataset spec's order, observations zero-padded to the largest size with a feature
mask). A training sample is a flat step index ``t``; a batch of windows is gathered by
index from tensors that already live on the training device, so loading a batch is a
handful of ``index_select`` calls and never a Python loop over rows.

Window convention (both models): a window of ``T`` steps ends at step ``t``. It holds the
observations ``obs[t-T+1..t]``, the joint actions taken at those steps, the previous
actions (``action[τ-1]``, for the behavior model, which must never read the action at
``t``) and the previous rewards. Steps before the episode start are padded with zeros and
``time_valid=False``. :class:`Targets` holds what is predicted for step ``t``: the next
observation ``obs[t+1]`` (absent after the last logged step), the reward and termination
received for the action at ``t``, and that action itself.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np
import polars as pl
import pyarrow as pa
import torch

from foresight.datasets.schema import REQUIRED_COLUMNS, DatasetSpec, describe_view, view_of


@dataclass
class TrajectoryTensors:
    """A whole dataset as dense tensors, episodes concatenated along the first axis."""

    agent_ids: list[str]
    """Agent id of each column ``n`` (the dataset spec's order)."""
    episode_ids: list[str]
    """Episode id of each episode index ``e`` (sorted)."""
    obs: torch.Tensor
    """(S, N, D) float32 observations, zero-padded to D = the largest observation size."""
    feat_mask: torch.Tensor
    """(N, D) bool, True where feature d exists for agent n (obs sizes differ by agent)."""
    present: torch.Tensor
    """(S, N) bool, True where agent n has a row at step s (agents may join or leave)."""
    action: torch.Tensor
    """(S, N) int64 discrete action index, or (S, N, A) float32 continuous action."""
    prev_action: torch.Tensor
    """Like ``action`` but one step earlier in the same episode (zeros where none)."""
    prev_valid: torch.Tensor
    """(S, N) bool, True where ``prev_action`` holds a logged action."""
    reward: torch.Tensor
    """(S, N) float32 reward received for the action at step s."""
    terminated: torch.Tensor
    """(S, N) bool."""
    truncated: torch.Tensor
    """(S, N) bool."""
    state: torch.Tensor | None
    """(S, Ds) float32 global state, or None when the dataset logs none."""
    state_valid: torch.Tensor | None
    """(S,) bool, True where ``state`` was logged."""
    episode: torch.Tensor
    """(S,) int64 episode index of each flat step."""
    ep_start: torch.Tensor
    """(S,) int64 flat index of the first step of the step's episode."""
    ep_end: torch.Tensor
    """(S,) int64 flat index of the last step of the step's episode."""
    discrete: bool
    """True for discrete actions."""

    def to(self, device: torch.device | str) -> TrajectoryTensors:
        moved = {
            f.name: getattr(self, f.name).to(device)
            for f in fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return replace(self, **moved)

    def rows_of_episodes(self, episode_ids: list[str] | set[str]) -> torch.Tensor:
        """Flat step indices of all steps of the given episodes, shape (M,)."""
        wanted = set(episode_ids)
        unknown = wanted - set(self.episode_ids)
        if unknown:
            raise ValueError(f"episodes not in this dataset: {sorted(unknown)[:5]}")
        keep = torch.tensor([e in wanted for e in self.episode_ids], dtype=torch.bool)
        keep = keep.to(self.episode.device)
        return torch.nonzero(keep[self.episode], as_tuple=False).squeeze(1)


@dataclass
class Window:
    """A batch of histories of T steps ending at the current step (last index)."""

    obs: torch.Tensor
    """(B, T, N, D) observations, zero where padded."""
    feat_mask: torch.Tensor
    """(N, D) bool, which observation features exist for each agent."""
    present: torch.Tensor
    """(B, T, N) bool, agent present at that step (False on padded steps)."""
    time_valid: torch.Tensor
    """(B, T) bool, False for steps before the episode start."""
    action: torch.Tensor
    """(B, T, N) int64 or (B, T, N, A) float: the joint action taken at each step. The last
    step's action is the one a world model conditions on; behavior models never read it."""
    prev_action: torch.Tensor
    """Like ``action``, one step earlier (what the agent did before seeing ``obs``)."""
    prev_valid: torch.Tensor
    """(B, T, N) bool, ``prev_action`` is a real action."""
    prev_reward: torch.Tensor
    """(B, T, N) reward received one step earlier (zero where none)."""
    state: torch.Tensor | None = None
    """(B, T, Ds) global state, or None."""
    state_valid: torch.Tensor | None = None
    """(B, T) bool."""

    @property
    def batch_size(self) -> int:
        return self.obs.shape[0]

    @property
    def context(self) -> int:
        return self.obs.shape[1]

    @property
    def num_agents(self) -> int:
        return self.obs.shape[2]

    def last(self, context: int) -> Window:
        """The last ``context`` steps (left-padded with invalid steps if shorter)."""
        T = self.context
        if context <= T:
            return self._map(lambda x: x[:, T - context :])
        pad = context - T
        return self._map(
            lambda x: torch.cat([x.new_zeros((x.shape[0], pad, *x.shape[2:])), x], dim=1)
        )

    def index(self, rows: torch.Tensor) -> Window:
        """Select batch rows (e.g. repeat each start for several samples)."""
        return self._map(lambda x: x[rows])

    def _map(self, fn) -> Window:
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "feat_mask" or value is None:
                out[f.name] = value
            else:
                out[f.name] = fn(value)
        return Window(**out)

    def to(self, device: torch.device | str) -> Window:
        return Window(
            **{
                f.name: (
                    None if getattr(self, f.name) is None else getattr(self, f.name).to(device)
                )
                for f in fields(self)
            }
        )


@dataclass
class Targets:
    """What is predicted for the last step t of each window."""

    next_obs: torch.Tensor
    """(B, N, D) observation at t+1 (zeros where it does not exist)."""
    next_valid: torch.Tensor
    """(B, N) bool, agent present at t and t+1 inside the episode."""
    reward: torch.Tensor
    """(B, N) reward for the action at t."""
    terminated: torch.Tensor
    """(B, N) float, 1.0 if the episode terminated after the action at t."""
    action: torch.Tensor
    """(B, N) int64 or (B, N, A) float: the action at t (the behavior model's target)."""
    valid: torch.Tensor
    """(B, N) bool, agent present at t (reward, termination and action are defined)."""
    value: torch.Tensor | None = None
    """(B, N) the agent's discounted rewards of the ``value_steps`` steps after t (the
    world model's continuation value target; None unless asked for)."""
    value_valid: torch.Tensor | None = None
    """(B, N) bool: ``value`` is complete (those steps are all inside the episode, or the
    agent's episode terminated before their end)."""


def _to_padded(column: pl.Series, width: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """A list<float> column -> ((R, width) float32 zero-padded values, (R,) lengths)."""
    if column.null_count():
        raise ValueError(f"column {what!r} has {column.null_count()} null rows; it must not")
    arr = column.to_arrow()
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    lengths = arr.value_lengths().to_numpy(zero_copy_only=False).astype(np.int64)
    values = arr.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    if lengths.size and lengths.max() > width:
        raise ValueError(f"column {what!r} has a row of length {lengths.max()} > {width}")
    rows = np.repeat(np.arange(len(lengths)), lengths)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    cols = np.arange(values.size) - np.repeat(starts, lengths)
    out = np.zeros((len(lengths), width), dtype=np.float32)
    out[rows, cols] = values
    return out, lengths


def build_tensors(
    frame: pl.DataFrame | pl.LazyFrame, spec: DatasetSpec, device: torch.device | str = "cpu"
) -> TrajectoryTensors:
    """Turn a trajectory table into dense tensors on ``device`` (vectorized, no row loop)."""
    df = frame.collect() if isinstance(frame, pl.LazyFrame) else frame
    if df.height == 0:
        raise ValueError(
            f"dataset is empty (0 rows) for spec env={spec.env!r}; "
            "ingest or generate episodes before training or evaluating"
        )
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"dataset is missing required columns {missing}; has {df.columns}")
    agent_ids = list(spec.agents)
    unknown = set(df["agent_id"].unique().to_list()) - set(agent_ids)
    if unknown:
        raise ValueError(
            f"rows for agents {sorted(unknown)} that the dataset spec does not list "
            f"(spec agents: {agent_ids})"
        )
    N, D = len(agent_ids), max(spec.agents.values())
    df = df.sort(["episode_id", "step", "agent_id"])

    # Episode index and flat step index of every row.
    episodes = df.group_by("episode_id", maintain_order=True).agg(
        pl.col("step").max().alias("last"), pl.col("step").min().alias("first")
    )
    if (episodes["first"] < 0).any():
        raise ValueError("dataset has negative step numbers; steps count from 0")
    episode_ids = episodes["episode_id"].to_list()
    lengths = episodes["last"].to_numpy().astype(np.int64) + 1
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    S = int(offsets[-1])
    ep_of_row = (
        df["episode_id"].ne(df["episode_id"].shift(1)).fill_null(True).cast(pl.Int64).cum_sum() - 1
    ).to_numpy()
    s_idx = offsets[ep_of_row] + df["step"].to_numpy().astype(np.int64)
    a_idx = (
        df["agent_id"]
        .replace_strict({a: i for i, a in enumerate(agent_ids)}, return_dtype=pl.Int64)
        .to_numpy()
    )
    if np.unique(s_idx * N + a_idx).size != len(s_idx):
        raise ValueError("dataset has duplicate (episode_id, step, agent_id) rows")

    # Observations: (R, D) padded rows scattered into (S, N, D).
    obs_rows, obs_len = _to_padded(df["obs"], D, "obs")
    sizes = np.array([spec.agents[a] for a in agent_ids])
    bad = obs_len != sizes[a_idx]
    if bad.any():
        r = int(np.argmax(bad))
        raise ValueError(
            f"agent {agent_ids[a_idx[r]]!r} has an observation of size {obs_len[r]} but the "
            f"dataset spec says {sizes[a_idx[r]]} (episode {df['episode_id'][r]!r})"
        )
    obs = np.zeros((S, N, D), dtype=np.float32)
    obs[s_idx, a_idx] = obs_rows
    present = np.zeros((S, N), dtype=bool)
    present[s_idx, a_idx] = True
    feat_mask = np.arange(D)[None, :] < sizes[:, None]  # (N, D)

    # Actions: discrete index or continuous vector.
    if spec.action.discrete:
        act_rows = df["action"].cast(pl.Int64).to_numpy()
        if (act_rows < 0).any() or (act_rows >= spec.action.n).any():
            raise ValueError(f"discrete actions outside 0..{spec.action.n - 1}")
        action = np.zeros((S, N), dtype=np.int64)
    else:
        act_rows, act_len = _to_padded(df["action"], spec.action.dim, "action")
        if (act_len != spec.action.dim).any():
            raise ValueError(f"continuous actions must have length {spec.action.dim}")
        action = np.zeros((S, N, spec.action.dim), dtype=np.float32)
    action[s_idx, a_idx] = act_rows
    first_step = np.zeros(S, dtype=bool)
    first_step[offsets[:-1]] = True
    prev_action = np.roll(action, 1, axis=0)
    prev_valid = np.roll(present, 1, axis=0) & present & ~first_step[:, None]
    prev_action[~prev_valid] = 0

    def scatter(column: str, dtype) -> np.ndarray:
        out = np.zeros((S, N), dtype=dtype)
        out[s_idx, a_idx] = df[column].to_numpy().astype(dtype)
        return out

    reward, terminated, truncated = (
        scatter("reward", np.float32),
        scatter("terminated", bool),
        scatter("truncated", bool),
    )
    if not np.isfinite(reward).all() or not np.isfinite(obs).all():
        raise ValueError("dataset has non-finite rewards or observations")

    state = state_valid = None
    if spec.state_dim and "state" in df.columns:
        has = df["state"].is_not_null().to_numpy()
        state = np.zeros((S, spec.state_dim), dtype=np.float32)
        state_valid = np.zeros(S, dtype=bool)
        if has.any():
            rows, lens = _to_padded(df["state"].filter(pl.Series(has)), spec.state_dim, "state")
            state[s_idx[has]] = rows
            state_valid[s_idx[has]] = lens == spec.state_dim

    episode = np.repeat(np.arange(len(lengths)), lengths)
    t = lambda x: None if x is None else torch.from_numpy(x).to(device)  # noqa: E731
    return TrajectoryTensors(
        agent_ids=agent_ids,
        episode_ids=episode_ids,
        obs=t(obs),
        feat_mask=t(feat_mask),
        present=t(present),
        action=t(action),
        prev_action=t(prev_action),
        prev_valid=t(prev_valid),
        reward=t(reward),
        terminated=t(terminated),
        truncated=t(truncated),
        state=t(state),
        state_valid=t(state_valid),
        episode=t(episode),
        ep_start=t(offsets[:-1][episode]),
        ep_end=t(offsets[1:][episode] - 1),
        discrete=spec.action.discrete,
    )


def split_episodes(
    episode_ids: list[str], val_fraction: float, seed: int
) -> tuple[list[str], list[str]]:
    """Split episodes (never rows) into train and validation, deterministically by seed.

    The result depends only on the set of ids, the fraction and the seed, not on order.
    """
    if not (0.0 <= val_fraction < 1.0):
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    ids = sorted(set(episode_ids))
    if not ids:
        raise ValueError("cannot split an empty list of episodes")
    n_val = round(val_fraction * len(ids))
    if val_fraction > 0:
        if len(ids) < 2:
            raise ValueError(
                f"need at least 2 episodes to hold some out for validation, got {len(ids)}"
            )
        n_val = min(max(n_val, 1), len(ids) - 1)
    order = np.random.default_rng(seed).permutation(len(ids))
    val = sorted(ids[i] for i in order[:n_val])
    train = sorted(ids[i] for i in order[n_val:])
    return train, val


def gather_window(data: TrajectoryTensors, t: torch.Tensor, context: int) -> Window:
    """Windows of ``context`` steps ending at flat steps ``t`` (B,), by index on device."""
    if t.ndim != 1:
        raise ValueError(f"rows must be a 1-d tensor of row indices, got shape {tuple(t.shape)}")
    start = data.ep_start[t]  # (B,)
    idx = t[:, None] + torch.arange(1 - context, 1, device=t.device)  # (B, T)
    time_valid = idx >= start[:, None]  # (B, T)
    idx = torch.maximum(idx, start[:, None])
    tv = time_valid[..., None]  # (B, T, 1)
    present = data.present[idx] & tv  # (B, T, N)
    prev_valid = data.prev_valid[idx] & tv
    prev_idx = torch.maximum(idx - 1, start[:, None])
    prev_reward = torch.where(prev_valid, data.reward[prev_idx], 0.0)  # (B, T, N)
    act_mask = tv if data.discrete else tv[..., None]
    window = Window(
        obs=data.obs[idx] * tv[..., None],  # (B, T, N, D)
        feat_mask=data.feat_mask,
        present=present,
        time_valid=time_valid,
        action=data.action[idx] * act_mask,
        prev_action=data.prev_action[idx] * act_mask,
        prev_valid=prev_valid,
        prev_reward=prev_reward,
    )
    if data.state is not None:
        window.state = data.state[idx] * tv  # (B, T, Ds)
        window.state_valid = data.state_valid[idx] & time_valid
    return window


def gather_targets(
    data: TrajectoryTensors, t: torch.Tensor, value_steps: int = 0, value_discount: float = 1.0
) -> Targets:
    """Targets for flat steps ``t`` (B,): next observation, reward, termination, action;
    with ``value_steps`` > 0 also the value target, ``sum_k value_discount**(k-1) *
    reward[t+k]`` for k = 1..value_steps (:func:`future_rewards`)."""
    has_next = t < data.ep_end[t]  # (B,)
    nxt = torch.minimum(t + 1, data.ep_end[t])
    valid = data.present[t]  # (B, N)
    next_valid = valid & data.present[nxt] & has_next[:, None]
    tg = Targets(
        next_obs=data.obs[nxt] * next_valid[..., None],
        next_valid=next_valid,
        reward=data.reward[t],
        terminated=data.terminated[t].float(),
        action=data.action[t],
        valid=valid,
    )
    if value_steps > 0:
        tg.value, complete = future_rewards(data, t, value_steps, value_discount)
        tg.value_valid = valid & complete
    return tg


def targets_for(model, data: TrajectoryTensors, t: torch.Tensor) -> Targets:
    """The targets ``model`` is trained and scored on at flat steps ``t``: with its value
    target where it has one (a world model's ``value_target``)."""
    steps, discount = getattr(model, "value_target", (0, 1.0))
    return gather_targets(data, t, steps, discount)


def future_rewards(
    data: TrajectoryTensors, t: torch.Tensor, steps: int, discount: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each agent's discounted rewards of the ``steps`` steps after ``t`` (B,):
    ``(sum_k discount**(k-1) * reward[t+k] for k = 1..steps (B, N), complete (B, N))``.

    Only steps inside the episode count. ``complete`` is False where the sum misses rewards
    that were never logged: the episode was cut (truncated, or the log ends) before
    ``t + steps``, or the agent has no row at one of those steps (it left) without having
    terminated. An agent whose episode terminated earns nothing after it, so its sum is
    complete."""
    end = data.ep_end[t]  # (B,)
    idx = t[:, None] + torch.arange(1, steps + 1, device=t.device)  # (B, L)
    inside = (idx <= end[:, None])[..., None]  # (B, L, 1)
    at = torch.minimum(idx, end[:, None])
    r = data.reward[at] * inside  # (B, L, N)
    weights = discount ** torch.arange(steps, device=t.device, dtype=r.dtype)  # (L,)
    total = (r * weights[:, None]).sum(1)  # (B, N)
    # by_then[:, j]: terminated at one of the steps t..t+j (the agent's episode is over)
    term = torch.cat([data.terminated[t][:, None], data.terminated[at] & inside], 1)
    by_then = term.cummax(1).values  # (B, L+1, N)
    owed = inside & ~by_then[:, :-1]  # (B, L, N): step t+k is in its episode and the agent's
    complete = (t + steps <= end)[:, None] | by_then[:, -1]  # nothing cut off at the end
    return total, complete & (data.present[at] | ~owed).all(1)  # and no row missing


def sample_rows(data: TrajectoryTensors, episode_ids: list[str]) -> torch.Tensor:
    """Flat steps of the given episodes where at least one agent is present, shape (M,)."""
    rows = data.rows_of_episodes(episode_ids)
    return rows[data.present[rows].any(dim=1)]


@dataclass
class Normalizer:
    """Per-feature statistics from the training split, stored inside every model."""

    obs_mean: torch.Tensor
    """(D,) mean of each observation slot over present agents."""
    obs_std: torch.Tensor
    """(D,) std of each observation slot (>= 1e-3 so constant slots stay finite)."""
    delta_std: torch.Tensor
    """(D,) std of the one-step change of each slot: the world model predicts scaled deltas."""
    dynamic: torch.Tensor
    """(D,) bool, slot changes at all from step to step; constant slots are copied forward."""
    reward_mean: torch.Tensor
    """() mean reward."""
    reward_std: torch.Tensor
    """() reward std (>= 1e-3)."""


def compute_normalizer(data: TrajectoryTensors, rows: torch.Tensor) -> Normalizer:
    """Statistics over the flat steps ``rows`` (the training split only)."""
    if rows.numel() <= 0:
        raise ValueError("no training rows to compute statistics from")
    obs = data.obs[rows].double()  # (M, N, D)
    m = (data.present[rows][..., None] & data.feat_mask).double()  # (M, N, D)
    count = m.sum((0, 1)).clamp_min(1)
    mean = (obs * m).sum((0, 1)) / count
    std = (((obs - mean) ** 2 * m).sum((0, 1)) / count).sqrt()
    tg = gather_targets(data, rows)
    dm = (tg.next_valid[..., None] & data.feat_mask).double()
    delta = (tg.next_obs.double() - obs) * dm
    dcount = dm.sum((0, 1)).clamp_min(1)
    dstd = ((delta**2).sum((0, 1)) / dcount).sqrt()
    r = data.reward[rows][data.present[rows]].double()
    return Normalizer(
        obs_mean=mean.float(),
        obs_std=std.clamp_min(1e-3).float(),
        delta_std=dstd.clamp_min(1e-6).float(),
        dynamic=dstd > 1e-6,
        reward_mean=r.mean().float(),
        reward_std=r.std().clamp_min(1e-3).float() if r.numel() > 1 else torch.tensor(1.0),
    )


def describe_spec(spec: DatasetSpec) -> str:
    """One line naming what a model depends on: obs sizes, action spec, state size."""
    return (
        f"env={spec.env!r} obs sizes={dict(spec.agents)} action={spec.action.describe()} "
        f"state_dim={spec.state_dim} {describe_view(spec)}"
    )


def check_model_spec(model_name: str, trained: dict, spec: DatasetSpec) -> None:
    """Raise ValueError if a model trained on spec ``trained`` cannot run on ``spec``.

    Agents may differ in names and number (the models are independent of agent order and
    count), but every observation size must be one the model was trained on, the action
    spec must be equal, a logged state must have the trained size, and the agents must see
    as far as in training (the view, :func:`~foresight.datasets.schema.view_of`).
    """
    if trained is None:
        raise ValueError(f"{model_name} has no training spec in its config")
    was = DatasetSpec.from_dict(trained)
    problems = []
    known = set(was.agents.values())
    odd = {a: s for a, s in spec.agents.items() if s not in known}
    if odd:
        problems.append(f"observation sizes {odd} not among the trained sizes {sorted(known)}")
    if spec.action != was.action:
        problems.append(f"action {spec.action.describe()} != trained {was.action.describe()}")
    if spec.state_dim is not None and was.state_dim is not None and spec.state_dim != was.state_dim:
        problems.append(f"state_dim {spec.state_dim} != trained {was.state_dim}")
    if view_of(spec) != view_of(was):  # an agent's model reads only what that agent sees
        problems.append(f"{describe_view(spec)} != trained on a {describe_view(was)}")
    if problems:
        raise ValueError(
            f"{model_name} does not fit this dataset: {'; '.join(problems)}. "
            f"Model trained on [{describe_spec(was)}], dataset is [{describe_spec(spec)}]. "
            "Train a model on this dataset, or pick a model trained on a matching spec."
        )
