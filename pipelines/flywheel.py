"""The data flywheel, round after round: serve, play and record, ingest, retrain, gate, reload.

One round: the production models are served (one ``bentoml serve`` for all rounds, following
the production aliases); the anticipatory team plays arena episodes through the service,
each episode recorded and posted to ``POST /episodes`` (landing in the dataset's landing
folder); ``ingest_job`` ingests what landed; ``train_job`` retrains both models on the grown
dataset version, and its gates (baselines, reactive teams, then the candidate against
production on the same episodes) decide whether the production aliases move; the service's
alias polling swaps the new versions in, with no restart. Each round's arena is the return of
the models that played it; a last arena measures the models the final round left.

Ingest and training run as the Dagster jobs, in process, on the instance given (the CLI:
the local instance under the store), so the UI shows every run, check and its numbers.

(No ``from __future__ import annotations``: Dagster reads these annotations at import.)
"""

import contextlib
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import dagster as dg
import pydantic

from foresight.datasets.catalog import NAME_RE, DatasetTable
from foresight.datasets.storage import Store
from foresight.pipelines.jobs import pipeline_jobs
from foresight.pipelines.model_assets import config_field
from foresight.pipelines.promotion import CHECK as PRODUCTION_CHECK
from foresight.pipelines.resources import ForesightStore
from foresight.pipelines.sensors import new_landing_files
from foresight.serving.client import ForesightClient
from foresight.serving.launch import ServerProcess
from foresight.serving.recorder import ArenaRecording, EpisodeRecorder
from foresight.serving.remote import HttpAnticipatoryController, RemoteFactory, served_specs
from foresight.training.loop.options import options
from foresight.training.loop.workflow import _write_to_store, run_arena_registered
from foresight.training.registry import ModelRegistry, RegistryError

log = logging.getLogger("foresight.flywheel")

TEAM = "anticipatory"
PREFIX = "served"
"""Episode ids of recorded episodes start with this: the served share of a dataset."""


class FlywheelError(ValueError):
    """Bad flywheel input or a round that cannot go on; the message is one line."""


@dataclass
class FlywheelConfig:
    """What the rounds play, train and gate; the defaults are the issue's measurement."""

    env: str = "simple_spread"
    """Simulator the production models were trained on."""
    dataset: str = "spread"
    """Dataset the production models were trained on; served episodes join it."""
    rounds: int = 3
    """Serve-play-ingest-retrain-gate-reload rounds."""
    episodes: int = 200
    """Arena episodes the anticipatory team plays (and records) through the service a round."""
    gate_episodes: int = 200
    """Episodes of each closed-loop gate (reactive teams; candidate against production)."""
    seed: int = 0
    """Round r plays seeds seed + r * episodes ...: fresh start states every round."""
    train: dict[str, Any] = field(default_factory=dict)
    """Overrides of train_job's model configs (epochs, max_steps_per_epoch, ...)."""
    train_by_kind: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per model family (``world``, ``behavior``), overrides on top of ``train``."""
    offline_rl: dict[str, Any] = field(default_factory=dict)
    """Overrides of the offline-RL peer's config (``OfflineRLTrainConfig``: steps, ...); the
    peer is trained afresh on each round's dataset version, for the closed-loop gate."""
    fine_tune: bool = False
    """Retrain each model starting from its production version (``TrainConfig.init_from``)
    instead of a fresh initialization: a round then needs far fewer epochs."""
    log_level: str = "INFO"
    """Console log level of the Dagster runs a round starts (ingest, train)."""
    reload_seconds: float = 1.0
    """The service's alias polling period."""
    reload_timeout: float = 120.0
    """How long to wait for the service to swap in promoted versions."""


def _service_env(store: Store) -> dict[str, str]:
    env = {"FORESIGHT_STORE": store.root, "FORESIGHT_EPISODES_FLUSH_SECONDS": "0"}
    if store.is_s3:
        s3 = store.fs.s3
        env |= {
            "FORESIGHT_S3_ENDPOINT": s3.endpoint,
            "AWS_ACCESS_KEY_ID": s3.access_key,
            "AWS_SECRET_ACCESS_KEY": s3.secret_key,
        }
    return env


