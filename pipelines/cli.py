"""The ``foresight`` command line: thin wrappers that call the library and print what it did.

Every command takes ``--json`` for machine-readable output; errors go to stderr as one line
naming the input and what to do, with exit status 2. Every name and reference on the command
line is checked (:data:`NAME_ARGS`) before any work starts; a storage failure (S3 or local)
is one line naming the endpoint, the command and what to check, exit status 2 as well.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any

from foresight.training.loop.config import TRAIN_OPTIONS
from foresight.training.loop.options import options

EXIT_USAGE = 2


def _store(args: argparse.Namespace):
    from foresight.datasets.storage import Store

    return Store(getattr(args, "store", None))


def _emit(args: argparse.Namespace, data: Any, human: Callable[[Any], str]) -> None:
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, default=str))
    else:
        print(human(data))


class _Kinds(Sequence[str]):
    """The model families of ``foresight train``, read from the family table when argparse
    first needs them (the table imports torch: other commands start without it)."""

    def _names(self) -> list[str]:
        from foresight.training.families import KINDS

        return list(KINDS)

    def __getitem__(self, i):
        return self._names()[i]

    def __len__(self) -> int:
        return len(self._names())

    def __contains__(self, kind: object) -> bool:
        return kind in self._names()


def add_config_flags(parser: argparse.ArgumentParser, classes: dict[str, type]) -> None:
    """One flag per field of the config dataclasses ``classes`` (title -> class; a field
    several declare is one flag: ``batch_size``: ``--batch-size``), with its type, choices
    and each class's docstring and default under its title. A flag not given leaves the
    field at its class's default: the dataclasses are the one declaration."""
    declared: dict[str, list[tuple[str, Any]]] = {}
    for title, cls in classes.items():
        for o in options(cls):
            declared.setdefault(o.name, []).append((title, o))
    for name, found in declared.items():
        o = found[0][1]
        if any((x.base, x.choices) != (o.base, o.choices) for _, x in found):
            raise TypeError(f"option {name} has different types in {[t for t, _ in found]}")
        said: dict[tuple[str, str], list[str]] = {}  # the same words once, for all it holds
        for t, x in found:
            said.setdefault((x.help, str(x.default)), []).append(t)
        text = "; ".join(f"{', '.join(ts)}: {h} (default: {d})" for (h, d), ts in said.items())
        text = text.replace("%", "%%")
        flag = "--" + name.replace("_", "-")
        if o.base is bool:
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=None, help=text
            )
        else:
            parser.add_argument(flag, type=o.base, default=None, choices=o.choices, help=text)


def config_from_flags(cls: type, args: argparse.Namespace) -> Any:
    """The ``cls`` config of the flags :func:`add_config_flags` added (given ones set);
    ValueError naming a given flag that is not a field of ``cls``."""
    names = {o.name for c in TRAIN_OPTIONS.values() for o in options(c)}
    given = {n: getattr(args, n) for n in names if getattr(args, n) is not None}
    foreign = sorted(
        "--" + n.replace("_", "-") for n in set(given) - {f.name for f in options(cls)}
    )
    if foreign:
        title = next((t for t, c in TRAIN_OPTIONS.items() if c is cls), cls.__name__)
        verb = "is not an option" if len(foreign) == 1 else "are not options"
        raise ValueError(
            f"{', '.join(foreign)} {verb} of {title} training (see `foresight train --help`)"
        )
    return cls(**given)


def _table(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    if not rows:
        return "(none)"
    cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return ",".join(map(str, value)) or "-"
    return str(value)


# -- names: every name and reference is checked here, before any command runs ----------------


def _dataset_name(value: str) -> None:
    from foresight.datasets.catalog import check_name

    check_name(value)


def _dataset_ref(value: str) -> None:
    from foresight.datasets.catalog import DatasetRef

    DatasetRef.parse(value)


def _dataset_tag(value: str) -> None:
    from foresight.datasets.catalog import check_tag

    check_tag(value)


def _model_name(value: str) -> None:
    from foresight.training.registry import check_model_name

    check_model_name(value)


def _model_ref(value: str) -> None:
    from foresight.training.registry import ModelRef

    ModelRef.parse(value)


def _model_version(value: str) -> None:
    from foresight.training.registry import ModelRef, RegistryError

    if ModelRef.parse(value).version is None:
        raise RegistryError(f"expected a version reference name@N, got {value!r}")


def _alias(value: str) -> None:
    from foresight.training.registry import check_alias

    check_alias(value)


_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]\Z")


