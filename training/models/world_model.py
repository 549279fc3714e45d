"""World model: a distribution over every agent's next observation, reward and termination.

Architecture (one network shared by all agents, attention between them unless decentralized):

    per agent n:  [obs_norm, action, present] for T steps, flattened, + feature mask
                  -> MLP encoder (+ residual MLP blocks) -> token (d_model)   # (B, N, d)
    optional:     global state history -> MLP -> one extra token
    tokens -> n_layers pre-LN transformer blocks over agents (no positional embedding,
              so the model is permutation-equivariant and runs on any agent count)
    per agent token -> heads: next-obs delta mixture (per feature), reward, termination,
                       continuation value

Under a partial view the model is decentralized (``WorldModelConfig.decentralized``): the
same layers, but each agent's token goes through the blocks alone, so what it predicts for
an agent depends on that agent's own history and action only; the others' moves enter as
the uncertainty of what the agent will see.

The observation head predicts the change ``obs[t+1] - obs[t]`` in units of its training
std, as a per-feature mixture of ``n_mixture`` Gaussians. Features that never change in
the training data (e.g. silent communication slots) are copied forward.
:mod:`.rollout` samples futures from it step after step, with some agents' actions fixed
and the others drawn from a behavior model.

The value head predicts what an agent earns after the step: its discounted rewards over the
next ``value_steps`` steps, as the logged agents went on to earn them (a Monte Carlo target,
so the value of the logged behavior). A planner adds it at the end of its horizon, so a
plan that ends close to a payoff scores above one that ends far from it even when neither
reaches it within the horizon.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from foresight.datasets.schema import DatasetSpec
from foresight.training.data import Normalizer, Targets, Window
from foresight.training.models.layers import (
    Block,
    action_features,
    check_architecture,
    resolve_decentralized,
)

ARCHITECTURE = "agent-transformer/4"
"""Layout of the weights this module builds (and of ``NO_VALUE_HEAD``, which it loads too);
a saved model of another layout cannot load."""
NO_VALUE_HEAD = "agent-transformer/3"
"""The layout before the value head: models saved by that code load, without a value;
a model trained from one (``TrainConfig.init_from``) gains one (:meth:`WorldModel.upgraded`)."""


@dataclass
class WorldModelConfig:
    spec: dict | None = None
    """DatasetSpec.to_dict() of the training data; filled in by train(), fixes the sizes."""
    context: int = 2
    """Steps of joint history the model reads (2 suffices for MPE: obs holds velocities)."""
    d_model: int = 128
    """Width of each agent token."""
    encoder_layers: int = 2
    """Depth of the per-agent encoder: its first MLP, then ``encoder_layers - 1`` residual
    MLP blocks. An agent's own observation holds what its collisions depend on (the
    others' relative positions); on simple_spread 2 cut the 1-step MSE from 0.12x to
    0.106x persistence in 30 epochs, 3 was no better."""
    n_layers: int = 2
    """Transformer blocks across agents (collisions need one agent to see the others)."""
    n_heads: int = 4
    """Attention heads per block."""
    mlp_ratio: int = 4
    """Hidden width of the block MLPs, as a multiple of d_model."""
    dropout: float = 0.0
    """Dropout in the blocks; the data sets are large relative to the model, so none."""
    activation: str = "gelu"
    """Nonlinearity of the encoder, block MLPs and heads: "gelu" or "relu"."""
    n_mixture: int = 1
    """Gaussian components per observation feature (1 = plain Gaussian)."""
    min_std: float = 1e-3
    """Smallest predicted std, in units of the feature's delta std (keeps NLL finite)."""
    nll_beta: float = 1.0
    """beta-NLL (Seitzer et al. 2022): each feature's NLL is weighted by its detached
    predicted variance ** beta. 0 is plain NLL, which starves the means of high-variance
    features (velocities in collisions) of gradient; 1 fits means like MSE."""
    reward_weight: float = 1.0
    """Weight of the (normalized) reward MSE in the loss."""
    term_weight: float = 0.1
    """Weight of the termination BCE in the loss."""
    value_steps: int = 10
    """Steps of reward after the current one that the value head predicts (0: no value
    head). simple_tag's reward is a contact or nothing, so a planner's 6-step horizon
    often sees no reward at all to rank plans by; 10 more steps of the logged behavior's
    rewards tell it which ending states lead to contact."""
    value_discount: float = 0.95
    """Per-step discount inside the value target (the planner's default discount)."""
    value_weight: float = 1.0
    """Weight of the (normalized) value MSE in the loss."""
    state_dropout: float = 0.25
    """Probability of hiding the global state while training, so imagination (which
    cannot predict the state) still works when it is missing."""
    decentralized: bool | None = None
    """Predict each agent's next observation from its own history and action alone: the
    blocks run on each agent's token by itself, and the global state is not read. None
    (default): decentralized exactly when the data are a partial view
    (``spec.extra["obs_radius"]``), where an agent cannot read what it does not see;
    False there is refused."""
    architecture: str = ARCHITECTURE
    """Weights layout (set by the code, saved in cards; checked when a model is loaded)."""

    def __post_init__(self) -> None:
        if self.architecture == NO_VALUE_HEAD:
            self.value_steps = 0  # saved before the value head: its config names none

    def dataset_spec(self) -> DatasetSpec:
        if self.spec is None:
            raise ValueError("WorldModelConfig.spec is unset; train() fills it")
        return DatasetSpec.from_dict(self.spec)


