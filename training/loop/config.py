"""The options of a training run: one dataclass, the single declaration of each option.

``foresight train``'s flags and the Dagster model assets' run config are derived from
:class:`TrainConfig` (``training.loop.options``): each field's default and docstring are
theirs. No torch here, so the CLI builds its parser without loading it.
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
    calibrate: bool = True
    """World model: after training, fit a factor on each feature's predicted std so that
    90% intervals hold 90% of the truth, on every other validation episode (those are then
    left out of the evaluation: see TrainResult.heldout_episode_ids)."""
