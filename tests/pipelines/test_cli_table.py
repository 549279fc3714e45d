"""Every `foresight` command's documented errors, as one table: argv -> exit code, stderr.

The bulk runs in process (``foresight.pipelines.cli.main``) against a copy of one small store: a dataset
``spread@0`` and three versions of a really trained world model (production moved 2 -> 3).
A few cases run the CLI as a subprocess, where what matters is what the process did or did
not do: no training for a bad ``--name``, no folder for a bad dataset name, no file touched
outside the store by ``models rollback ../x``, no traceback for damaged weights.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from foresight.datasets.storage import Store
from foresight.pipelines.cli import main


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A store built once per module; each test gets its own copy (see ``store_copy``)."""
    from foresight.datasets.ingest import ingest_logs
    from foresight.datasets.sources.generate import generate_episodes
    from foresight.training.loop.train import TrainConfig
    from foresight.training.loop.workflow import train_and_register
    from foresight.training.registry import ModelRegistry

    base = tmp_path_factory.mktemp("cli-table")
    store = Store(str(base / "store"))
    generate_episodes(
        env="simple_spread", episodes=6, policy="mixed", out=str(base / "logs"), seed=1
    )
    ingest_logs([str(base / "logs")], "spread", store=store)
    with pytest.MonkeyPatch.context() as mp:  # its checkpoints stay in the module's tmp
        mp.setenv("FORESIGHT_RUNS", str(base / "runs"))
        result = train_and_register(
            "world",
            "spread",
            store=store,
            config=TrainConfig(epochs=1, max_steps_per_epoch=2, batch_size=32, device="cpu"),
            progress=False,
            eval_max_starts=8,
            eval_samples=2,
        )
    assert result["model"] == "world@1", result["model"]
    registry = ModelRegistry(store)
    tensors, mv = registry.load("world@1")
    for _ in range(2):  # world@2 and world@3: the same weights, so every version loads
        registry.register("world", tensors, mv.card)
    registry.promote("world@2", "production")
    registry.promote("world@3", "production")
    shutil.copytree(base / "logs", base / "store-logs")
    return base


@pytest.fixture
def store_copy(template, tmp_path, monkeypatch) -> Path:
    """This test's own copy of the template store; FORESIGHT_STORE points at it; cwd is tmp."""
    shutil.copytree(template / "store", tmp_path / "store")
    shutil.copytree(template / "store-logs", tmp_path / "logs")
    monkeypatch.setenv("FORESIGHT_STORE", str(tmp_path / "store"))
    monkeypatch.chdir(tmp_path)
    return tmp_path / "store"


