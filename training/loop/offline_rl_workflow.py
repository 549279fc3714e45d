"""From a dataset reference to a registered offline-RL peer (``foresight train offline-rl``).

Resolve the dataset version, train (:func:`foresight.training.loop.offline_rl.train_offline_rl`),
gate, and register the network with a card whose lineage names the exact dataset version,
both configs, the reward scale used and the code version. Nothing reaches the registry
unless training finished.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from foresight.datasets.storage import Store
from foresight.training.loop.config import OfflineRLTrainConfig
from foresight.training.loop.offline_rl import KIND, offline_rl_gate, train_offline_rl
from foresight.training.loop.train import model_state
from foresight.training.loop.workflow import SPLIT_FILE, _write_to_store, load_frame, run_dir
from foresight.training.models.offline_rl import OfflineRLConfig, check_discrete
from foresight.training.registry import ModelRegistry, check_model_name


def train_and_register_offline_rl(
    dataset_ref: str,
    store=None,
    config: OfflineRLTrainConfig | None = None,
    model_config: OfflineRLConfig | dict | None = None,
    name: str | None = None,
    resume: bool = False,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Train the offline-RL peer on a dataset version and register it (kind ``offline-rl``).

    The card holds the lineage the other models' cards hold: the dataset reference resolved to
    its version, both configs (and the reward scale used), the git sha (added by the
    registry), the metrics next to the closed-loop baselines, and the gate's verdict.
    """
    store = store or Store.from_env()
    config = config or OfflineRLTrainConfig()
    model_name = check_model_name(name or KIND)
    table, version, frame, spec = load_frame(dataset_ref, store)
    check_discrete(spec)
    workdir = run_dir(KIND, table.name, version, config, model_config, store)
    started = time.time()
    result = train_offline_rl(
        frame, spec, config, model_config, workdir, resume=resume, progress=progress
    )
    passed, failures = offline_rl_gate(result.metrics, result.baselines)
    training = {
        "steps": config.steps,
        "seconds": round(time.time() - started, 1),
        "reward_scale": result.reward_scale,
        "final": result.history[-1] if result.history else {},
        "n_train_episodes": len(result.train_episode_ids),
        "n_val_episodes": len(result.val_episode_ids),
        "history": result.history,
    }
    card = {
        "kind": KIND,
        "dataset": {
            "ref": dataset_ref,
            "name": table.name,
            "version": version,
            "resolved": f"{table.name}@{version}",
        },
        "spec": spec.to_dict(),
        "train_config": asdict(config),
        "model_config": asdict(result.model_config),
        "algorithm": "independent learners, shared parameters, torchrl DiscreteCQLLoss",
        "metrics": result.metrics,
        "baselines": result.baselines,
        "quality_gate": {"passed": passed, "failures": failures},
        "training": training,
    }
    split = {"train": result.train_episode_ids, "val": result.val_episode_ids}
    mv = ModelRegistry(store).register(
        model_name,
        model_state(result.model),
        card,
        extra_files={SPLIT_FILE: json.dumps(split).encode()},
    )

    def write(folder: str) -> dict[str, str]:
        path = Path(folder) / "offline-rl.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({k: card[k] for k in ("metrics", "baselines", "training")}))
        return {"json": str(path)}

    report = _write_to_store(store, f"reports/{mv.name}@{mv.version}", write)
    return {
        "model": mv.ref,
        "version": mv.version,
        "dataset": card["dataset"]["resolved"],
        "metrics": result.metrics,
        "baselines": result.baselines,
        "quality_gate": card["quality_gate"],
        "training": training,
        "report": report,
    }