def production(store: Store, missing_ok: bool = False) -> dict[str, str]:
    """``{"world": "world@N", "behavior": "behavior@M"}`` at the production aliases
    (RegistryError where one is missing, unless ``missing_ok``: then it is left out)."""
    registry = ModelRegistry(store)
    out = {}
    for kind in ("world", "behavior"):
        try:
            out[kind] = registry.resolve(f"{kind}@production").ref
        except RegistryError:
            if not missing_ok:
                raise
    return out


def check_inputs(config: FlywheelConfig, store: Store) -> dict[str, str]:
    """The production models, or FlywheelError saying what is missing and what to do."""
    if config.rounds < 1:
        raise FlywheelError(f"--rounds must be >= 1, got {config.rounds}")
    for name in ("episodes", "gate_episodes"):
        if getattr(config, name) < 2:
            raise FlywheelError(
                f"{name} must be >= 2 (a 95% interval), got {getattr(config, name)}"
            )
    if (
        not NAME_RE.match(config.dataset)
        or DatasetTable(store, config.dataset).latest_version() is None
    ):
        raise FlywheelError(
            f"unknown dataset {config.dataset!r} in {store.root}; see `foresight datasets list`"
        )
    try:
        models = production(store)
    except RegistryError as exc:
        raise FlywheelError(
            f"no production models to serve ({exc}); train and promote them first "
            "(`foresight train`, `foresight models promote`)"
        ) from exc
    card = ModelRegistry(store).resolve(models["world"]).card
    trained_on = card.dataset.name if card.dataset else None
    if trained_on != config.dataset:
        raise FlywheelError(
            f"{models['world']} (world@production) was trained on {trained_on!r}, not "
            f"{config.dataset!r}: the flywheel grows the production models' own dataset"
        )
    return models


def served_share(store: Store, ref: str) -> dict[str, Any]:
    """Episodes of dataset version ``ref`` and the share of them that came through /episodes."""
    name, _, version = ref.partition("@")
    ids = DatasetTable(store, name).episode_ids(int(version))
    served = sum(1 for e in ids if str(e).startswith(f"{PREFIX}-"))
    return {"episodes": len(ids), "served_episodes": served, "served_share": served / len(ids)}


def _arena(config: FlywheelConfig, store: Store, client: ForesightClient, seed: int, record: bool):
    """The anticipatory team through the service; with ``record``, each episode is posted to
    /episodes and the service is asked to write what it holds."""
    observer = None
    if record:
        observer = ArenaRecording(EpisodeRecorder(client, dataset=config.dataset, prefix=PREFIX))
    factories = {
        TEAM: RemoteFactory(
            lambda: HttpAnticipatoryController(client, observer),
            served_specs(client.models().models),
        )
    }
    result = run_arena_registered(
        config.env, config.episodes, [TEAM], store=store, seed=seed, factories=factories
    )
    result["models"] = _served(client)
    if observer is not None:
        observer.recorder.close(flush=True)
        if observer.recorder.pending:
            raise FlywheelError(
                f"the service did not accept {len(observer.recorder.pending)} recorded "
                "episodes; see its log"
            )
        result["recorded"] = len(observer.recorder.posted)
    return result


def _served(client: ForesightClient) -> dict[str, str]:
    return {m.role: m.version for m in client.models().models}