def _bucket(value: str) -> None:
    if not _BUCKET_RE.match(value) or ".." in value:
        raise ValueError(f"invalid bucket name {value!r}: 3-63 lowercase letters, digits, '.', '-'")


NAME_CHECKS: dict[str, Callable[[str], None]] = {
    "dataset name": _dataset_name,
    "dataset ref": _dataset_ref,
    "dataset tag": _dataset_tag,
    "model name": _model_name,
    "model ref": _model_ref,
    "model version": _model_version,
    "alias": _alias,
    "bucket": _bucket,
}
"""Kind of name -> its check (each raises a ValueError that says what is allowed)."""

NAME_ARGS: dict[tuple[str, ...], dict[str, str]] = {
    ("ingest",): {"--dataset": "dataset name"},
    ("datasets", "versions"): {"NAME": "dataset name"},
    ("datasets", "show"): {"REF": "dataset ref"},
    ("datasets", "diff"): {"REF_A": "dataset ref", "REF_B": "dataset ref"},
    ("datasets", "tag"): {"REF": "dataset ref", "TAG": "dataset tag"},
    ("datasets", "export"): {"REF": "dataset ref"},
    ("train",): {"--dataset": "dataset ref", "--name": "model name"},
    ("evaluate",): {"MODEL": "model ref", "--dataset": "dataset ref"},
    ("models", "show"): {"REF": "model ref"},
    ("models", "promote"): {"REF": "model ref", "--alias": "alias"},
    ("models", "rollback"): {"NAME": "model name", "--alias": "alias"},
    ("models", "delete"): {"REF": "model version"},
    ("arena",): {"--world": "model ref", "--behavior": "model ref", "--offline-rl": "model ref"},
    ("serve",): {"--world": "model ref", "--behavior": "model ref"},
    ("flywheel",): {"--dataset": "dataset name"},
    ("storage", "up"): {"--bucket": "bucket"},
}
"""Command -> argument (as the help shows it) -> the kind of name it takes."""


def check_names(args: argparse.Namespace) -> None:
    """Check every name and reference of the parsed command line; ValueError on the first bad one.

    Runs before the command, so a bad name costs nothing (``train --name`` is refused before
    training) and never reaches a path (``models rollback ../x``).
    """
    command = (args.command, *([args.verb] if getattr(args, "verb", None) else []))
    for label, kind in NAME_ARGS.get(command, {}).items():
        value = getattr(args, label.lstrip("-").replace("-", "_").lower())
        if value is None:
            continue  # an optional argument left out
        try:
            NAME_CHECKS[kind](value)
        except ValueError as exc:
            raise ValueError(f"{label}: {exc}") from exc


# -- storage failures: one line, whatever raised them -------------------------------------------

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
MAX_REASON = 600


def one_line(text: str) -> str:
    """An error text (deltalake's are multi-line, with colour codes) as one short line."""
    text = " ".join(_ANSI.sub("", text).replace("\u21b3", " ").split())
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 3] + "..."


