"""The model-family table: every kind-specific choice comes from its family, so a family
added as one more entry trains, evaluates, gates, registers and loads like the others."""

from __future__ import annotations

import dataclasses

import pytest

from foresight.datasets import ingest_logs
from foresight.datasets.storage import Store
from foresight.training.evaluation.evaluate import evaluate_behavior
from foresight.training.families import BEHAVIOR, FAMILIES, KINDS, WORLD, family
from foresight.training.loop.config import TRAIN_OPTIONS, OfflineRLTrainConfig
from foresight.training.loop.train import TrainConfig, build_model
from foresight.training.loop.workflow import quality_gate, train_and_register
from foresight.training.models.behavior_model import BehaviorModel, BehaviorModelConfig
from foresight.training.registry import ModelRegistry, RegistryError, load_registered

from .conftest import make_frame


def test_the_table_names_each_kind_once_with_its_parts():
    assert KINDS == ("world", "behavior", "offline-rl")
    _, spec = make_frame(episodes=2)
    for kind in KINDS:
        fam = family(kind)
        assert fam.name == kind and FAMILIES[kind] is fam
        config = dataclasses.asdict(fam.config_cls(spec=spec.to_dict()))
        assert config["architecture"] == fam.architecture
        assert isinstance(build_model(kind, config), fam.model_cls)
    assert WORLD.imagines_with == "behavior" and BEHAVIOR.imagines_with is None
    for fam in FAMILIES.values():  # the CLI's options classes (it loads no torch) agree
        titles = [t for t, cls in TRAIN_OPTIONS.items() if cls is fam.train_config_cls]
        assert len(titles) == 1 and fam.name in titles[0].split(", "), fam.name
        if fam.trainer is not None:
            assert callable(fam.train_and_register()), fam.name
    with pytest.raises(ValueError, match="model kind must be one of 'world', 'behavior'"):
        family("planner")


def test_options_of_another_family_are_refused_before_any_work(tmp_path):
    store = Store(str(tmp_path / "store"))  # empty: the refusal comes before the dataset
    with pytest.raises(TypeError, match="offline-rl models train with OfflineRLTrainConfig"):
        train_and_register("offline-rl", "spread", store, TrainConfig())
    with pytest.raises(TypeError, match="world models train with TrainConfig options, got Off"):
        train_and_register("world", "spread", store, OfflineRLTrainConfig())
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").iterdir())


class ActionPrior(BehaviorModel):
    """A stand-in for a new family: the behavior network under another name and layout."""


ACTION_PRIOR = dataclasses.replace(
    BEHAVIOR,
    name="action-prior",
    description="a test family",
    model_cls=ActionPrior,
    gate_metrics=("accuracy_error",),
    context1_baseline=False,
)


def _accuracy_error(model, frame, spec, episode_ids, **options):
    """The new family's own evaluation: 1 - accuracy, next to the same baselines."""
    result = evaluate_behavior(model, frame, spec, episode_ids, **options)
    for metrics in (result["model"], *result["baselines"].values()):
        metrics["accuracy_error"] = 1 - metrics["accuracy"]
    return result


def test_a_family_added_to_the_table_goes_through_the_whole_lifecycle(tmp_path, monkeypatch):
    monkeypatch.setitem(
        FAMILIES, "action-prior", dataclasses.replace(ACTION_PRIOR, evaluate=_accuracy_error)
    )
    frame, spec = make_frame(episodes=16, steps=10, seed=2)
    frame.write_parquet(tmp_path / "synthetic.parquet")
    store = Store(str(tmp_path / "store"))
    ingest_logs([str(tmp_path / "synthetic.parquet")], "synthetic", store, spec=spec)
    out = train_and_register(
        "action-prior",
        "synthetic",
        store,
        TrainConfig(epochs=1, batch_size=64, max_steps_per_epoch=2, device="cpu"),
        BehaviorModelConfig(d_model=8, context=2, expert_width=8),
        progress=False,
    )
    assert out["model"] == "action-prior@1"
    assert set(out["baselines"]) == {"marginal", "repeat_last"}  # no context-1 baseline
    failures = out["quality_gate"]["failures"]
    assert all(f.startswith("accuracy_error:") for f in failures), failures
    card = ModelRegistry(store).resolve("action-prior@1").card
    assert card.kind == "action-prior" and card.behavior_model_for_imagination is None
    assert card.quality_gate.to_dict() == out["quality_gate"]
    assert quality_gate("action-prior", {"model": card.metrics, "baselines": card.baselines}) == (
        card.quality_gate.passed,
        card.quality_gate.failures,
    )
    model, mv = load_registered("action-prior@1", store)
    assert type(model) is ActionPrior and mv.card.model_config["d_model"] == 8

    # the registry checks the family's layout
    monkeypatch.setitem(
        FAMILIES, "action-prior", dataclasses.replace(ACTION_PRIOR, architecture="prior/2")
    )
    with pytest.raises(RegistryError, match="builds action-prior models of architecture 'prior/2'"):
        load_registered("action-prior@1", store)