def _ingest(config: FlywheelConfig, store: Store, instance, resources) -> str:
    """Ingest what landed for the dataset through ``ingest_job``; the new version's ref."""
    ingest_job = pipeline_jobs(resources).resolve_job_def("ingest_job")
    files = new_landing_files(store, {}).get(config.dataset, [])
    if not files:
        raise FlywheelError(f"nothing landed in landing/{config.dataset}/ after the arena")
    run = ingest_job.execute_in_process(
        run_config={
            "ops": {"trajectory_dataset": {"config": {"dataset": config.dataset, "files": files}}},
            "loggers": {"console": {"config": {"log_level": config.log_level}}},
        },
        instance=instance,
        tags={"foresight/flywheel": config.dataset},
        raise_on_error=False,
    )
    if not run.success:
        raise FlywheelError(f"ingest of {len(files)} landed files failed (run {run.run_id})")
    return f"{config.dataset}@{DatasetTable(store, config.dataset).latest_version()}"


GATE_TEAMS = ("greedy", "bc", "offline-rl", TEAM)
"""The teams of a round's closed-loop gate: the anticipatory team must beat the others."""


def train_run_config(
    config: FlywheelConfig, ref: str, controllers: tuple[str, ...] = GATE_TEAMS
) -> dict[str, Any]:
    """``train_job``'s run config: both models and the offline-RL peer on ``ref``, the
    closed-loop gates' sizes and the teams of the first one."""

    def model(kind: str) -> dict[str, Any]:
        start = {"init_from": f"{kind}@production"} if config.fine_tune else {}
        return {"dataset": ref, **start, **config.train, **config.train_by_kind.get(kind, {})}

    arena = {"env": config.env, "episodes": config.gate_episodes, "seed": config.seed}
    return {
        "ops": {
            "behavior_model": {"config": model("behavior")},
            "world_model": {"config": model("world")},
            "offline_rl_model": {"config": {"dataset": ref, **config.offline_rl}},
            "closed_loop_evaluation": {"config": arena | {"controllers": list(controllers)}},
            f"closed_loop_evaluation_{PRODUCTION_CHECK}": {"config": arena},
        }
    }


def run_train_job(
    config: FlywheelConfig,
    store: Store,
    ref: str,
    instance,
    resources,
    controllers: tuple[str, ...] = GATE_TEAMS,
    tags: dict[str, str] | None = None,
    log_level: str = "INFO",
) -> dict:
    """``train_job`` on ``ref``; what each gate said (with its numbers), the models, and the
    closed-loop arena of the staging models (``arena``, None when a gate stopped the run
    before it), as ``foresight arena --json`` gives it, without the per-episode returns."""
    train_job = pipeline_jobs(resources).resolve_job_def("train_job")
    before = production(store, missing_ok=True)
    run = train_job.execute_in_process(
        run_config={
            **train_run_config(config, ref, controllers),
            "loggers": {"console": {"config": {"log_level": log_level}}},
        },
        instance=instance,
        tags=tags or {"foresight/flywheel": config.dataset, "foresight/dataset": ref},
        raise_on_error=False,
    )
    checks = {}
    for e in run.get_asset_check_evaluations():
        meta = {k: getattr(v, "value", v) for k, v in e.metadata.items()}
        checks[f"{e.asset_key.path[-1]}.{e.check_name}"] = {"passed": e.passed} | meta
    candidates = {}
    for kind in ("world", "behavior"):
        node = f"{kind}_model"
        with contextlib.suppress(Exception):  # the step failed before registering
            candidates[kind] = run.output_for_node(node)
    after = production(store, missing_ok=True)
    arena = None
    for event in run.asset_materializations_for_node("closed_loop_evaluation"):
        meta = {k: getattr(v, "value", v) for k, v in event.metadata.items()}
        arena = {k: meta[k] for k in ("env", "episodes", "seed", "models", "gap")}
        arena |= {"controllers": meta["teams"], "files": meta["report"]}
    return {
        "run_id": run.run_id,
        "success": run.success,
        "errors": step_errors(run),
        "candidates": candidates,
        "arena": arena,
        "checks": checks,
        "promoted": after != before,
        "verdict": "promoted" if after != before else "refused",
        "failed": sorted(k for k, c in checks.items() if not c["passed"]),
        "production": after,
    }


