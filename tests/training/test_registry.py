"""The model registry on a local folder and on S3: versions, cards, aliases, rollback, delete."""

from __future__ import annotations

import pytest
import torch

from foresight.training.families import KINDS, family
from foresight.training.registry import ModelRef, ModelRegistry, RegistryError


def tensors(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "layer.weight": torch.randn(4, 3, generator=g),
        "layer.bias": torch.randn(4, generator=g),
    }


def card(dataset: str = "spread@0") -> dict:
    return {
        "kind": "world",
        "dataset": {"ref": dataset, "name": "spread", "version": 0},
        "config": {"d": 8},
    }


def test_register_load_and_cards(store):
    registry = ModelRegistry(store)
    first = registry.register("world", tensors(1), card())
    second = registry.register("world", tensors(2), card("spread@1"))
    assert (first.version, second.version) == (1, 2)
    assert second.card.parent_version == 1 and first.card.parent_version is None
    assert second.card.dataset.ref == "spread@1"
    assert second.card.git_sha and second.card.created_at > 0
    loaded, mv = registry.load("world@1")
    assert mv.version == 1
    for key, value in tensors(1).items():
        assert torch.equal(loaded[key], value)
    assert registry.resolve("world").version == 2
    assert registry.names() == ["world"]


def test_aliases_promote_and_rollback(store):
    registry = ModelRegistry(store)
    for seed in range(3):
        registry.register("behavior", tensors(seed), card())
    registry.promote("behavior@1", "production")
    registry.promote("behavior@2", "production")
    registry.promote("behavior@3", "production")
    assert registry.resolve("behavior@production").version == 3
    registry.rollback("behavior", "production")
    assert registry.aliases("behavior")["production"] == 2
    registry.rollback("behavior", "production")
    assert registry.aliases("behavior")["production"] == 1
    with pytest.raises(RegistryError, match="no earlier version"):
        registry.rollback("behavior", "production")
    assert [e["action"] for e in registry.alias_log("behavior")] == ["promote"] * 3 + [
        "rollback"
    ] * 2


def test_delete_and_errors(store):
    registry = ModelRegistry(store)
    registry.register("world", tensors(1), card())
    registry.register("world", tensors(2), card())
    registry.promote("world@2", "staging")
    with pytest.raises(RegistryError, match="pointed at by alias"):
        registry.delete("world@2")
    registry.delete("world@1")
    assert registry.version_numbers("world") == [2]
    with pytest.raises(RegistryError, match="has no version 1"):
        registry.resolve("world@1")
    with pytest.raises(RegistryError, match="has no alias 'production'"):
        registry.resolve("world@production")
    with pytest.raises(RegistryError, match="no versions"):
        registry.resolve("nothing")
    with pytest.raises(RegistryError, match="invalid model reference"):
        ModelRef.parse("9lives")


def test_half_written_version_is_invisible(store):
    registry = ModelRegistry(store)
    registry.register("world", tensors(1), card())
    # Weights of version 2 written, card never: as after a crash mid-registration.
    store.fs.write_bytes(store.uri("models", "world", "2", "weights.safetensors"), b"partial")
    assert registry.version_numbers("world") == [1]
    assert registry.register("world", tensors(3), card()).version == 2
    bad = {"metrics": {"rollout_mse_10": float("nan"), "nll": float("inf")}}
    with pytest.raises(
        RegistryError, match=r"not finite numbers \(metrics.rollout_mse_10, metrics.nll\)"
    ):
        registry.register("world", tensors(4), bad)
    assert registry.version_numbers("world") == [1, 2]


@pytest.mark.parametrize("kind", KINDS)
def test_a_version_of_another_architecture_is_refused_naming_both(store, kind):
    registry = ModelRegistry(store)
    current, legacy_layout = family(kind).architecture, family(kind).legacy_architecture
    ok = registry.register(
        kind, tensors(1), {"kind": kind, "model_config": {"architecture": current}}
    )
    assert registry.load(ok.ref)[1].version == ok.version
    other = registry.register(
        kind, tensors(2), {"kind": kind, "model_config": {"architecture": "x/9"}}
    )
    with pytest.raises(RegistryError, match=f"architecture 'x/9'.*builds.*{current}"):
        registry.load(other.ref)
    legacy = registry.register(kind, tensors(3), {"kind": kind, "model_config": {"d_model": 8}})
    if legacy_layout == current:
        registry.load(legacy.ref)  # saved before versions were recorded, same layout
    else:
        with pytest.raises(RegistryError, match=legacy_layout):
            registry.load(legacy.ref)


def registered(store, count: int, name: str = "world") -> ModelRegistry:
    registry = ModelRegistry(store)
    for seed in range(count):
        registry.register(name, tensors(seed), card())
    return registry


def test_rollback_after_out_of_order_promotions_returns_where_the_alias_was(store):
    registry = registered(store, 3)
    registry.promote("world@3", "production")
    registry.promote("world@1", "production")
    assert registry.rollback("world", "production")["to"] == 3  # not 1 - 1, not 2
    assert registry.aliases("world")["production"] == 3
    with pytest.raises(RegistryError, match="no earlier version"):
        registry.rollback("world", "production")