@dataclass
class ObsDistribution:
    """Independent per-feature mixture of Gaussians, in raw observation units."""

    logits: torch.Tensor
    """(..., D, K) mixture weights (unnormalized log)."""
    loc: torch.Tensor
    """(..., D, K) component means."""
    scale: torch.Tensor
    """(..., D, K) component stds (>0; tiny on features that are copied forward)."""

    def mean(self) -> torch.Tensor:
        return (self.logits.softmax(-1) * self.loc).sum(-1)  # (..., D)

    def stddev(self) -> torch.Tensor:
        w = self.logits.softmax(-1)
        second = (w * (self.scale**2 + self.loc**2)).sum(-1)
        return (second - self.mean() ** 2).clamp_min(0).sqrt()

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """(..., D) log density of each feature of ``x``."""
        z = (x[..., None] - self.loc) / self.scale
        comp = -0.5 * z**2 - self.scale.log() - 0.5 * math.log(2 * math.pi)
        return torch.logsumexp(self.logits.log_softmax(-1) + comp, dim=-1)

    def cdf(self, x: torch.Tensor) -> torch.Tensor:
        z = (x[..., None] - self.loc) / self.scale
        return (self.logits.softmax(-1) * 0.5 * (1 + torch.erf(z / math.sqrt(2)))).sum(-1)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """(..., D) one sample per feature."""
        K = self.logits.shape[-1]
        if K == 1:
            k = torch.zeros(self.loc.shape[:-1], dtype=torch.long, device=self.loc.device)
        else:
            probs = self.logits.softmax(-1).reshape(-1, K)
            k = torch.multinomial(probs, 1, generator=generator).reshape(self.loc.shape[:-1])
        loc = self.loc.gather(-1, k[..., None]).squeeze(-1)
        scale = self.scale.gather(-1, k[..., None]).squeeze(-1)
        eps = torch.randn(loc.shape, generator=generator, device=loc.device, dtype=loc.dtype)
        return loc + scale * eps

    def interval(self, level: float = 0.9) -> tuple[torch.Tensor, torch.Tensor]:
        """Central ``level`` interval (lo, hi) of each feature, each (..., D)."""
        q = (1 - level) / 2
        if self.logits.shape[-1] == 1:
            z = math.sqrt(2) * torch.erfinv(torch.tensor(1 - 2 * q)).item()
            return self.loc[..., 0] - z * self.scale[..., 0], self.loc[..., 0] + z * self.scale[
                ..., 0
            ]
        lo = (self.loc - 8 * self.scale).amin(-1)
        hi = (self.loc + 8 * self.scale).amax(-1)
        return self._quantile(q, lo, hi), self._quantile(1 - q, lo, hi)

    def _quantile(self, p: float, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        for _ in range(40):  # bisection on the mixture CDF, vectorized over all features
            mid = (lo + hi) / 2
            below = self.cdf(mid) < p
            lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
        return (lo + hi) / 2

    def index(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> ObsDistribution:
        """Apply the same indexing/reshaping to the batch dims of every parameter."""
        return ObsDistribution(fn(self.logits), fn(self.loc), fn(self.scale))

    @staticmethod
    def stack(items: list[ObsDistribution], dim: int) -> ObsDistribution:
        return ObsDistribution(
            torch.stack([d.logits for d in items], dim),
            torch.stack([d.loc for d in items], dim),
            torch.stack([d.scale for d in items], dim),
        )


@dataclass
class WorldPrediction:
    """A world predictor's answer for the last step of a window (models and baselines)."""

    obs: ObsDistribution
    """Next observation of every agent, batch dims (B, N), features D."""
    reward: torch.Tensor
    """(B, N) expected reward for the action at the last step."""
    term_prob: torch.Tensor
    """(B, N) probability that the episode terminates after this step."""
    dim_mask: torch.Tensor
    """(N, D) bool: features the distribution describes (exist and change over time)."""
    value: torch.Tensor | None = None
    """(B, N) what each agent is expected to earn after this step (the world model's value
    head, in rewards); None from a predictor without one."""


ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU}


class ResidualMLP(nn.Module):
    """x + MLP(LayerNorm(x)): one more nonlinear layer per token, no mixing across tokens."""

    def __init__(self, d_model: int, mlp_ratio: int, act: type = nn.GELU):
        super().__init__()
        self.ln = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, mlp_ratio * d_model), act(), nn.Linear(mlp_ratio * d_model, d_model)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.ln(x))