def step_errors(run) -> list[str]:
    """The error message of each step that failed in ``run`` (an in-process Dagster run)."""
    return [
        e.event_specific_data.error.message.strip()
        for e in run.all_events
        if e.is_step_failure and e.event_specific_data.error is not None
    ]


def _wait_for(client: ForesightClient, models: dict[str, str], timeout: float) -> float:
    """Seconds until the service serves ``models`` (its alias polling), or FlywheelError."""
    start = time.monotonic()
    while _served(client) != models:
        if time.monotonic() - start > timeout:
            raise FlywheelError(
                f"the service still serves {_served(client)} {timeout:.0f} s after "
                f"production moved to {models}"
            )
        time.sleep(0.2)
    return time.monotonic() - start


def run_flywheel(
    config: FlywheelConfig,
    store: Store | None = None,
    instance: dg.DagsterInstance | None = None,
    port: int | None = None,
    echo=None,
) -> dict[str, Any]:
    """Run ``config.rounds`` rounds; ``{"config", "rounds": [...], "final": arena}``.

    Each round holds ``dataset_version`` (after ingest), ``served_share``, ``models`` (those
    that played), ``arena`` (their closed-loop returns), ``gate`` (each check's verdict and
    numbers, ``promoted``) and ``reload_seconds`` (how long the service took to swap).
    """
    store = store or Store.from_env()
    models = check_inputs(config, store)
    instance = instance or dg.DagsterInstance.ephemeral()
    resources = {"foresight_store": ForesightStore.of(store)}
    say = echo or (lambda text: None)
    logdir = tempfile.mkdtemp(prefix="foresight-flywheel-")
    from foresight.serving.launch import port_open

    port = port or _free_port()
    if port_open("127.0.0.1", port):
        raise FlywheelError(f"port {port} is in use")
    server = ServerProcess(
        port,
        os.path.join(logdir, "serve.log"),
        world="world@production",
        behavior="behavior@production",
        reload_seconds=config.reload_seconds,
        extra=_service_env(store),
    )
    rounds: list[dict[str, Any]] = []
    say(f"serving {models} on {server.url}")
    with server:
        client = ForesightClient(server.url)
        for r in range(config.rounds):
            seed = config.seed + r * config.episodes
            arena = _arena(config, store, client, seed, record=True)
            say(f"round {r}: {arena['models']} {TEAM} {_ret(arena)}; ingesting")
            ref = _ingest(config, store, instance, resources)
            share = served_share(store, ref)
            say(f"round {r}: {ref} ({share['served_share']:.0%} served); retraining")
            gate = run_train_job(
                config, store, ref, instance, resources, log_level=config.log_level
            )
            waited = None
            if gate["promoted"]:
                waited = _wait_for(client, gate["production"], config.reload_timeout)
            say(f"round {r}: {gate['verdict']} {gate['candidates']} (failed: {gate['failed']})")
            rounds.append(
                {
                    "round": r,
                    "dataset_version": ref,
                    "served_share": share["served_share"],
                    "episodes": share["episodes"],
                    "models": arena["models"],
                    "arena": arena,
                    "gate": gate,
                    "reload_seconds": waited,
                }
            )
        final = _arena(config, store, client, config.seed + config.rounds * config.episodes, False)
        say(f"after {config.rounds} rounds: {final['models']} {TEAM} {_ret(final)}")
    result = {"config": asdict(config), "rounds": rounds, "final": final}
    stamp = time.strftime("%Y%m%d-%H%M%S")
    result["files"] = _write_to_store(
        store, f"reports/flywheel/{config.dataset}-{stamp}", lambda out: write_report(result, out)
    )
    return result


