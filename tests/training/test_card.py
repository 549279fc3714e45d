"""The typed model card against cards stored by older code.

``data/registry_c781ea7/`` is a registry written by the code at commit c781ea7 (before the
card had a type): a world and a behavior model trained for one epoch on
``make_frame(episodes=12, steps=14, seed=5)`` through ``train_and_register``, with the
loss each had on all of that data (``losses.json``, computed by that code).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from foresight.datasets.storage import Store
from foresight.training.data import build_tensors, gather_targets, gather_window, sample_rows
from foresight.training.registry import (
    CardError,
    DatasetLineage,
    ModelCard,
    ModelRegistry,
    QualityGate,
    RegistryError,
    TrainingSummary,
    load_registered,
)

from .conftest import make_frame

OLD = Path(__file__).parent / "data" / "registry_c781ea7"


@pytest.fixture
def old_store(tmp_path) -> Store:
    shutil.copytree(OLD, tmp_path / "store")
    return Store(str(tmp_path / "store"))


def stored(kind: str) -> dict:
    return json.loads((OLD / "models" / kind / "1" / "card.json").read_text())


@pytest.mark.parametrize("kind", ["world", "behavior"])
def test_a_stored_card_reads_into_typed_fields(old_store, kind):
    card = ModelRegistry(old_store).resolve(f"{kind}@1").card
    raw = stored(kind)
    assert isinstance(card, ModelCard)
    assert (card.name, card.version, card.kind) == (kind, 1, kind)
    assert card.git_sha == "c781ea79fb08314c808fb55c3f5e314f8d2ef117"
    assert card.created_at == raw["created_at"] and card.parent_version is None
    assert card.dataset == DatasetLineage(
        ref="synthetic", name="synthetic", version=0, resolved="synthetic@0"
    )
    assert isinstance(card.quality_gate, QualityGate)
    assert card.quality_gate.passed is raw["quality_gate"]["passed"]
    assert card.quality_gate.failures == raw["quality_gate"]["failures"]
    assert isinstance(card.training, TrainingSummary)
    assert card.training.epochs_run == card.training.best_epoch == 1
    assert card.training.history == raw["training"]["history"]
    assert card.model_config == raw["model_config"] and card.spec == raw["spec"]
    assert card.metrics == raw["metrics"] and card.baselines == raw["baselines"]
    assert card.evaluation["kind"] == kind
    assert card.extra == {}
    if kind == "world":
        assert card.behavior_model_for_imagination == "behavior@1"
        assert card.metrics["mse"] > 0
    else:
        assert card.behavior_model_for_imagination is None


@pytest.mark.parametrize("kind", ["world", "behavior"])
def test_a_stored_card_writes_back_the_same_json(kind):
    raw = stored(kind)
    card = ModelCard.from_dict(raw)
    assert card.to_dict() == raw
    assert json.dumps(card.to_dict(), sort_keys=True) == json.dumps(raw, sort_keys=True)
    assert dict(card) == raw and card["dataset"]["resolved"] == "synthetic@0"


def test_models_registered_by_older_code_load_with_the_same_loss(old_store):
    frame, spec = make_frame(episodes=12, steps=14, seed=5)
    data = build_tensors(frame, spec)
    rows = sample_rows(data, data.episode_ids)
    expected = json.loads((OLD / "losses.json").read_text())
    for kind in ("world", "behavior"):
        model, mv = load_registered(f"{kind}@1", old_store)
        assert mv.card.kind == kind
        with torch.no_grad():
            loss, parts = model.loss(
                gather_window(data, rows, model.context), gather_targets(data, rows)
            )
        got = {"loss": loss.item(), **{k: v.item() for k, v in parts.items()}}
        assert got == pytest.approx(expected[kind], rel=1e-5), kind


def test_a_world_model_trained_from_one_of_before_the_value_head_gains_one(old_store, tmp_path):
    from foresight.training.loop.train import TrainConfig, train
    from foresight.training.models.world_model import ARCHITECTURE, NO_VALUE_HEAD

    old, _ = load_registered("world@1", old_store)
    assert old.config.architecture == NO_VALUE_HEAD and old.value_head is None
    frame, spec = make_frame(episodes=12, steps=14, seed=5)
    config = TrainConfig(epochs=1, batch_size=64, max_steps_per_epoch=1, lr=1e-9, seed=0)
    new = train("world", frame, spec, config, workdir=tmp_path, progress=False, init=old).model
    assert new.config.architecture == ARCHITECTURE and new.value_head is not None
    assert "train/value_mse" in train_history(tmp_path)
    kept = {k: v for k, v in new.state_dict().items() if not k.startswith("value_head.")}
    for name, weights in old.state_dict().items():  # lr 1e-9: what it had, it still has
        assert torch.allclose(kept[name], weights, atol=1e-6), name


def train_history(workdir) -> dict:
    return json.loads((Path(workdir) / "metrics.jsonl").read_text().splitlines()[-1])


def test_unknown_and_absent_keys_survive_a_registration(store):
    """A card with keys this code does not know, and without some it does, registers as
    it was given (plus the registry's fields) and reads back the same."""
    given = {
        "kind": "world",
        "dataset": {"ref": "spread@0", "name": "spread", "later": [1, 2]},
        "training": {"untrained": True},
        "from_the_future": {"x": 1},
    }
    registry = ModelRegistry(store)
    mv = registry.register("world", {"w": torch.zeros(2)}, given)
    back = registry.resolve("world@1").card
    assert back == mv.card
    raw = back.to_dict()
    assert {k: raw[k] for k in given} == given
    assert set(raw) == set(given) | {"name", "version", "created_at", "parent_version", "git_sha"}
    assert back.extra == {"from_the_future": {"x": 1}}
    assert back.dataset.extra == {"later": [1, 2]} and back.dataset.resolved is None
    assert back.training.extra == {"untrained": True}
    assert not back.has("metrics") and back.has("from_the_future")


def test_a_card_registered_again_keeps_its_lineage(store):
    registry = ModelRegistry(store)
    first = registry.register("world", {"w": torch.zeros(2)}, ModelCard(kind="world"))
    again = registry.register("copy", {"w": torch.zeros(2)}, first.card)
    assert first.card.parent_version is None and first.card.to_dict()["parent_version"] is None
    assert again.card.name == "copy" and again.card.version == 1
    assert (again.card.created_at, again.card.git_sha) == (
        first.card.created_at,
        first.card.git_sha,
    )


def test_a_card_that_is_not_a_card_is_refused_naming_the_version(store):
    registry = ModelRegistry(store)
    registry.register("world", {"w": torch.zeros(2)}, ModelCard(kind="world"))
    uri = store.uri("models", "world", "1", "card.json")
    store.fs.write_bytes(uri, json.dumps({"kind": "world", "dataset": "spread@0"}).encode())
    with pytest.raises(RegistryError, match=r"world@1.*not a model card.*dataset"):
        registry.resolve("world@1")
    with pytest.raises(CardError, match="expected a JSON object"):
        ModelCard.from_dict([1, 2])