def is_storage_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is a failure of the store (S3 or local disk), not of the input."""
    from deltalake.exceptions import DeltaError

    from foresight.datasets.storage import StorageConfigError, StorageError

    if isinstance(exc, StorageConfigError | FileNotFoundError):
        return False  # reported as they are: they name the setting or the missing file
    if isinstance(exc, StorageError | DeltaError | OSError):
        return True
    return type(exc).__module__.split(".")[0] in {"urllib3", "minio"}


def storage_failure_text(exc: BaseException, args: argparse.Namespace) -> str:
    """One line: what failed, in which command, at which endpoint or folder, what to check."""
    from foresight.datasets.storage import S3Config, StorageError, is_s3

    command = " ".join((args.command, *([args.verb] if getattr(args, "verb", None) else [])))
    root = getattr(args, "store", None) or os.environ.get("FORESIGHT_STORE") or "./.foresight"
    reason = one_line(str(exc) or type(exc).__name__)
    if not isinstance(exc, StorageError):
        reason = f"{type(exc).__name__}: {reason}"
    head = f"storage failure in `foresight {command}`"
    if not is_s3(root):
        return (
            f"{head} on the local store {root}: {reason}; check the folder, its permissions "
            "and free disk space, then retry"
        )
    try:
        config = S3Config.from_env()
    except StorageError as config_error:
        return f"{head} on {root}: {reason}; {one_line(str(config_error))}"
    if config.endpoint in reason and "FORESIGHT_S3_ENDPOINT" in reason:
        return f"{head}: {reason}"  # the storage layer already said where and what to do
    return (
        f"{head} at S3 endpoint {config.endpoint} (store {root}): {reason}; check that the "
        f"server is up and answering and that FORESIGHT_S3_ENDPOINT is right "
        f"({config.bounds()}), then retry"
    )


# -- commands --------------------------------------------------------------------------------------


def cmd_generate(args: argparse.Namespace) -> None:
    from foresight.datasets.sources.generate import generate_episodes

    result = generate_episodes(
        env=args.env,
        episodes=args.episodes,
        policy=args.policy,
        out=args.out,
        seed=args.seed,
        episodes_per_file=args.episodes_per_file,
        max_cycles=args.max_cycles,
        record_state=args.state,
        gzip=args.gzip,
        progress=sys.stderr.isatty() and not args.json,
        policy_params=None if args.hazard is None else {"hazard": args.hazard},
        agents=args.agents,
        obs_radius=args.obs_radius,
    )
    data = {
        "files": result.files,
        "spec": result.spec_uri,
        "episodes": result.episodes,
        "rows": result.rows,
        "seconds": round(result.seconds, 2),
    }
    _emit(
        args,
        data,
        lambda d: (
            f"wrote {d['episodes']} episodes ({d['rows']} rows) in {len(d['files'])} file(s) "
            f"to {args.out} in {d['seconds']}s; spec: {d['spec']}"
        ),
    )


def cmd_ingest(args: argparse.Namespace) -> None:
    from foresight.datasets.ingest import describe_result, ingest_logs

    result = ingest_logs(
        args.sources,
        args.dataset,
        store=_store(args),
        spec=args.spec,
        progress=sys.stderr.isatty() and not args.json,
    )
    _emit(args, result.to_dict(), lambda _: describe_result(result))


def cmd_datasets(args: argparse.Namespace) -> None:
    from foresight.datasets import catalog

    store = _store(args)
    if args.verb == "list":
        rows = []
        for name in catalog.list_datasets(store):
            table = catalog.DatasetTable(store, name)
            versions = catalog.dataset_versions(name, store)
            rows.append(
                {
                    "dataset": name,
                    "latest": table.latest_version(),
                    "versions": len(versions),
                    "rows": versions[-1]["rows"] if versions else 0,
                    "tags": sorted(table.tags()),
                }
            )
        _emit(args, rows, lambda r: _table(r, ["dataset", "latest", "versions", "rows", "tags"]))
    elif args.verb == "versions":
        rows = catalog.dataset_versions(args.name, store)
        _emit(
            args,
            rows,
            lambda r: _table(
                r,
                [
                    "version",
                    "rows_added",
                    "rows",
                    "read",
                    "quarantined",
                    "files",
                    "ingest_id",
                    "tags",
                ],
            ),
        )
    elif args.verb == "show":
        _emit(args, catalog.dataset_stats(args.ref, store), _show_text)
    elif args.verb == "diff":
        _emit(
            args,
            catalog.dataset_diff(args.ref_a, args.ref_b, store),
            lambda d: (
                f"{d['from']} -> {d['to']}: episodes {d['episodes_from']} -> {d['episodes_to']} "
                f"(+{d['episodes_added']} -{d['episodes_removed']}), rows {d['rows_from']} -> "
                f"{d['rows_to']} (+{d['rows_added']} -{d['rows_removed']})"
            ),
        )
    elif args.verb == "tag":
        _emit(
            args,
            catalog.tag_dataset(args.ref, args.tag, store),
            lambda d: f"tagged {d['dataset']}@{d['version']} as {d['dataset']}@{d['tag']}",
        )
    elif args.verb == "export":
        _emit(
            args,
            catalog.export_dataset(args.ref, args.dest, store),
            lambda d: (
                f"exported {d['dataset']}@{d['version']} ({d['rows']} rows) to "
                f"{len(d['files'])} Parquet file(s) under {d['dest']}"
            ),
        )


def _show_text(d: dict[str, Any]) -> str:
    lines = [
        f"{d['dataset']}@{d['version']}"
        + (f"  (tags: {', '.join(d['tags'])})" if d["tags"] else ""),
        f"  episodes {d['episodes']}, steps {d['steps']}, rows {d['rows']}, "
        f"mean episode length {d['mean_episode_length']:.1f}, quarantined {d['quarantined']}",
    ]
    spec = d.get("spec") or {}
    if spec:
        action = spec["action"]
        kind = (
            f"discrete({action['n']})"
            if action["kind"] == "discrete"
            else f"continuous({action['dim']})"
        )
        lines.append(f"  env {spec['env']}, actions {kind}, state_dim {spec.get('state_dim')}")
    agent_rows = [{"agent": a, **s} for a, s in d["agents"].items()]
    lines.append("  return per agent:")
    lines += [
        "    " + line
        for line in _table(
            agent_rows, ["agent", "episodes", "mean", "std", "min", "max"]
        ).splitlines()
    ]
    lines.append(f"  lineage ({len(d['lineage'])} source file(s)):")
    for f in d["lineage"][:10]:
        lines.append(
            f"    v{f['version']}  {f['uri']}  sha256:{f['sha256'][:12]}  rows {f['accepted']}/{f['read']}"
        )
    if len(d["lineage"]) > 10:
        lines.append(f"    ... {len(d['lineage']) - 10} more")
    return "\n".join(lines)


def metrics_table(model: dict[str, float], baselines: dict[str, dict[str, float]]) -> str:
    """Metrics as rows; the model and each baseline as columns (same metric names)."""
    names = ["model", *baselines]
    rows = []
    for metric in model:
        row = {"metric": metric, "model": model[metric]}
        for name, values in baselines.items():
            row[name] = values.get(metric)
        rows.append(row)
    return _table(rows, ["metric", *names])


def _train_text(d: dict[str, Any]) -> str:
    gate, training = d["quality_gate"], d["training"]
    ran = (
        f"{training['steps']} steps"  # offline-rl trains for a number of steps, not epochs
        if "steps" in training
        else f"best epoch {training['best_epoch']}/{training['epochs_run']}"
    )
    lines = [
        f"registered {d['model']} (trained on {d['dataset']}, {ran}, {training['seconds']}s)",
        metrics_table(d["metrics"], d["baselines"]),
        "quality gate: "
        + (
            "passed (beats every baseline)"
            if gate["passed"]
            else "FAILED: " + "; ".join(gate["failures"])
        ),
    ]
    if d.get("report"):
        lines.append("report: " + ", ".join(sorted(d["report"].values())))
    return "\n".join(lines)


def _without_nproc(argv: Sequence[str]) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


def _launch_distributed(args: argparse.Namespace) -> None:
    """``foresight train ... --nproc N``: the same command under torchrun, N processes."""
    from foresight.datasets.catalog import resolve_ref

    resolve_ref(args.dataset, _store(args))  # a bad reference: one clear error, not N
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={args.nproc}",
        "-m",
        "foresight.pipelines.cli",
        *_without_nproc(args.argv),
    ]
    code = subprocess.run(cmd).returncode
    if code:
        raise SystemExit(code)


def cmd_train(args: argparse.Namespace) -> None:
    from foresight.training.families import FAMILIES, family
    from foresight.training.loop.train import init_distributed
    from foresight.training.loop.workflow import train_and_register

    fam = family(args.kind)
    if args.nproc < 1:
        raise ValueError(f"--nproc must be >= 1, got {args.nproc}")
    config = config_from_flags(fam.train_config_cls, args)
    if args.nproc > 1 and fam.trainer is not None:
        shared = ", ".join(k for k, f in FAMILIES.items() if f.trainer is None)
        raise ValueError(
            f"{args.kind} trains in one process by a loop of its own; --nproc is for the "
            f"shared loop's families ({shared})"
        )
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        return _launch_distributed(args)
    rk = init_distributed(config.device)  # under torchrun: join its process group
    try:
        result = train_and_register(
            args.kind,
            args.dataset,
            store=_store(args),
            config=config,
            name=args.name,
            resume=args.resume,
            progress=None if not args.json else False,
        )
    finally:
        if rk.world > 1:
            import torch.distributed as dist

            dist.destroy_process_group()
    if rk.main:
        _emit(args, result, _train_text)


def _damaged_weights(exc: Exception, refs: Sequence[str], store) -> ValueError:
    """A weights file that does not deserialize (truncated, overwritten): one clear error."""
    from foresight.training.registry import ModelRegistry, RegistryError

    resolved = []
    for ref in refs:
        try:
            resolved.append(f"{ref} ({ModelRegistry(store).resolve(ref).ref})")
        except RegistryError:
            resolved.append(ref)
    return ValueError(
        f"the weights of {' or '.join(resolved)} cannot be read ({one_line(str(exc))}): the "
        "file is damaged; delete that version (`foresight models delete NAME@N`) or train it again"
    )


def cmd_evaluate(args: argparse.Namespace) -> None:
    from safetensors import SafetensorError

    from foresight.training.loop.workflow import evaluate_registered

    store = _store(args)
    try:
        result = evaluate_registered(args.model, args.dataset, store=store, device=args.device)
    except SafetensorError as exc:
        raise _damaged_weights(exc, [args.model], store) from exc
    _emit(
        args,
        result,
        lambda d: (
            f"{d['model']} on held-out episodes of {d['dataset']} "
            f"({d['meta'].get('n_eval_episodes')} episodes)\n"
            + metrics_table(d["metrics"], d["baselines"])
            + "\nquality gate: "
            + (
                "passed"
                if d["quality_gate"]["passed"]
                else "FAILED: " + "; ".join(d["quality_gate"]["failures"])
            )
            + ("\nreport: " + ", ".join(sorted(d["report"].values())) if d.get("report") else "")
        ),
    )


def cmd_models(args: argparse.Namespace) -> None:
    from foresight.training.registry import ModelRegistry

    registry = ModelRegistry(_store(args))
    if args.verb == "list":
        rows = []
        for name in registry.names():
            aliases = registry.aliases(name)
            for mv in registry.versions(name):
                rows.append(
                    {
                        "model": name,
                        "version": mv.version,
                        "kind": mv.card.kind,
                        "dataset": mv.card.dataset.resolved if mv.card.dataset else None,
                        "aliases": sorted(a for a, v in aliases.items() if v == mv.version),
                        "created_at": mv.card.created_at,
                        "git_sha": (mv.card.git_sha or "")[:12],
                    }
                )
        _emit(
            args,
            rows,
            lambda r: _table(r, ["model", "version", "kind", "dataset", "aliases", "git_sha"]),
        )
        for problem in registry.problems:
            print(f"foresight models: warning: skipped {problem}", file=sys.stderr)
    elif args.verb == "show":
        mv = registry.resolve(args.ref)
        data = {
            "ref": args.ref,
            "resolved": mv.ref,
            "aliases": sorted(a for a, v in registry.aliases(mv.name).items() if v == mv.version),
            "card": mv.card.to_dict(),
        }
        _emit(
            args,
            data,
            lambda d: (
                f"{d['resolved']} (aliases: {', '.join(d['aliases']) or '-'})\n"
                + json.dumps(d["card"], indent=2, default=str)
            ),
        )
    elif args.verb == "promote":
        entry = registry.promote(args.ref, args.alias)
        _emit(args, entry, lambda e: f"{e['model']}@{e['alias']}: {e['from']} -> {e['to']}")
    elif args.verb == "rollback":
        entry = registry.rollback(args.name, args.alias)
        _emit(
            args,
            entry,
            lambda e: f"{e['model']}@{e['alias']} rolled back: {e['from']} -> {e['to']}",
        )
    elif args.verb == "delete":
        _emit(args, registry.delete(args.ref), lambda d: f"deleted {d['model']}@{d['version']}")


def arena_text(d: dict[str, Any]) -> str:
    rows = []
    over = (d.get("gap") or {}).get("over_greedy_in_G", {})
    for team, r in d["controllers"].items():
        rows.append(
            {
                "team": team,
                "mean_return": r["mean_return"],
                "ci95": f"[{r['ci95'][0]:.1f}, {r['ci95'][1]:.1f}]",
                "episodes": r["episodes"],
                "over_greedy_G": over.get(team),
                "decisions_per_s": r.get("decisions_per_s"),
            }
        )
    head = f"{d['env']}: {d['episodes']} episodes, seed {d['seed']}"
    if d.get("models"):
        head += " (models: " + ", ".join(d["models"].values()) + ")"
    objective = (d.get("planner_config") or {}).get("objective", "learned")
    if objective != "learned":
        head += f"; anticipatory teams score by the objective {objective!r}"
    if d.get("opponents"):
        opp = d["opponents"]
        head += f"; opponents {', '.join(opp['agents'])} play {opp['policy']}, "
        head += "returns count the team's own agents"
    cols = ["team", "mean_return", "ci95", "episodes", "over_greedy_G", "decisions_per_s"]
    lines = [head, _table(rows, cols)]
    if d.get("files"):
        lines.append("report: " + ", ".join(sorted(d["files"].values())))
    return "\n".join(lines)


def cmd_arena(args: argparse.Namespace) -> None:
    from foresight.training.loop.workflow import run_arena_registered

    factories = None
    if args.via_http:
        from foresight.serving.remote import http_factories

        factories = http_factories(
            args.via_http,
            api_key=os.environ.get("FORESIGHT_API_KEY"),
            objective=None if args.objective == "learned" else args.objective,
        )
    from safetensors import SafetensorError

    controllers = [c.strip() for c in args.controllers.split(",") if c.strip()]
    store = _store(args)
    try:
        result = run_arena_registered(
            args.env,
            args.episodes,
            controllers,
            store=store,
            world_ref=args.world,
            behavior_ref=args.behavior,
            offline_rl_ref=args.offline_rl,
            seed=args.seed,
            factories=factories,
            progress=sys.stderr.isatty() and not args.json,
            partners=args.partners,
            agents=args.agents,
            obs_radius=args.obs_radius,
            objective=args.objective,
        )
    except SafetensorError as exc:
        raise _damaged_weights(exc, [args.world, args.behavior, args.offline_rl], store) from exc
    result = {k: v for k, v in result.items() if k != "controllers"} | {
        "controllers": {
            t: {k: v for k, v in r.items() if k != "returns"}
            for t, r in result["controllers"].items()
        }
    }
    _emit(args, result, arena_text)


def flywheel_text(d: dict) -> str:
    """The flywheel's table: one row a round, then the models the last round left."""
    from foresight.pipelines.flywheel import COLUMNS, table_row

    rows = [table_row(r) for r in d["rounds"]] + [table_row(None, d["final"])]
    lines = [_table(rows, COLUMNS)]
    if d.get("files"):
        lines.append("report: " + ", ".join(sorted(d["files"].values())))
    return "\n".join(lines)