class WorldModel(nn.Module):
    def __init__(self, config: WorldModelConfig):
        super().__init__()
        check_architecture("world model", config.architecture, ARCHITECTURE, NO_VALUE_HEAD)
        spec = config.dataset_spec()
        self.config = config
        self.discrete = spec.action.discrete
        self.n_actions = spec.action.n if self.discrete else spec.action.dim
        self.obs_dim = D = max(spec.agents.values())
        self.state_dim = spec.state_dim
        self.context = T = config.context
        K, d = config.n_mixture, config.d_model
        self.decentralized = resolve_decentralized(config.decentralized, spec, "world model")
        if config.encoder_layers < 1:
            raise ValueError(f"encoder_layers must be >= 1, got {config.encoder_layers}")
        if config.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {list(ACTIVATIONS)}")
        act = ACTIVATIONS[config.activation]
        # Normalization statistics of the training split (saved with the weights).
        self.register_buffer("obs_mean", torch.zeros(D))
        self.register_buffer("obs_std", torch.ones(D))
        self.register_buffer("delta_std", torch.ones(D))
        self.register_buffer("dynamic", torch.ones(D, dtype=torch.bool))
        self.register_buffer("reward_mean", torch.zeros(()))
        self.register_buffer("reward_std", torch.ones(()))
        # Per-feature factor on the predicted stds, fitted after training on episodes held
        # out from the gradient steps (calibrate); 1 until then.
        self.register_buffer("std_scale", torch.ones(D))
        step_features = D + self.n_actions + 1  # obs, action, present flag
        self.encoder = nn.Sequential(nn.Linear(T * step_features + D, d), act(), nn.Linear(d, d))
        self.encoder_blocks = nn.ModuleList(
            ResidualMLP(d, config.mlp_ratio, act) for _ in range(config.encoder_layers - 1)
        )
        if self.state_dim and not self.decentralized:  # a decentralized model reads no state
            self.state_encoder = nn.Sequential(
                nn.Linear(T * (self.state_dim + 1), d), act(), nn.Linear(d, d)
            )
        self.blocks = nn.ModuleList(
            Block(d, config.n_heads, config.mlp_ratio, config.dropout, act)
            for _ in range(config.n_layers)
        )
        self.ln_f = nn.LayerNorm(d)
        self.obs_head = nn.Sequential(nn.Linear(d, d), act(), nn.Linear(d, D * K * 3))
        self.reward_head = nn.Linear(d, 1)
        self.term_head = nn.Linear(d, 1)
        if config.value_steps < 0:
            raise ValueError(f"value_steps must be >= 0, got {config.value_steps}")
        if not 0 < config.value_discount <= 1:
            raise ValueError(f"value_discount must be in (0, 1], got {config.value_discount}")
        self.value_head = nn.Linear(d, 1) if config.value_steps else None
        steps = torch.arange(config.value_steps, dtype=torch.float32)
        self.value_scale = float((config.value_discount**steps).sum())
        """What a value is in rewards: the discount weights summed, so the value head's
        units are the reward head's (a mean reward at every step is ``value_scale``)."""

    fresh_when_upgraded = ("value_head.",)
    """Weights of the latest layout that a ``NO_VALUE_HEAD`` model lacks: a model trained
    from one starts them fresh."""

    @staticmethod
    def upgraded(config: WorldModelConfig) -> WorldModelConfig:
        """The config of a model that starts from one of ``config``: the same, in the latest
        layout (a ``NO_VALUE_HEAD`` model gains the default value head, still untrained)."""
        if config.architecture != NO_VALUE_HEAD:
            return config
        latest = WorldModelConfig()
        return replace(
            config,
            architecture=ARCHITECTURE,
            value_steps=latest.value_steps,
            value_discount=latest.value_discount,
        )

    @property
    def value_target(self) -> tuple[int, float]:
        """``(value_steps, value_discount)``: what the training targets hold for the value
        head (:func:`~foresight.training.data.gather_targets`)."""
        return self.config.value_steps, self.config.value_discount

    def set_normalizer(self, norm: Normalizer) -> None:
        for name in ("obs_mean", "obs_std", "delta_std", "dynamic", "reward_mean", "reward_std"):
            getattr(self, name).copy_(getattr(norm, name))

    def forward(self, w: Window) -> tuple[torch.Tensor, ...]:
        """Raw head outputs in normalized units: mixture logits, mu, std (B, N, D, K) each,
        reward (B, N), termination logit (B, N), value (B, N; zeros without a value head)."""
        self.check_window(w)
        return self.network(w.obs, w.feat_mask, w.present, w.action, w.state, w.state_valid)

    def check_window(self, w: Window) -> None:
        """ValueError unless ``w`` has this model's context and observation width."""
        T, D = w.obs.shape[1], w.obs.shape[3]
        if self.context != T:
            raise ValueError(f"window has {T} steps, model reads {self.context}")
        if self.obs_dim != D:
            raise ValueError(f"window obs width {D} != model's {self.obs_dim}")

    def network(
        self,
        obs: torch.Tensor,
        feat_mask: torch.Tensor,
        present: torch.Tensor,
        action: torch.Tensor,
        state: torch.Tensor | None = None,
        state_valid: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        """:meth:`forward` on the only parts of a window the network reads, as tensors (a
        planner traces it into a graph: :class:`~.graphs.TracedWorld`)."""
        B, T, N, D = obs.shape
        fmask = feat_mask.float()  # (N, D)
        obs = (obs - self.obs_mean) / self.obs_std * fmask  # (B, T, N, D)
        act = action_features(action, self.discrete, self.n_actions)  # (B, T, N, A)
        pres = present.float()[..., None]  # (B, T, N, 1)
        act = act * pres
        steps = torch.cat([obs * pres, act, pres], dim=-1)  # (B, T, N, F)
        steps = steps.transpose(1, 2).reshape(B, N, -1)  # (B, N, T*F)
        dtype = self.encoder[0].weight.dtype  # float32, or bfloat16 in a planning copy
        x = self.encoder(torch.cat([steps, fmask.expand(B, N, D)], dim=-1).to(dtype))  # (B, N, d)
        for block in self.encoder_blocks:
            x = block(x)
        valid = present[:, -1]  # (B, N) agents present now are the tokens that count
        if self.decentralized:  # every agent's token through the blocks by itself
            x = x.reshape(B * N, 1, -1)
            valid = torch.ones(B * N, 1, dtype=torch.bool, device=x.device)
        elif self.state_dim:
            if state is not None:
                sv = state_valid.float()[..., None]  # (B, T, 1)
                if self.training and self.config.state_dropout > 0:
                    keep = torch.rand(B, 1, 1, device=sv.device) >= self.config.state_dropout
                    sv = sv * keep
                s = torch.cat([state * sv, sv], dim=-1).reshape(B, -1)  # (B, T*(Ds+1))
            else:
                s = torch.zeros(B, T * (self.state_dim + 1), device=x.device)
            x = torch.cat([x, self.state_encoder(s.to(dtype))[:, None]], dim=1)  # (B, N+1, d)
            valid = torch.cat([valid, torch.ones_like(valid[:, :1])], dim=1)
        valid = valid | ~valid.any(dim=1, keepdim=True)  # never an all-masked row (NaN)
        for block in self.blocks:
            x = block(x, valid)
        x = self.ln_f(x.reshape(B, -1, x.shape[-1])[:, :N])  # (B, N, d)
        K = self.config.n_mixture
        logits, mu, raw_std = self.obs_head(x).view(B, N, D, K, 3).float().unbind(-1)
        # contiguous first: softplus on the strided view is ~7x slower on a CPU
        std = self.config.min_std + F.softplus(raw_std.contiguous())  # (B, N, D, K)
        reward = self.reward_head(x).squeeze(-1).float()  # (B, N)
        term_logit = self.term_head(x).squeeze(-1).float()  # (B, N)
        if self.value_head is None:
            value = torch.zeros_like(reward)
        else:
            value = self.value_head(x).squeeze(-1).float()  # (B, N)
        return logits, mu, std, reward, term_logit, value

    def loss(self, w: Window, tg: Targets) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Total loss and its parts: obs NLL per feature (normalized units), reward MSE
        (normalized), termination BCE, value MSE (normalized; where the targets hold
        complete values: ``tg.value_valid``)."""
        logits, mu, std, reward, term_logit, value = self(w)
        last = w.obs[:, -1]  # (B, N, D)
        delta = (tg.next_obs - last) / self.delta_std  # (B, N, D)
        dist = ObsDistribution(logits, mu, std)
        mask = (tg.next_valid[..., None] & w.feat_mask & self.dynamic).float()  # (B, N, D)
        count = mask.sum().clamp_min(1)
        nll_per_feature = -dist.log_prob(delta) * mask  # (B, N, D)
        nll = nll_per_feature.sum() / count
        weight = dist.stddev().detach() ** (2 * self.config.nll_beta)  # (B, N, D)
        fit = (nll_per_feature * weight).sum() / count
        valid = tg.valid.float()
        r_err = (reward - (tg.reward - self.reward_mean) / self.reward_std) ** 2
        r_mse = (r_err * valid).sum() / valid.sum().clamp_min(1)
        bce = F.binary_cross_entropy_with_logits(term_logit, tg.terminated, reduction="none")
        term = (bce * valid).sum() / valid.sum().clamp_min(1)
        total = fit + self.config.reward_weight * r_mse + self.config.term_weight * term
        parts = {"nll": nll, "reward_mse": r_mse, "term_bce": term}
        if self.value_head is not None:
            if tg.value is None:
                raise ValueError(
                    "targets hold no value: gather them with the model's value_target "
                    f"{self.value_target} (gather_targets(..., value_steps, value_discount))"
                )
            v_valid = tg.value_valid.float()
            v_err = (value - self._normalized_value(tg.value)) ** 2
            parts["value_mse"] = (v_err * v_valid).sum() / v_valid.sum().clamp_min(1)
            total = total + self.config.value_weight * parts["value_mse"]
        return total, parts

    def _normalized_value(self, value: torch.Tensor) -> torch.Tensor:
        """A value in rewards -> the value head's units (the reward normalization,
        scaled by the sum of the discount weights)."""
        return (value - self.reward_mean * self.value_scale) / (self.reward_std * self.value_scale)

    @torch.no_grad()
    def calibrate(self, batches, level: float = 0.9) -> torch.Tensor:
        """Fit ``std_scale`` so that, on the given (window, targets) batches, each dynamic
        feature's true next value falls inside the predicted central ``level`` interval
        ``level`` of the time (bisection on each feature's factor; the means are untouched).
        Returns the fitted (D,) factors."""
        was_training = self.training
        self.eval()
        parts, masks = [], []
        for w, tg in batches:
            logits, mu, std, *_ = self(w.last(self.context))
            delta = (tg.next_obs - w.obs[:, -1]) / self.delta_std  # (B, N, D)
            parts.append((logits, mu, std, delta))
            masks.append((tg.next_valid[..., None] & w.feat_mask & self.dynamic).float())
        self.train(was_training)
        if not parts:
            return self.std_scale
        logits, mu, std, delta = (torch.cat(x) for x in zip(*parts, strict=True))
        mask = torch.cat(masks)  # (M, N, D)
        count = mask.sum(dim=(0, 1))  # (D,)
        lo, hi = torch.full_like(count, -4.0), torch.full_like(count, 4.0)  # log factor
        q = (1 - level) / 2
        for _ in range(30):
            mid = (lo + hi) / 2
            cdf = ObsDistribution(logits, mu, std * mid.exp()[:, None]).cdf(delta)
            inside = ((cdf >= q) & (cdf <= 1 - q)).float() * mask
            cover = inside.sum(dim=(0, 1)) / count.clamp_min(1)
            lo, hi = torch.where(cover < level, mid, lo), torch.where(cover < level, hi, mid)
        fitted = torch.where(count > 0, ((lo + hi) / 2).exp(), torch.ones_like(count))
        self.std_scale.copy_(fitted)
        return fitted

    @torch.no_grad()
    def predict(self, w: Window, forward: Callable | None = None) -> WorldPrediction:
        """The distribution of the next step, in raw units. ``forward``: what computes the
        raw heads of the window (default: this module; a planner's
        :class:`~.graphs.TracedWorld` passes its graphs)."""
        logits, mu, std, reward, term_logit, value = (forward or self)(w.last(self.context))
        last = w.obs[:, -1].float()[..., None]  # (B, N, D, 1)
        dyn = (self.dynamic & w.feat_mask)[..., None]  # (N, D, 1)
        dstd = self.delta_std[:, None]  # (D, 1)
        loc = torch.where(dyn, last + dstd * mu, last)  # (B, N, D, K)
        scale = torch.where(dyn, dstd * std * self.std_scale[:, None], torch.full_like(std, 1e-6))
        return WorldPrediction(
            obs=ObsDistribution(logits, loc, scale),
            reward=reward * self.reward_std + self.reward_mean,
            term_prob=torch.sigmoid(term_logit),
            dim_mask=self.dynamic & w.feat_mask,
            value=None
            if self.value_head is None
            else (value * self.reward_std + self.reward_mean) * self.value_scale,
        )