# (argv, exit code, fragment of stderr; "" when it must be empty). "{logs}" is a log folder.
CASES = [
    # models
    (["models", "list"], 0, ""),
    (["models", "show", "world@production"], 0, ""),
    (["models", "show", "nope"], 2, "model 'nope' has no versions"),
    (["models", "show", "world@9"], 2, "has no version 9"),
    (["models", "show", "world@staging"], 2, "staging"),
    (["models", "show", "bad name"], 2, "REF: invalid model reference 'bad name'"),
    (["models", "show", "world\n"], 2, "invalid model reference"),
    (["models", "promote", "world@1", "--alias", "staging"], 0, ""),
    (["models", "promote", "world@9", "--alias", "staging"], 2, "has no version 9"),
    (["models", "promote", "world@1", "--alias", "7"], 2, "--alias: invalid alias '7'"),
    (["models", "promote", "world@1", "--alias", "a/b"], 2, "--alias: invalid alias"),
    (["models", "rollback", "world", "--alias", "production"], 0, ""),
    (["models", "rollback", "world", "--alias", "staging"], 2, "no alias 'staging'"),
    (["models", "rollback", "../x", "--alias", "production"], 2, "NAME: invalid model name"),
    (["models", "rollback", "world", "--alias", "../p"], 2, "--alias: invalid alias"),
    (["models", "delete", "world@1"], 0, ""),
    (["models", "delete", "world@3"], 2, "pointed at by alias(es) production"),
    (["models", "delete", "world"], 2, "expected a version reference name@N"),
    (["models", "delete", "world@9"], 2, "has no version 9"),
    (["models", "frobnicate"], 2, "invalid choice"),
    # evaluate
    (["evaluate", "nope"], 2, "model 'nope' has no versions"),
    (["evaluate", "world@9"], 2, "has no version 9"),
    (["evaluate", "bad name"], 2, "MODEL: invalid model reference"),
    (["evaluate", "world@1", "--dataset", "nope"], 2, "dataset 'nope' does not exist"),
    (["evaluate", "world@1", "--dataset", "spread@9"], 2, "has no version 9"),
    (["evaluate", "world@1", "--dataset", "a b"], 2, "--dataset: invalid dataset name"),
    (["evaluate", "world@1", "--device", "tpu"], 2, "invalid choice"),
    # arena (bad arguments only)
    (["arena", "--episodes", "1", "--world", "nope@production"], 2, "model 'nope'"),
    (["arena", "--episodes", "1", "--behavior", "x y"], 2, "--behavior: invalid model"),
    (["arena", "--episodes", "1", "--controllers", "bogus"], 2, "unknown controller 'bogus'"),
    (["arena", "--episodes", "many"], 2, "invalid int value"),
    # serve (bad arguments only: no server is started)
    (["serve", "--world", "bad name"], 2, "--world: invalid model reference"),
    (["serve", "--behavior", "b@"], 2, "--behavior: invalid model reference"),
    (["serve", "--port", "http"], 2, "invalid int value"),
    (["serve", "--world", "nope@production"], 2, "world model 'nope@production' does not"),
    # train, single process (bad arguments only)
    (["train", "world", "--dataset", "nope"], 2, "dataset 'nope' does not exist"),
    (["train", "world", "--dataset", "spread@9"], 2, "has no version 9"),
    (["train", "world", "--dataset", "spread@x y"], 2, "--dataset: invalid dataset reference"),
    (["train", "world", "--dataset", "spread", "--name", "bad name"], 2, "--name: invalid"),
    (["train", "world", "--dataset", "spread", "--name", "w\n"], 2, "--name: invalid"),
    (["train", "world", "--dataset", "spread", "--nproc", "0"], 2, "--nproc must be >= 1"),
    (["train", "planner", "--dataset", "spread"], 2, "invalid choice"),
    (["train", "world"], 2, "--dataset"),
    # datasets
    (["datasets", "list"], 0, ""),
    (["datasets", "versions", "spread"], 0, ""),
    (["datasets", "versions", "nope"], 2, "dataset 'nope' does not exist"),
    (["datasets", "versions", "x__quarantine"], 2, "NAME: invalid dataset name"),
    (["datasets", "show", "spread@0"], 0, ""),
    (["datasets", "show", "spread@9"], 2, "has no version 9"),
    (["datasets", "show", "spread@golden"], 2, "has no tag 'golden'"),
    (["datasets", "show", "spread@"], 2, "REF: invalid dataset reference"),
    (["datasets", "diff", "spread@0", "spread@5"], 2, "has no version 5"),
    (["datasets", "diff", "spread@0", "../x"], 2, "REF_B: invalid dataset name"),
    (["datasets", "tag", "spread@0", "golden"], 0, ""),
    (["datasets", "tag", "spread@0", "7"], 2, "TAG: invalid tag '7'"),
    (["datasets", "tag", "spread@0", "a\n"], 2, "TAG: invalid tag"),
    (["datasets", "export", "nope", "out"], 2, "dataset 'nope' does not exist"),
    (["datasets", "export", "spread@0", "out"], 0, ""),
    # ingest
    (["ingest", "{logs}", "--dataset", "more"], 0, ""),
    (["ingest", "missing", "--dataset", "x"], 2, "source not found: missing"),
    (["ingest", "{logs}", "--dataset", "x", "--spec", "nope.json"], 2, "spec file not found"),
    (["ingest", "{logs}", "--dataset", "evil\n"], 2, "--dataset: invalid dataset name"),
    (["ingest", "{logs}", "--dataset", "a__b"], 2, "--dataset: invalid dataset name"),
    (["ingest", "{logs}", "--dataset", "../../etc"], 2, "--dataset: invalid dataset name"),
    (["ingest", "{logs}"], 2, "--dataset"),
    # storage up: the bucket name is checked before a server starts
    (["storage", "up", "--bucket", "Bad_Bucket"], 2, "--bucket: invalid bucket name"),
    # generate
    (["generate", "--env", "nope", "--episodes", "1", "--out", "g"], 2, "simple_spread"),
]


