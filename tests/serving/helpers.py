"""Register servable models without training, for the serving tests and bench/serve.py.

A test helper, so it lives under tests/ and ships in neither the wheel nor the bento.

The models are freshly initialized (seeded) with the architecture of the given configs,
so their compute per request is that of trained models of the same size; their cards
have the fields ``foresight.training.loop.workflow`` writes that serving reads (kind, model_config,
dataset lineage, spec).
"""

from __future__ import annotations

import socket
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any

import torch

from foresight.datasets.schema import ActionSpec, DatasetSpec
from foresight.datasets.storage import Store
from foresight.training.families import family
from foresight.training.loop.train import model_state
from foresight.training.registry import ModelRegistry, ModelVersion


def spread_spec(agents: int = 3) -> DatasetSpec:
    """The spec of simple_spread with ``agents`` agents: 18-feature observations (for 3
    agents), 5 discrete actions."""
    size = 4 + 2 * agents + 2 * (agents - 1) + 2 * (agents - 1)
    return DatasetSpec(
        env="simple_spread_v3",
        agents={f"agent_{i}": size for i in range(agents)},
        action=ActionSpec("discrete", n=5),
    )


TINY_WORLD = {"d_model": 32, "n_layers": 1, "n_heads": 2, "mlp_ratio": 2}
TINY_BEHAVIOR = {"d_model": 16, "context": 4}


def register_untrained(
    store: Store,
    kind: str,
    spec: DatasetSpec,
    model_config: dict[str, Any] | None = None,
    name: str | None = None,
    seed: int = 0,
    dataset: str = "spread@1",
    promote: str | None = "production",
) -> ModelVersion:
    """Register a seeded, untrained ``kind`` model for ``spec``; promote it to ``promote``."""
    torch.manual_seed(seed)
    fam = family(kind)
    config = fam.config_cls(spec=spec.to_dict(), **(model_config or {}))
    model = fam.model_cls(config).eval()
    ds_name, _, ds_version = dataset.partition("@")
    card = {
        "kind": kind,
        "dataset": {
            "ref": dataset,
            "name": ds_name,
            "version": int(ds_version or 1),
            "resolved": dataset,
        },
        "spec": spec.to_dict(),
        "model_config": asdict(config),
        "train_config": {},
        "metrics": {},
        "baselines": {},
        "quality_gate": {"passed": False, "failures": ["untrained (tests.serving.helpers)"]},
        "training": {"untrained": True, "seed": seed},
    }
    registry = ModelRegistry(store)
    mv = registry.register(name or kind, model_state(model), card)
    if promote:
        registry.promote(mv.ref, promote)
    return mv


def register_pair(
    store: Store,
    spec: DatasetSpec | None = None,
    world_config: dict[str, Any] | None = None,
    behavior_config: dict[str, Any] | None = None,
    promote: str | None = "production",
) -> tuple[ModelVersion, ModelVersion]:
    """A world and a behavior model on ``spec`` (tiny by default), both promoted."""
    spec = spec or spread_spec()
    world = register_untrained(
        store, "world", spec, TINY_WORLD if world_config is None else world_config, promote=promote
    )
    behavior = register_untrained(
        store,
        "behavior",
        spec,
        TINY_BEHAVIOR if behavior_config is None else behavior_config,
        promote=promote,
    )
    return world, behavior


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now, for a server a test starts."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def served_store(tmp_path_factory, name: str):
    """A store holding a registered world/behavior pair, FORESIGHT_STORE pointing at it while
    the context is open: the body of a module-scoped ``store`` fixture."""
    import pytest

    store = Store(str(tmp_path_factory.mktemp(name) / "store"))
    register_pair(store)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FORESIGHT_STORE", store.root)
        yield store
