"""The main job on the embedded default (``make demo``): local store, local Dagster, CPU.

1. Record simple_spread episodes with the mixed scripted policy into the landing zone.
2. Let the landing sensor see the new files and run the ingest job in process, on a local
   Dagster instance kept under the store (``<store>/dagster``), so ``dagster dev`` shows it.
3. Print the dataset's versions and stats.

Running it again re-generates the same files (seeded); the ingest sees their checksums and
adds nothing.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

DEFAULT_EPISODES = 2_000


def _banner(text: str) -> None:
    print(f"\n== {text}", flush=True)


def dagster_instance(store_root: str):
    """A persistent local Dagster instance under the store folder (SQLite)."""
    import dagster as dg

    if not os.environ.get("DAGSTER_HOME"):
        base = store_root if not store_root.startswith("s3://") else ".foresight"
        home = Path(base) / "dagster"
        home.mkdir(parents=True, exist_ok=True)
        config = home / "dagster.yaml"
        if not config.exists():
            config.write_text("telemetry:\n  enabled: false\n")
        os.environ["DAGSTER_HOME"] = str(home.resolve())
    return dg.DagsterInstance.get()


def run(episodes: int = DEFAULT_EPISODES, dataset: str = "spread", seed: int = 0) -> dict:
    import dagster as dg

    from datasets import catalog
    from datasets.sources.generate import generate_episodes
    from datasets.storage import Store
    from pipelines.cli import _show_text, _table
    from pipelines.definitions import defs
    from pipelines.sensors import landing_sensor

    store = Store()
    store.ensure()
    print(f"store: {store.root}")

    _banner(f"1. record {episodes} simple_spread episodes (mixed scripted policy) into landing/")
    landing = store.landing_uri(dataset)
    present = store.fs.list_files(landing)
    if present:
        print(f"landing already holds {len(present)} file(s) from an earlier run; not regenerating")
    else:
        gen = generate_episodes(
            env="simple_spread", episodes=episodes, policy="mixed", out=landing, seed=seed
        )
        print(f"wrote {gen.rows} rows in {len(gen.files)} files to {landing} ({gen.seconds:.1f}s)")

    _banner("2. landing sensor -> ingest job (Dagster, in process)")
    instance = dagster_instance(store.root)
    context = dg.build_sensor_context(
        instance=instance, resources={"foresight_store": defs.resources["foresight_store"]}
    )
    evaluation = landing_sensor(context)
    requests = getattr(evaluation, "run_requests", None) or []
    if not requests:
        print("no new landing files: every file is already in the dataset")
    job = defs.resolve_job_def("ingest_job")
    for request in requests:
        start = time.perf_counter()
        run_config = {
            **request.run_config,
            "loggers": {"console": {"config": {"log_level": "WARNING"}}},
        }
        result = job.execute_in_process(run_config=run_config, instance=instance, tags=request.tags)
        meta = result.asset_materializations_for_node("trajectory_dataset")[0].metadata
        print(
            f"run {result.run_id[:8]}: {request.tags.get('foresight/files')} file(s), "
            f"read {meta['rows_read'].value}, accepted {meta['rows_accepted'].value}, "
            f"quarantined {meta['rows_quarantined'].value}, already ingested "
            f"{meta['already_ingested'].value} file(s), version {meta['version'].value}"
            f"{' (new)' if meta['new_version'].value else ' (unchanged)'} "
            f"({time.perf_counter() - start:.1f}s)"
        )

    _banner(f"3. dataset {dataset}: versions and stats")
    versions = catalog.dataset_versions(dataset, store)
    print(
        _table(
            versions, ["version", "rows_added", "rows", "read", "quarantined", "files", "ingest_id"]
        )
    )
    stats = catalog.dataset_stats(dataset, store)
    print(_show_text(stats))
    return {"dataset": dataset, "stats": stats}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--episodes", type=int, default=DEFAULT_EPISODES)
    parser.add_argument("--dataset", default="spread")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    run(args.episodes, args.dataset, args.seed)


if __name__ == "__main__":
    main()
