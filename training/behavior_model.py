"""Behavior model: for each agent, a distribution over its next action given its history.

Decentralized (default): each agent's own history of (observation, previous action) only,
which any other agent can compute from outside. A shared GRU reads it step by step, so
with enough history it picks up an agent's style (how noisy it is, which target it
heads for) that a single step cannot show.

    per agent n, per step τ: [obs_norm, prev action, flags] -> MLP -> GRU -> h_n (d_model)
    centralized=True: h_1..h_N -> transformer blocks across agents (joint history)
    h_n -> head: categorical logits (discrete) or Gaussian mean/std (continuous)

The model never reads ``window.action`` (the action at the last step is its target);
only ``window.prev_action``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from datasets.schema import DatasetSpec
from training.data import Normalizer, Targets, Window
from training.world_model import Block, action_features


@dataclass
class BehaviorModelConfig:
    spec: dict | None = None
    """DatasetSpec.to_dict() of the training data; filled in by train(), fixes the sizes."""
    context: int = 16
    """Steps of an agent's own history read (style shows over many steps)."""
    d_model: int = 64
    """Width of the step encoder and of the GRU state (128 memorizes simple_spread's 2k
    episodes within 5 epochs; 64 with dropout generalizes better)."""
    centralized: bool = False
    """Condition on the joint history (attention across agents) instead of one agent's."""
    n_layers: int = 1
    """Transformer blocks across agents (centralized only)."""
    n_heads: int = 4
    """Attention heads per block (centralized only)."""
    dropout: float = 0.2
    """Dropout on the step features and before the head: long histories make episodes
    easy to memorize, so the history model needs it more than the 1-step one."""
    min_std: float = 1e-2
    """Smallest std of a continuous action component (raw action units)."""

    def dataset_spec(self) -> DatasetSpec:
        assert self.spec is not None, "BehaviorModelConfig.spec is unset; train() fills it"
        return DatasetSpec.from_dict(self.spec)


@dataclass
class ActionDistribution:
    """Per-agent action distribution, batch dims (B, N) (or (B, T, N) inside training)."""

    logits: torch.Tensor | None = None
    """(B, N, n) categorical logits (discrete)."""
    mean: torch.Tensor | None = None
    """(B, N, A) Gaussian mean (continuous)."""
    std: torch.Tensor | None = None
    """(B, N, A) Gaussian std (continuous)."""

    @property
    def discrete(self) -> bool:
        return self.logits is not None

    @property
    def batch_shape(self) -> torch.Size:
        return (self.logits if self.discrete else self.mean).shape[:-1]

    def log_prob(self, action: torch.Tensor) -> torch.Tensor:
        """(B, N) log-probability of the actions (B, N) or (B, N, A)."""
        assert action.shape[: len(self.batch_shape)] == self.batch_shape, (
            action.shape,
            self.batch_shape,
        )
        if self.discrete:
            logp = self.logits.log_softmax(-1)
            return logp.gather(-1, action.long()[..., None]).squeeze(-1)
        z = (action - self.mean) / self.std
        return (-0.5 * z**2 - self.std.log() - 0.5 * math.log(2 * math.pi)).sum(-1)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.discrete:
            probs = self.logits.softmax(-1)
            flat = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator=generator)
            return flat.reshape(probs.shape[:-1])  # (B, N)
        eps = torch.randn(self.mean.shape, generator=generator, device=self.mean.device)
        return self.mean + self.std * eps  # (B, N, A)

    def mode(self) -> torch.Tensor:
        return self.logits.argmax(-1) if self.discrete else self.mean

    def probs(self) -> torch.Tensor:
        assert self.discrete, "probs() is for discrete actions"
        return self.logits.softmax(-1)


