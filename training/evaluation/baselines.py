"""Baselines that every learned model is reported next to.

World baselines are world predictors like :class:`~foresight.training.models.world_model.WorldModel`
(``context`` and ``predict(window) -> WorldPrediction``), so the same evaluation code,
rollouts and :func:`~foresight.training.models.world_model.imagine` run on them. Each gets a per-feature
Gaussian whose std is its own one-step residual on the training split, so NLL and
interval coverage are defined for it too.

- persistence: next observation = current one.
- constant velocity: positions move by velocity * dt (only where the observation layout
  is known: :func:`~foresight.datasets.sources.simulators.mpe_kinematics`, from the
  simulator's module, or ``spec.extra["kinematics"]``).
- linear: least squares on two steps of joint observation + joint action (fixed agent
  set, fit on the training split).

Behavior baselines are policies like :class:`~foresight.training.models.behavior_model.BehaviorModel`
(``context`` and ``action_distribution(window)``): marginal action frequencies, and
repeat-last-action. The third behavior baseline, the same model with a context of one
step, is trained by the caller (see ``bench/end_to_end.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from foresight.datasets.sources.mpe import Kinematics
from foresight.datasets.sources.simulators import mpe_kinematics as mpe_kinematics  # re-export
from foresight.training.data import TrajectoryTensors, Window, gather_targets, gather_window
from foresight.training.models.behavior_model import ActionDistribution
from foresight.training.models.layers import action_features
from foresight.training.models.world_model import ObsDistribution, WorldPrediction


class WorldBaseline:
    """A deterministic next-observation guess plus a fitted per-feature Gaussian std."""

    name = "baseline"
    context = 1

    def __init__(self):
        self.sigma: torch.Tensor | None = None  # (D,) residual std on the training split
        self.term_rate = 0.0  # training frequency of termination

    def guess(self, w: Window) -> tuple[torch.Tensor, torch.Tensor]:
        """Next obs (B, N, D) and reward (B, N) for the last step of ``w``."""
        raise NotImplementedError

    def fit_noise(self, data: TrajectoryTensors, rows: torch.Tensor) -> None:
        tg = gather_targets(data, rows)
        guess, _ = self.guess(gather_window(data, rows, self.context))
        m = (tg.next_valid[..., None] & data.feat_mask).float()  # (M, N, D)
        err = (tg.next_obs - guess) ** 2 * m
        self.sigma = (err.sum((0, 1)) / m.sum((0, 1)).clamp_min(1)).sqrt().clamp_min(1e-6)
        v = tg.valid.float()
        self.term_rate = float((tg.terminated * v).sum() / v.sum().clamp_min(1))

    @torch.no_grad()
    def predict(self, w: Window) -> WorldPrediction:
        if self.sigma is None:
            raise ValueError(f"{self.name} baseline is not fitted")
        mean, reward = self.guess(w.last(self.context))
        B, N, D = mean.shape
        scale = self.sigma.expand(B, N, D)
        return WorldPrediction(
            obs=ObsDistribution(mean.new_zeros(B, N, D, 1), mean[..., None], scale[..., None]),
            reward=reward,
            term_prob=torch.full((B, N), self.term_rate, device=mean.device),
            dim_mask=(self.sigma > 1e-6) & w.feat_mask,
        )


class PersistenceBaseline(WorldBaseline):
    """Next observation = current; reward = the previous step's reward."""

    name = "persistence"
    context = 1

    def guess(self, w):
        return w.obs[:, -1], w.prev_reward[:, -1]


class ConstantVelocityBaseline(WorldBaseline):
    """Positions advance by velocity * dt; everything else (velocities too) persists."""

    name = "constant_velocity"
    context = 1

    def __init__(self, kinematics: Kinematics):
        super().__init__()
        self.kinematics = kinematics

    def guess(self, w):
        obs = w.obs[:, -1].clone()  # (B, N, D)
        for i, v, sign in self.kinematics.moves:
            obs[..., i] += sign * w.obs[:, -1, :, v] * self.kinematics.dt
        return obs * w.feat_mask, w.prev_reward[:, -1]


