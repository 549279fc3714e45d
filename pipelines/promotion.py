"""The last gate before production: the candidate against production, in closed loop.

``closed_loop_evaluation`` checks that the staging models' anticipatory team beats the
reactive teams. That alone would let a candidate that is worse than what is served replace
it. This blocking check plays the anticipatory team with the staging models and with the
production models on the same episodes (same seeds, so the same start states) and refuses
when the candidate's mean return is below production's by more than ``margin``. A refusal
stops the run before ``production_models``: production stays where it was. Both teams'
returns, their 95% intervals and the paired difference go into the check's metadata, which
the Dagster UI shows.

(No ``from __future__ import annotations``: Dagster reads these annotations at import.)
"""

import contextlib
import math
from typing import Any

import dagster as dg
import numpy as np

from foresight.pipelines.model_assets import closed_loop_evaluation
from foresight.pipelines.resources import ForesightStore
from foresight.training.agents.arena import ci95
from foresight.training.loop.workflow import run_arena_registered
from foresight.training.registry import ModelRegistry, RegistryError

CHECK = "not_worse_than_production"
TEAM = "anticipatory"


def compare_with_production(
    store,
    env: str,
    episodes: int,
    seed: int = 0,
    margin: float = 0.0,
    candidate: str = "staging",
    factories: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Play ``TEAM`` with the ``candidate`` and the production models on the same episodes.

    Returns ``passed``, ``failures`` and, when both played, ``candidate`` / ``production``
    (models, mean return, 95% interval) and ``difference`` (candidate - production per
    episode: mean and 95% interval). Without production models there is nothing to be worse
    than: passed. Without candidate models: refused.
    """
    registry = ModelRegistry(store)
    refs: dict[str, dict[str, str]] = {"candidate": {}, "production": {}}
    for side, alias in (("candidate", candidate), ("production", "production")):
        for kind in ("world", "behavior"):
            with contextlib.suppress(RegistryError):
                refs[side][kind] = registry.resolve(f"{kind}@{alias}").ref
    if len(refs["candidate"]) < 2:
        return {"passed": False, "failures": [f"no world and behavior models at @{candidate}"]}
    if len(refs["production"]) < 2:
        return {"passed": True, "failures": [], "reason": "no production models yet"}
    if refs["candidate"] == refs["production"]:
        return {"passed": True, "failures": [], "reason": "the candidate is production"}
    out: dict[str, Any] = {}
    returns = {}
    for side, models in refs.items():
        result = run_arena_registered(
            env,
            episodes,
            [TEAM],
            store=store,
            world_ref=models["world"],
            behavior_ref=models["behavior"],
            seed=seed,
            factories=factories,
        )
        team = result["controllers"][TEAM]
        returns[side] = np.asarray(team["returns"], dtype=np.float64)
        out[side] = {
            "models": models,
            "mean_return": team["mean_return"],
            "ci95": list(team["ci95"]),
        }
    diff = returns["candidate"] - returns["production"]  # (episodes,), paired by seed
    mean = float(diff.mean())
    out["difference"] = {"mean": mean, "ci95": list(ci95(diff)), "episodes": int(diff.size)}
    failures = []
    if math.isnan(mean):
        failures.append("a NaN return: cannot compare with production")
    elif mean < -margin:
        cand, prod = out["candidate"], out["production"]
        failures.append(
            f"candidate {cand['models']['world']}+{cand['models']['behavior']} returns "
            f"{cand['mean_return']:.2f}, production {prod['models']['world']}+"
            f"{prod['models']['behavior']} {prod['mean_return']:.2f} on the same {diff.size} "
            f"episodes (difference {mean:.2f}, 95% CI [{out['difference']['ci95'][0]:.2f}, "
            f"{out['difference']['ci95'][1]:.2f}]; margin {margin:g})"
        )
    return {"passed": not failures, "failures": failures, **out}


class ProductionComparisonConfig(dg.Config):
    """The paired closed-loop comparison of the staging models with the production models."""

    env: str = "simple_spread"
    episodes: int = 200
    """Episodes each side plays (the same seeds for both)."""
    seed: int = 0
    margin: float = 0.0
    """Refuse when the candidate's mean return is below production's by more than this."""


def _metadata(report: dict[str, Any]) -> dict[str, Any]:
    meta: dict[str, Any] = {"failures": dg.MetadataValue.json(report["failures"])}
    if "reason" in report:
        meta["reason"] = report["reason"]
    for side in ("candidate", "production"):
        if side in report:
            r = report[side]
            meta[f"{side}_models"] = ", ".join(r["models"].values())
            meta[f"{side}_mean_return"] = r["mean_return"]
            meta[f"{side}_ci95"] = f"[{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}]"
    if "difference" in report:
        d = report["difference"]
        meta["difference_mean"] = d["mean"]
        meta["difference_ci95"] = f"[{d['ci95'][0]:.2f}, {d['ci95'][1]:.2f}]"
        meta["episodes"] = d["episodes"]
    return meta


@dg.asset_check(
    asset=closed_loop_evaluation,
    name=CHECK,
    blocking=True,
    description="The staging models' anticipatory team is not worse than production's, on "
    "the same episodes; a refusal keeps production where it is.",
)
def not_worse_than_production(
    context: dg.AssetCheckExecutionContext,
    config: ProductionComparisonConfig,
    foresight_store: ForesightStore,
) -> dg.AssetCheckResult:
    report = compare_with_production(
        foresight_store.store(), config.env, config.episodes, config.seed, config.margin
    )
    context.log.info(f"candidate vs production: {report}")
    return dg.AssetCheckResult(
        passed=report["passed"], severity=dg.AssetCheckSeverity.ERROR, metadata=_metadata(report)
    )