def test_rollback_of_one_alias_ignores_the_moves_of_another(store):
    registry = registered(store, 4)
    registry.promote("world@2", "production")
    registry.promote("world@1", "staging")
    registry.promote("world@4", "production")
    registry.promote("world@3", "staging")
    registry.promote("world@4", "staging")
    assert registry.rollback("world", "production")["to"] == 2
    assert registry.rollback("world", "staging")["to"] == 3
    assert registry.rollback("world", "staging")["to"] == 1
    assert registry.aliases("world") == {"production": 2, "staging": 1}


def test_repeated_rollbacks_and_a_promote_after_a_rollback(store):
    registry = registered(store, 4)
    for v in (1, 3, 2):
        registry.promote(f"world@{v}", "production")
    assert registry.rollback("world", "production")["to"] == 3
    registry.promote("world@4", "production")
    assert registry.rollback("world", "production")["to"] == 3  # where it was before 4
    assert registry.rollback("world", "production")["to"] == 1
    with pytest.raises(RegistryError, match="no earlier version"):
        registry.rollback("world", "production")


def test_promoting_the_version_already_there_is_no_step_to_roll_back_to(store):
    registry = registered(store, 2)
    registry.promote("world@1", "production")
    registry.promote("world@2", "production")
    registry.promote("world@2", "production")
    assert registry.rollback("world", "production")["to"] == 1


def test_rollback_onto_a_deleted_version_is_a_clear_error_and_moves_nothing(store):
    registry = registered(store, 3)
    registry.promote("world@1", "production")
    registry.promote("world@2", "production")
    registry.promote("world@3", "production")
    registry.rollback("world", "production")  # -> 2
    registry.delete("world@3")
    registry.promote("world@1", "production")
    registry.delete("world@2")
    with pytest.raises(RegistryError, match=r"version 2.*deleted"):
        registry.rollback("world", "production")
    assert registry.aliases("world")["production"] == 1
    assert registry.alias_log("world")[-1]["action"] == "promote"


def test_a_deleted_number_is_not_reused_and_rollback_never_reaches_a_newcomer(store):
    registry = registered(store, 2)
    registry.promote("world@1", "production")
    registry.promote("world@2", "staging")
    registry.promote("world@1", "staging")
    registry.delete("world@2")
    assert registry.register("world", tensors(9), card()).version == 3
    registry.promote("world@3", "production")
    assert registry.rollback("world", "production")["to"] == 1
    with pytest.raises(RegistryError, match=r"version 2.*deleted"):
        registry.rollback("world", "staging")


def test_a_store_without_a_counter_continues_after_its_highest_version(store):
    registry = registered(store, 3)
    doc = store.read_json("registry/models/world.json") or {}
    doc.pop("next_version", None)  # as written by the registry before it kept a counter
    store.write_json("registry/models/world.json", doc)
    assert registry.register("world", tensors(5), card()).version == 4
    registry.delete("world@4")
    assert registry.register("world", tensors(6), card()).version == 5


@pytest.mark.parametrize(
    "call",
    [
        lambda r: r.rollback("../../outside", "production"),
        lambda r: r.rollback("world\n", "production"),
        lambda r: r.rollback("world", "../x"),
        lambda r: r.aliases("../../outside"),
        lambda r: r.alias_log("../../outside"),
        lambda r: r.promote("../../outside@1", "production"),
        lambda r: r.promote("world@1", "../x"),
        lambda r: r.delete("../../outside@1"),
        lambda r: r.versions("../x"),
    ],
)
def test_names_are_checked_before_any_path_is_touched(store, tmp_path, call):
    registry = registered(store, 1)
    registry.promote("world@1", "production")
    before = sorted(store.fs.list_files(store.root))
    outside = sorted(p for p in tmp_path.rglob("*") if "store" not in p.parts)
    with pytest.raises(RegistryError, match="invalid"):
        call(registry)
    assert sorted(store.fs.list_files(store.root)) == before
    assert sorted(p for p in tmp_path.rglob("*") if "store" not in p.parts) == outside


def test_listings_skip_and_name_a_bad_card_or_an_odd_folder(store):
    registered(store, 2)
    registered(store, 1, name="behavior")
    store.fs.write_bytes(store.uri("models", "world", "2", "card.json"), b'{"name": "wor')
    store.fs.write_bytes(store.uri("models", "9lives", "1", "card.json"), b"{}")
    store.fs.write_bytes(store.uri("models", "world", "notes", "card.json"), b"{}")
    fresh = ModelRegistry(store)
    assert fresh.names() == ["behavior", "world"]
    assert [mv.version for mv in fresh.versions("world")] == [1]
    problems = "\n".join(fresh.problems)
    assert "world@2" in problems and "not valid JSON" in problems
    assert "'9lives'" in problems
    assert "notes" in problems
    with pytest.raises(RegistryError, match=r"world@2.*not valid JSON"):
        fresh.resolve("world@2")
