"""The options of a training run: one dataclass, the single declaration of each option.

``foresight train``'s flags and the Dagster model assets' run config are derived from
these dataclasses (``training.loop.options``): each field's default and docstring are
theirs. :class:`TrainConfig` is the shared loop's (world and behavior models),
:class:`OfflineRLTrainConfig` the offline-RL peer's. No torch here, so the CLI builds its
parser without loading it.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TrainConfig:
    epochs: int = 50
    """Maximum passes over the training windows; early stopping usually ends sooner. Set
    high because the world model keeps improving after 30 (BENCHMARKS.md, Training)."""
    batch_size: int = 256
    """Labels per optimizer step: world windows, or behavior chunks of `context` steps
    (each step of a chunk is a label, so a behavior batch holds batch_size // context)."""
    lr: float = 2e-3
    """Peak learning rate (AdamW), after a short warmup, cosine-decayed to 10%."""
    weight_decay: float = 1e-4
    """AdamW weight decay."""
    grad_clip: float = 1.0
    """Max global gradient norm (guards against a few huge-NLL batches)."""
    context: int | None = None
    """Window length in steps; None keeps the model config's own default."""
    device: str = field(default="auto", metadata={"choices": ("auto", "cpu", "cuda")})
    """"auto" (CUDA with bf16 autocast if present, else CPU), "cpu" or "cuda"."""
    seed: int = 0
    """Seeds the split, the initialization and the batch order."""
    patience: int = 5
    """Stop after this many epochs without a better validation loss."""
    min_delta: float = 1e-4
    """Smallest decrease of the validation loss that counts as better."""
    val_fraction: float = 0.15
    """Share of episodes held out for validation (split by episode, never by row)."""
    eval_batch_size: int = 4096
    """Windows per batch when computing the validation loss."""
    max_steps_per_epoch: int | None = None
    """Cap on optimizer steps per epoch (None: one full pass)."""
    init_from: str | None = None
    """A registered model of the same kind to start from (``world@production``, ``world@3``):
    its architecture, weights and normalization, fine-tuned on this dataset (which must fit
    its spec). The card records the exact version. None: a fresh initialization."""
    calibrate: bool = True
    """World model: after training, fit a factor on each feature's predicted std so that
    90% intervals hold 90% of the truth, on every other validation episode (those are then
    left out of the evaluation: see TrainResult.heldout_episode_ids)."""


@dataclass
class OfflineRLTrainConfig:
    """The options of ``foresight train offline-rl``: the offline-RL peer's own loop
    (:mod:`foresight.training.loop.offline_rl`), in optimizer steps rather than epochs."""

    steps: int = 40_000
    """Optimizer steps (batches of transitions): about 80 passes over the transitions of
    2,000 episodes of 3 agents. Half as many gave a lower return in the arena
    (BENCHMARKS.md, offline-RL peer, has the learning curve)."""
    batch_size: int = 256
    """Transitions (one agent, one step) per optimizer step."""
    lr: float = 3e-4
    """Adam learning rate (OG-MARL's IQL+CQL default)."""
    gamma: float = 0.99
    """Discount of the TD(0) target (OG-MARL's default)."""
    cql_alpha: float = 2.0
    """Weight of the CQL term against the TD loss (OG-MARL's ``cql_weight`` default)."""
    target_update_interval: int = 200
    """Optimizer steps between copies of the online network into the target (OG-MARL)."""
    reward_scale: float | None = None
    """Rewards are multiplied by this; None: 1 / std of the training rewards, so the TD loss
    and the CQL term have the same size whatever the env's reward units."""
    grad_clip: float = 10.0
    """Max global gradient norm."""
    val_fraction: float = 0.15
    """Share of episodes held out for the validation losses (split by episode)."""
    eval_every: int = 2_000
    """Steps between validation (and closed-loop) evaluations logged to metrics.jsonl."""
    eval_episodes: int = 20
    """Closed-loop episodes per evaluation when the dataset's env is a supported mpe2 env
    (0: none). They are logged, never used to pick weights."""
    seed: int = 0
    """Seeds the split, the initialization and the batch order."""
    context: int | None = None
    """Steps of each agent's history the network reads; None keeps the model config's own
    default."""
    device: str = field(default="auto", metadata={"choices": ("auto", "cpu", "cuda")})
    """"auto" (CUDA if present), "cpu" or "cuda"."""


TRAIN_OPTIONS: dict[str, type] = {
    "world, behavior": TrainConfig,
    "offline-rl": OfflineRLTrainConfig,
}
"""Each options class, keyed by the families that train with it, for ``foresight train``'s
flags and help (the family table, which loads torch, names each family's class; a test
checks that the two agree)."""