def cmd_flywheel(args: argparse.Namespace) -> None:
    from foresight.pipelines.flywheel import FlywheelConfig, run_flywheel
    from foresight.pipelines.jobs import local_instance

    store = _store(args)
    config = FlywheelConfig(
        env=args.env,
        dataset=args.dataset,
        rounds=args.rounds,
        episodes=args.episodes,
        gate_episodes=args.gate_episodes,
        seed=args.seed,
        train={"epochs": args.epochs} if args.epochs else {},
        fine_tune=args.fine_tune,
    )
    echo = None if args.json else (lambda text: print(text, file=sys.stderr, flush=True))
    result = run_flywheel(config, store, local_instance(store), echo=echo)
    _emit(args, result, flywheel_text)


def cmd_serve(args: argparse.Namespace) -> None:
    from foresight.serving.launch import serve
    from foresight.serving.runtime import ModelLoadError

    if args.store:
        os.environ["FORESIGHT_STORE"] = args.store
    try:
        code = serve(
            port=args.port,
            host=args.host,
            world=args.world,
            behavior=args.behavior,
            reload_seconds=args.reload_seconds,
        )
    except ModelLoadError as exc:
        raise ValueError(str(exc)) from exc
    if code not in (0, -2, 130):
        raise SystemExit(code)