class LinearBaseline(WorldBaseline):
    """Least squares: [joint obs at t and t-1, joint action at t] -> joint delta, rewards."""

    name = "linear"
    context = 2

    def __init__(self, discrete: bool, n_actions: int, ridge: float = 1e-4):
        super().__init__()
        self.discrete, self.n_actions, self.ridge = discrete, n_actions, ridge
        self.weight: torch.Tensor | None = None  # (F, N*D + N)

    def features(self, w: Window) -> torch.Tensor:
        B, T, _N, _D = w.obs.shape
        if T != 2:
            raise ValueError(f"linear baseline reads 2 steps, got {T}")
        pres = w.present.float()  # (B, 2, N)
        obs = w.obs * pres[..., None]  # (B, 2, N, D)
        act = action_features(w.action[:, -1], self.discrete, self.n_actions)  # (B, N, A)
        act = act * pres[:, -1, :, None]
        ones = obs.new_ones(B, 1)
        return torch.cat(
            [obs.reshape(B, -1), act.reshape(B, -1), pres.reshape(B, -1), ones], dim=1
        ).double()  # (B, F)

    def fit(self, data: TrajectoryTensors, rows: torch.Tensor) -> None:
        w, tg = gather_window(data, rows, 2), gather_targets(data, rows)
        X = self.features(w)  # (M, F)
        N, D = data.feat_mask.shape
        delta = (tg.next_obs - w.obs[:, -1]) * tg.next_valid[..., None]  # (M, N, D)
        Y = torch.cat([delta.reshape(len(rows), -1), tg.reward], dim=1).double()
        keep = tg.valid.any(dim=1)
        X, Y = X[keep], Y[keep]
        A = X.T @ X + self.ridge * len(X) * torch.eye(X.shape[1], dtype=X.dtype, device=X.device)
        self.weight = torch.linalg.solve(A, X.T @ Y)  # (F, N*D + N)
        self.N, self.D = N, D

    def guess(self, w):
        if self.weight is None:
            raise ValueError("linear baseline is not fitted")
        B, _, N, D = w.obs.shape
        if (N, D) != (self.N, self.D):
            raise ValueError(
                f"linear baseline fit on {self.N} agents x {self.D} features, got {N} x {D}"
            )
        out = (self.features(w) @ self.weight).float()  # (B, N*D + N)
        delta = out[:, : N * D].view(B, N, D)
        return (w.obs[:, -1] + delta) * w.feat_mask, out[:, N * D :]


def fit_world_baselines(
    data: TrajectoryTensors, rows: torch.Tensor, n_actions: int, kinematics: Kinematics | None
) -> dict[str, WorldBaseline]:
    """Fit every applicable world baseline on the training rows."""
    out: dict[str, WorldBaseline] = {"persistence": PersistenceBaseline()}
    if kinematics is not None:
        out["constant_velocity"] = ConstantVelocityBaseline(kinematics)
    linear = LinearBaseline(data.discrete, n_actions)
    linear.fit(data, rows)
    out["linear"] = linear
    for baseline in out.values():
        baseline.fit_noise(data, rows)
    return out


class MarginalActionBaseline:
    """Each agent acts by the training split's action frequencies (Gaussian if continuous)."""

    name = "marginal"
    context = 1

    def __init__(self, data: TrajectoryTensors, rows: torch.Tensor, n_actions: int):
        valid = data.present[rows]  # (M, N)
        acts = data.action[rows][valid]  # (K,) or (K, A)
        self.discrete = data.discrete
        if self.discrete:
            counts = torch.bincount(acts, minlength=n_actions).float() + 1.0  # add-one
            self.log_probs = (counts / counts.sum()).log()  # (n,)
        else:
            self.mean, self.std = acts.mean(0), acts.std(0).clamp_min(1e-3)

    def action_distribution(self, w: Window) -> ActionDistribution:
        B, N = w.batch_size, w.num_agents
        if self.discrete:
            return ActionDistribution(logits=self.log_probs.expand(B, N, -1))
        return ActionDistribution(mean=self.mean.expand(B, N, -1), std=self.std.expand(B, N, -1))


class RepeatLastActionBaseline:
    """Repeat the previous action with the training repeat rate, else act marginally."""

    name = "repeat_last"
    context = 1

    def __init__(
        self, data: TrajectoryTensors, rows: torch.Tensor, marginal: MarginalActionBaseline
    ):
        self.marginal, self.discrete = marginal, data.discrete
        pv = data.prev_valid[rows]  # (M, N)
        cur, prev = data.action[rows][pv], data.prev_action[rows][pv]
        if self.discrete:
            self.p_repeat = float((cur == prev).float().mean()) if pv.any() else 0.0
        else:
            self.std = (cur - prev).std(0).clamp_min(1e-3) if pv.any() else marginal.std

    def action_distribution(self, w: Window) -> ActionDistribution:
        base = self.marginal.action_distribution(w)
        pv = w.prev_valid[:, -1]  # (B, N)
        prev = w.prev_action[:, -1]
        if self.discrete:
            n = base.logits.shape[-1]
            probs = (1 - self.p_repeat) * base.logits.exp() + self.p_repeat * F.one_hot(
                prev.long(), n
            )
            logits = torch.where(pv[..., None], probs.clamp_min(1e-8).log(), base.logits)
            return ActionDistribution(logits=logits)
        mean = torch.where(pv[..., None], prev, base.mean)
        std = torch.where(pv[..., None], self.std.expand_as(base.std), base.std)
        return ActionDistribution(mean=mean, std=std)


def fit_behavior_baselines(
    data: TrajectoryTensors, rows: torch.Tensor, n_actions: int
) -> dict[str, object]:
    marginal = MarginalActionBaseline(data, rows, n_actions)
    return {"marginal": marginal, "repeat_last": RepeatLastActionBaseline(data, rows, marginal)}