class BehaviorModel(nn.Module):
    def __init__(self, config: BehaviorModelConfig):
        super().__init__()
        spec = config.dataset_spec()
        self.config = config
        self.discrete = spec.action.discrete
        self.n_actions = spec.action.n if self.discrete else spec.action.dim
        self.obs_dim = D = max(spec.agents.values())
        self.context = config.context
        d = config.d_model
        self.register_buffer("obs_mean", torch.zeros(D))
        self.register_buffer("obs_std", torch.ones(D))
        step_features = 2 * D + self.n_actions + 2  # obs, feature mask, prev action, 2 flags
        p = config.dropout
        self.step_encoder = nn.Sequential(nn.Linear(step_features, d), nn.GELU(), nn.Dropout(p))
        self.gru = nn.GRU(d, d, batch_first=True)
        if config.centralized:
            self.blocks = nn.ModuleList(
                Block(d, config.n_heads, 4, 0.0) for _ in range(config.n_layers)
            )
        out = self.n_actions if self.discrete else 2 * self.n_actions
        self.head = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d), nn.GELU(), nn.Linear(d, out))

    def set_normalizer(self, norm: Normalizer) -> None:
        self.obs_mean.copy_(norm.obs_mean)
        self.obs_std.copy_(norm.obs_std)

    def forward(self, w: Window) -> torch.Tensor:
        """Head output at every step (B, T, N, n) logits, or (B, T, N, 2A) mean and raw std.
        Position τ reads steps ≤ τ only (the GRU is causal)."""
        B, T, N, D = w.obs.shape
        assert T <= self.context, f"window has {T} steps, model reads at most {self.context}"
        assert D == self.obs_dim, f"window obs width {D} != model's {self.obs_dim}"
        fmask = w.feat_mask.float()  # (N, D)
        pres = w.present.float()[..., None]  # (B, T, N, 1)
        pv = w.prev_valid.float()[..., None]  # (B, T, N, 1)
        obs = (w.obs - self.obs_mean) / self.obs_std * fmask * pres  # (B, T, N, D)
        prev = action_features(w.prev_action, self.discrete, self.n_actions) * pv
        x = torch.cat([obs, fmask.expand(B, T, N, D), prev, pv, pres], dim=-1)  # (B, T, N, F)
        x = self.step_encoder(x).transpose(1, 2).reshape(B * N, T, -1)  # (B*N, T, d)
        h, _ = self.gru(x)  # (B*N, T, d) the state after each step
        h = h.view(B, N, T, -1).transpose(1, 2)  # (B, T, N, d)
        if self.config.centralized:
            valid = w.present.reshape(B * T, N)
            valid = valid | ~valid.any(dim=1, keepdim=True)
            h = h.reshape(B * T, N, -1)  # agents attend to each other at every step
            for block in self.blocks:
                h = block(h, valid)
            h = h.view(B, T, N, -1)
        h = F.dropout(h, self.config.dropout, self.training)
        return self.head(h).float()

    def _distribution(self, out: torch.Tensor) -> ActionDistribution:
        if self.discrete:
            return ActionDistribution(logits=out)
        mean, raw = out.chunk(2, dim=-1)
        return ActionDistribution(mean=mean, std=self.config.min_std + F.softplus(raw))

    def action_distribution(self, w: Window) -> ActionDistribution:
        """Each agent's next action at the last step of ``w``, batch dims (B, N)."""
        return self._distribution(self(w.last(self.context))[:, -1])

    def loss(
        self, w: Window, tg: Targets, all_steps: bool = False
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Mean action NLL over present agents (accuracy too for discrete actions).

        ``all_steps=False``: the action at the last step (``tg.action``), from the full
        window. ``all_steps=True`` (training): the action at every valid step of the
        window from the steps up to it; the window's actions are the targets.
        """
        out = self(w)  # (B, T, N, out)
        if all_steps:
            dist, action = self._distribution(out), w.action  # batch dims (B, T, N)
            valid = (w.present & w.time_valid[..., None]).float()
        else:
            dist, action, valid = self._distribution(out[:, -1]), tg.action, tg.valid.float()
        count = valid.sum().clamp_min(1)
        nll = -(dist.log_prob(action) * valid).sum() / count
        parts = {"nll": nll}
        if self.discrete:
            parts["accuracy"] = ((dist.mode() == action).float() * valid).sum() / count
        return nll, parts