def cmd_storage(args: argparse.Namespace) -> None:
    import signal
    import time

    from foresight.datasets.s3server import S3Server

    data_dir = args.dir or os.path.join(os.getcwd(), ".foresight-s3")
    server = S3Server(data_dir=data_dir).start()
    env = server.env()
    print("S3 server (SeaweedFS weed mini) running; data in", data_dir)
    print("In another shell:")
    for key, value in env.items():
        print(f"  export {key}={value}")
    print(f"  export FORESIGHT_STORE=s3://{args.bucket}/foresight")
    print("Ctrl-C stops it.", flush=True)
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    try:
        while not stop["now"] and server.process is not None and server.process.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


# -- parser ----------------------------------------------------------------------------------------


def _verb(sub, name: str, help_text: str, fn: Callable) -> argparse.ArgumentParser:
    """A sub-command that runs ``fn`` and takes ``--json``."""
    q = sub.add_parser(name, help=help_text, description=help_text)
    q.set_defaults(fn=fn)
    q.add_argument("--json", action="store_true", help="print one JSON object")
    return q


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="foresight",
        description="Learn world and behavior models from multi-agent logs; serve them to agents.",
    )
    parser.add_argument(
        "--store",
        default=None,
        help="store root: a folder or s3://bucket/prefix (default: $FORESIGHT_STORE or ./.foresight)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, fn: Callable, help_text: str) -> argparse.ArgumentParser:
        return _verb(sub, name, help_text, fn)

    p = add("generate", cmd_generate, "record mpe2 episodes with scripted policies as JSONL logs")
    p.add_argument("--env", required=True, help="simple_spread, simple_reference or simple_tag")
    p.add_argument("--episodes", type=int, required=True)
    p.add_argument("--policy", default="mixed", help="random, greedy, noisy, mixed or switching")
    p.add_argument(
        "--hazard",
        type=float,
        default=None,
        help="switching only: per-step chance that an agent redraws its rule and epsilon "
        "(default 0.1)",
    )
    p.add_argument("--out", required=True, help="folder or s3://bucket/prefix")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--agents",
        type=int,
        default=None,
        help="simple_spread only: team size N, 2 to 10 (default 3)",
    )
    p.add_argument(
        "--obs-radius",
        type=float,
        default=None,
        metavar="R",
        help="simple_spread only: agents see landmarks and agents within R (hidden ones read "
        "zero, with visibility flags) and the scripted policies act on that view "
        "(default: the full view)",
    )
    p.add_argument("--episodes-per-file", type=int, default=250)
    p.add_argument("--max-cycles", type=int, default=25, help="steps per episode")
    p.add_argument("--state", action="store_true", help="also log the global state")
    p.add_argument("--gzip", action="store_true", help="write .jsonl.gz")

    p = add("ingest", cmd_ingest, "ingest log files into a dataset (one new version)")
    p.add_argument("sources", nargs="+", help="files, folders, globs or s3:// prefixes")
    p.add_argument("--dataset", required=True)
    p.add_argument("--spec", default=None, help="dataset spec JSON (for a new dataset)")

    p = sub.add_parser("datasets", help="list, inspect, compare, tag and export dataset versions")
    dsub = p.add_subparsers(dest="verb", required=True)

    def dverb(name: str, help_text: str) -> argparse.ArgumentParser:
        return _verb(dsub, name, help_text, cmd_datasets)

    dverb("list", "datasets in the store")
    dverb("versions", "versions of a dataset").add_argument("name")
    dverb("show", "stats and lineage of a version").add_argument(
        "ref", help="name, name@N or name@tag"
    )
    q = dverb("diff", "episodes added and removed between two versions")
    q.add_argument("ref_a")
    q.add_argument("ref_b")
    q = dverb("tag", "tag a version")
    q.add_argument("ref")
    q.add_argument("tag")
    q = dverb("export", "write a version as plain Parquet files")
    q.add_argument("ref")
    q.add_argument("dest", help="folder or s3://bucket/prefix")

    p = add(
        "train",
        cmd_train,
        "train a world, behavior or offline-rl model on a dataset version and register it",
    )
    p.add_argument("kind", choices=_Kinds(), metavar="KIND", help="one of: %(choices)s")
    p.add_argument("--dataset", required=True, help="name, name@N or name@tag")
    add_config_flags(p, TRAIN_OPTIONS)
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.add_argument("--name", default=None, help="registry name (default: the kind)")
    p.add_argument(
        "--nproc",
        type=int,
        default=1,
        help="train with N processes (DistributedDataParallel via torchrun: NCCL on GPUs, "
        "gloo on the CPU); --batch-size stays the global batch; rank 0 registers",
    )

    p = add(
        "evaluate",
        cmd_evaluate,
        "evaluate a registered model on held-out episodes, next to baselines",
    )
    p.add_argument("model", help="model reference: name, name@N or name@alias")
    p.add_argument("--dataset", default=None, help="dataset reference (default: the model's own)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])

    p = sub.add_parser("models", help="list, inspect, promote, roll back and delete model versions")
    msub = p.add_subparsers(dest="verb", required=True)

    def mverb(name: str, help_text: str) -> argparse.ArgumentParser:
        return _verb(msub, name, help_text, cmd_models)

    mverb("list", "every model version with its aliases")
    mverb("show", "a version's card (lineage, config, metrics)").add_argument(
        "ref", help="name, name@N or name@alias"
    )
    q = mverb("promote", "point an alias at a version")
    q.add_argument("ref")
    q.add_argument("--alias", required=True, help="e.g. staging, production")
    q = mverb("rollback", "move an alias back to where it pointed before")
    q.add_argument("name")
    q.add_argument("--alias", required=True)
    mverb("delete", "delete one version (not while an alias points at it)").add_argument(
        "ref", help="name@N"
    )

    p = add("arena", cmd_arena, "closed-loop episodes: reactive against anticipatory controllers")
    p.add_argument("--env", default="simple_spread")
    p.add_argument("--episodes", type=int, default=200)
    p.add_argument(
        "--controllers",
        default="random,greedy,bc,anticipatory,scripted-anticipation",
        help="comma-separated teams; 'a+b' puts one a-agent among b-agents",
    )
    p.add_argument(
        "--partners",
        default=None,
        help="e.g. switching: each team's controller drives the first agent, this the others",
    )
    p.add_argument(
        "--agents",
        type=int,
        default=None,
        help="simple_spread only: team size N, 2 to 10 (default: the models' own, else 3)",
    )
    p.add_argument(
        "--obs-radius",
        type=float,
        default=None,
        metavar="R",
        help="simple_spread only: every agent sees within R (default: the models' own view, "
        "else the full view); the models must have been trained on logs of that view",
    )
    p.add_argument(
        "--objective",
        default="learned",
        help="what anticipatory teams score imagined futures by: learned (the world model's "
        "reward head), an env's own reward (simple_spread, simple_tag, simple_tag_shaped), "
        "or an entry point of foresight.objectives",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--world", default="world@production")
    p.add_argument("--behavior", default="behavior@production")
    p.add_argument(
        "--offline-rl",
        default="offline-rl",
        help="offline-RL peer model ref for the offline-rl team (default: its latest version)",
    )
    p.add_argument(
        "--via-http", default=None, metavar="URL", help="anticipatory agents ask this live service"
    )

    p = add(
        "flywheel",
        cmd_flywheel,
        "rounds of serve, play and record over HTTP, ingest, retrain, gate, promote, reload",
    )
    p.add_argument("--env", default="simple_spread")
    p.add_argument("--dataset", required=True, help="the production models' dataset")
    p.add_argument("--rounds", type=int, required=True)
    p.add_argument("--episodes", type=int, default=200, help="arena episodes played a round")
    p.add_argument(
        "--gate-episodes", type=int, default=200, help="episodes of each closed-loop gate"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: train's)")
    p.add_argument(
        "--fine-tune",
        action="store_true",
        help="retrain each model from its production version instead of afresh (with "
        "fewer --epochs)",
    )

    p = sub.add_parser("serve", help="serve the models over HTTP (BentoML)")
    p.set_defaults(fn=cmd_serve)
    p.add_argument("--port", type=int, default=3000)
    p.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to listen on every interface")
    p.add_argument("--world", default=None, help="world model ref (default world@production)")
    p.add_argument(
        "--behavior", default=None, help="behavior model ref (default behavior@production)"
    )
    p.add_argument(
        "--reload-seconds", type=float, default=None, help="how often aliases are polled"
    )

    p = sub.add_parser("storage", help="local S3 server for development")
    ssub = p.add_subparsers(dest="verb", required=True)
    q = ssub.add_parser(
        "up", help="start a SeaweedFS S3 server on loopback and print what to export"
    )
    q.set_defaults(fn=cmd_storage)
    q.add_argument("--dir", default=None, help="data folder (default ./.foresight-s3)")
    q.add_argument(
        "--bucket", default="foresight", help="bucket name for the printed FORESIGHT_STORE"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, check every name, run the command; errors are one line on stderr, exit 2."""
    from foresight.datasets.catalog import DatasetError
    from foresight.datasets.ingest import IngestError
    from foresight.datasets.schema import SpecError
    from foresight.datasets.storage import StorageError

    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        check_names(args)
        args.fn(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if is_storage_failure(exc):
            message = storage_failure_text(exc, args)
        elif isinstance(
            exc,
            DatasetError | IngestError | SpecError | StorageError | ValueError | FileNotFoundError,
        ):
            message = one_line(str(exc))
        else:
            raise
        print(f"foresight {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    return 0


if __name__ == "__main__":
    sys.exit(main())
