"""The model families: one entry per kind of model Foresight trains, registers and serves.

A :class:`ModelFamily` holds what differs between kinds: the config and model classes (the
model's ``loss`` is the training objective), its training options, how the training loop
feeds it, its evaluation, the metrics its quality gate compares, and the lineage its cards
carry. The training loop, the registry, the model lifecycle, the CLI, the Dagster assets
and the test helpers look a kind up here (:func:`family`) instead of branching on its name.

Where it sits: above the models (``training.models``), their evaluation
(``training.evaluation``) and the training options (``training.loop.config``), whose parts
the entries name; below the training loop, the registry and the lifecycle
(``training.loop``, ``training.registry``), which import it. So nothing a family's entry
imports may import the loop or the registry. A family that trains by a loop of its own
(the offline-RL peer: TorchRL's) names that loop's entry point as ``module:function``
(:attr:`ModelFamily.trainer`), imported when it is called.

Adding a family: one module with its config, model and evaluation (and its loop, if the
shared one does not fit), and one line in :data:`FAMILIES`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import torch.nn as nn

from foresight.training.evaluation.evaluate import evaluate_behavior, evaluate_world
from foresight.training.loop.config import OfflineRLTrainConfig, TrainConfig
from foresight.training.models import behavior_model, offline_rl, world_model


@dataclass(frozen=True)
class ModelFamily:
    """Everything the platform needs to know about one kind of model."""

    name: str
    """The kind, as cards, the CLI and references name it (``world``, ``behavior``)."""
    description: str
    """One line for help texts and asset descriptions."""
    config_cls: type
    """Its config dataclass (with ``spec``, ``context`` and ``architecture`` fields)."""
    model_cls: type[nn.Module]
    """Built from a config; ``loss(window, targets)`` -> (loss, parts) is what the shared
    loop minimizes."""
    architecture: str
    """The weights layout this code builds (``model_config["architecture"]``)."""
    legacy_architecture: str
    """The layout of the cards saved before ``model_config`` recorded one."""
    evaluate: Callable[..., dict[str, Any]] | None
    """``(model, frame, spec, held-out episode ids, **options)`` -> the model's metrics
    next to its baselines: ``{"model", "baselines", "meta", "curves", "examples"}``. None:
    the family's own loop evaluates it while it trains (``foresight evaluate`` refuses)."""
    gate_metrics: tuple[str, ...]
    """Held-out metrics (lower is better) on which the model must beat every baseline
    (empty for a family whose own loop gates it)."""
    train_config_cls: type = TrainConfig
    """Its training options; ``foresight train``'s flags and the Dagster run config are
    derived from it."""
    trainer: str | None = None
    """``module:function`` of the family's own train, gate and register step when the shared
    loop does not fit (called like :func:`~foresight.training.loop.workflow.train_and_register`
    with the dataset reference, store, options, model config, name, resume and progress).
    None: the shared loop, in one process or under torchrun; the Dagster training job has
    an asset for each such family (its run config is the shared loop's)."""
    trains_on_chunks: bool = False
    """Every step of a window is a label (``loss(..., all_steps=True)``): the loop tiles each
    episode in chunks of ``context`` steps instead of one window per step."""
    calibrates: bool = False
    """After training the loop fits the predicted std scale (``model.calibrate``) on half of
    the validation episodes."""
    imagines_with: str | None = None
    """The family whose model drives the other agents in this family's evaluation; the card
    records which version (``behavior_model_for_imagination``)."""
    context1_baseline: bool = False
    """The lifecycle trains the same model with a context of 1 step as one more baseline."""
    older_architectures: tuple[str, ...] = ()
    """Layouts saved by older code that this code still builds and loads."""

    def train_and_register(self) -> Callable[..., dict[str, Any]]:
        """The family's own train, gate and register step (:attr:`trainer`)."""
        if self.trainer is None:
            raise ValueError(f"{self.name} models train by the shared loop")
        module, _, name = self.trainer.partition(":")
        return getattr(importlib.import_module(module), name)

    def build(self, model_config: dict[str, Any]) -> nn.Module:
        """The architecture saved in ``model_config`` (weights still to be loaded)."""
        known = {f.name for f in fields(self.config_cls)}
        unknown = set(model_config) - known
        if unknown:
            raise ValueError(f"unknown {self.name} model config fields {sorted(unknown)}")
        return self.model_cls(self.config_cls(**model_config))


WORLD = ModelFamily(
    name="world",
    description="next joint observation, rewards and termination, given the joint action",
    config_cls=world_model.WorldModelConfig,
    model_cls=world_model.WorldModel,
    architecture=world_model.ARCHITECTURE,
    legacy_architecture="agent-transformer/1",
    older_architectures=(world_model.NO_VALUE_HEAD,),
    evaluate=evaluate_world,
    gate_metrics=("mse", "rollout_mse_10"),
    calibrates=True,
    imagines_with="behavior",
)
BEHAVIOR = ModelFamily(
    name="behavior",
    description="next-action distribution of each agent, given its history",
    config_cls=behavior_model.BehaviorModelConfig,
    model_cls=behavior_model.BehaviorModel,
    architecture=behavior_model.ARCHITECTURE,
    legacy_architecture="gru/1",
    evaluate=evaluate_behavior,
    gate_metrics=("nll",),
    trains_on_chunks=True,
    context1_baseline=True,
)

OFFLINE_RL = ModelFamily(
    name="offline-rl",
    description="the offline-RL peer: one Q-network shared by the agents (TorchRL's CQL)",
    config_cls=offline_rl.OfflineRLConfig,
    model_cls=offline_rl.SharedQNetwork,
    architecture=offline_rl.ARCHITECTURE,
    legacy_architecture=offline_rl.ARCHITECTURE,  # its cards have always recorded one
    evaluate=None,  # its loop plays closed-loop episodes next to random and greedy
    gate_metrics=(),
    train_config_cls=OfflineRLTrainConfig,
    trainer="foresight.training.loop.offline_rl_workflow:train_and_register_offline_rl",
)

FAMILIES: dict[str, ModelFamily] = {f.name: f for f in (WORLD, BEHAVIOR, OFFLINE_RL)}
"""The table: kind -> its family."""
KINDS: tuple[str, ...] = tuple(FAMILIES)


def family(kind: str) -> ModelFamily:
    """The family of ``kind``; a ValueError naming the known kinds otherwise."""
    try:
        return FAMILIES[kind]
    except (KeyError, TypeError):
        raise ValueError(
            f"model kind must be one of {', '.join(map(repr, KINDS))}, got {kind!r}"
        ) from None