@pytest.mark.parametrize(("argv", "code", "fragment"), CASES, ids=[repr(c[0]) for c in CASES])
def test_cli_table(store_copy, capsys, argv, code, fragment):
    argv = [str(store_copy.parent / "logs") if a == "{logs}" else a for a in argv]
    usage = False
    try:
        got = main(argv)
    except SystemExit as exc:  # argparse's own usage errors: usage lines, then the error
        got, usage = exc.code, True
    err = capsys.readouterr().err
    assert got == code, err
    if code == 0:
        assert "error" not in err.lower(), err
        return
    assert fragment in err, err
    assert "Traceback" not in err
    if not usage:
        assert err.count("\n") == 1, err  # one line
        assert err.startswith(f"foresight {argv[0]}: error: "), err


def cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "foresight.pipelines.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_train_bad_name_refused_before_training(store_copy):
    proc = cli(["train", "world", "--dataset", "spread", "--name", "bad name"], store_copy.parent)
    assert proc.returncode == 2 and "--name: invalid model name 'bad name'" in proc.stderr
    assert sorted(os.listdir(store_copy / "models")) == ["world"]  # nothing registered
    runs = Path(os.environ["FORESIGHT_RUNS"])
    assert not runs.exists() or not any(runs.rglob("*")), "a training run started"


def test_ingest_newline_name_leaves_no_folder_and_listing_works(store_copy):
    proc = cli(["ingest", "logs", "--dataset", "evil\n"], store_copy.parent)
    assert proc.returncode == 2 and "invalid dataset name 'evil\\n'" in proc.stderr
    assert sorted(os.listdir(store_copy / "lake")) == ["spread"]
    proc = cli(["datasets", "list", "--json"], store_copy.parent)
    assert proc.returncode == 0, proc.stderr
    assert [d["dataset"] for d in json.loads(proc.stdout)] == ["spread"]


def test_datasets_list_skips_odd_folders(store_copy, capsys):
    lake = store_copy / "lake"
    for odd in ("evil\n", "bad name", "not-a-table", ".hidden", "x__quarantine"):
        (lake / odd).mkdir()
    (lake / "not-a-table" / "junk.txt").write_text("no Delta log here")
    assert main(["datasets", "list", "--json"]) == 0, capsys.readouterr().err
    assert [d["dataset"] for d in json.loads(capsys.readouterr().out)] == ["spread"]


def test_rollback_outside_the_store_touches_nothing(store_copy):
    """``models rollback ../../../evil`` would resolve to a JSON file beside the store."""
    outside = store_copy.parent / "evil.json"
    # A valid alias file there, so a rollback that followed the path would rewrite it.
    shutil.copyfile(store_copy / "registry" / "models" / "world.json", outside)
    before = outside.read_bytes(), outside.stat().st_mtime_ns
    proc = cli(["models", "rollback", "../../../evil", "--alias", "production"], store_copy.parent)
    assert proc.returncode == 2, proc.stderr
    assert "NAME: invalid model name '../../../evil'" in proc.stderr
    assert (outside.read_bytes(), outside.stat().st_mtime_ns) == before


def test_evaluate_truncated_weights_is_one_line(store_copy):
    weights = store_copy / "models" / "world" / "2" / "weights.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    proc = cli(["evaluate", "world@2"], store_copy.parent)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "world@2" in lines[0] and "weights" in lines[0] and "damaged" in lines[0]