def write_report(result: dict[str, Any], out_dir: str) -> dict[str, str]:
    """``flywheel.json`` and ``flywheel.png`` (the team's return per round, 95% intervals,
    promoted rounds filled) into ``out_dir``."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    arenas = [r["arena"] for r in result["rounds"]] + [result["final"]]
    teams = [a["controllers"][TEAM] for a in arenas]
    x = list(range(len(teams)))
    means = [t["mean_return"] for t in teams]
    err = [
        [m - t["ci95"][0] for m, t in zip(means, teams, strict=True)],
        [t["ci95"][1] - m for m, t in zip(means, teams, strict=True)],
    ]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.errorbar(x, means, yerr=err, fmt="o-", capsize=4)
    for r in result["rounds"]:
        if r["gate"]["promoted"]:
            ax.axvline(r["round"] + 0.5, color="tab:green", alpha=0.3)
    ax.set_xticks(x, [f"round {r['round']}" for r in result["rounds"]] + ["final"])
    ax.set_ylabel(f"{TEAM} team return (95% CI)")
    ax.set_title(f"flywheel on {result['config']['dataset']} (green: promoted)")
    fig.tight_layout()
    png, js = os.path.join(out_dir, "flywheel.png"), os.path.join(out_dir, "flywheel.json")
    fig.savefig(png, dpi=120)
    plt.close(fig)
    with open(js, "w") as f:
        json.dump(result, f, indent=2, default=str)
    return {"json": js, "png": png}


def _ret(arena: dict) -> str:
    t = arena["controllers"][TEAM]
    return f"{t['mean_return']:.2f} [{t['ci95'][0]:.2f}, {t['ci95'][1]:.2f}]"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- Dagster -----------------------------------------------------------------------------------


FlywheelJobConfig = pydantic.create_model(
    "FlywheelJobConfig",
    __base__=dg.Config,
    __doc__="The flywheel's rounds: every FlywheelConfig field, same defaults and help.",
    **{o.name: config_field(o) for o in options(FlywheelConfig)},
)


@dg.op(description="Serve, play and record, ingest, retrain, gate and reload, for R rounds.")
def flywheel_rounds(
    context: dg.OpExecutionContext, config: FlywheelJobConfig, foresight_store: ForesightStore
) -> dg.Output:
    result = run_flywheel(
        FlywheelConfig(**config.model_dump()),
        store=foresight_store.store(),
        instance=context.instance,
        echo=context.log.info,
    )
    return dg.Output(result, metadata=round_metadata(result))


def round_metadata(result: dict[str, Any]) -> dict[str, Any]:
    """The per-round table as Dagster metadata (markdown) and JSON."""
    rows = [table_row(r) for r in result["rounds"]] + [table_row(None, result["final"])]
    lines = ["| " + " | ".join(COLUMNS) + " |", "|---" * len(COLUMNS) + "|"]
    lines += ["| " + " | ".join(str(row[c]) for c in COLUMNS) + " |" for row in rows]
    return {"rounds": dg.MetadataValue.md("\n".join(lines)), "table": dg.MetadataValue.json(rows)}


COLUMNS = ["round", "dataset_version", "served_share", "models", "return", "ci95", "gate"]


def table_row(r: dict[str, Any] | None, arena: dict[str, Any] | None = None) -> dict[str, Any]:
    """One printed row: a round, or (``r`` None) the final arena."""
    arena = arena if r is None else r["arena"]
    team = arena["controllers"][TEAM]
    return {
        "round": "final" if r is None else r["round"],
        "dataset_version": "" if r is None else r["dataset_version"],
        "served_share": "" if r is None else f"{r['served_share']:.0%}",
        "models": ", ".join(arena["models"].values()),
        "return": f"{team['mean_return']:.2f}",
        "ci95": f"[{team['ci95'][0]:.2f}, {team['ci95'][1]:.2f}]",
        "gate": "" if r is None else _verdict(r["gate"]),
    }


def _verdict(gate: dict[str, Any]) -> str:
    if gate["promoted"]:
        return "promoted " + ", ".join(gate["production"].values())
    return "refused: " + (", ".join(gate["failed"]) or "run failed")


@dg.job(description="The data flywheel (foresight flywheel): R rounds on one dataset.")
def flywheel_job():
    flywheel_rounds()
