"""Shared fixtures: a store on a local folder and on a real S3 server (SeaweedFS)."""

from __future__ import annotations

import uuid

import pytest

from foresight.datasets.s3server import S3Server
from foresight.datasets.storage import Store


@pytest.fixture(scope="session", autouse=True)
def _bentoml_home(tmp_path_factory):
    """BentoML's model store and bentos go to a temporary folder for the session, never to
    the developer's own ~/bentoml (or a BENTOML_HOME they set); no usage tracking."""
    home = tmp_path_factory.mktemp("bentoml-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BENTOML_HOME", str(home))
        mp.setenv("BENTOML_DO_NOT_TRACK", "true")
        yield home


@pytest.fixture(autouse=True)
def _runs_in_tmp(tmp_path, monkeypatch):
    """Training checkpoints go under the test's tmp folder, never into the checkout."""
    monkeypatch.setenv("FORESIGHT_RUNS", str(tmp_path / "runs"))


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """One `weed mini` for the whole session, on free loopback ports; stopped after."""
    server = S3Server(data_dir=str(tmp_path_factory.mktemp("weed"))).start()
    yield server
    server.stop()


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    return s3_server


TEST_BUCKET = "foresight-tests"


def _s3_store(server: S3Server) -> Store:
    """A fresh store under its own prefix of one shared bucket. Not a bucket per test: each
    SeaweedFS bucket is a collection holding at least one volume of its own, and a server
    has a bounded number of volumes, so a bucket per test ran out late in the suite (500s)."""
    store = Store(f"s3://{TEST_BUCKET}/t{uuid.uuid4().hex[:12]}/foresight", server.config())
    store.ensure()
    return store


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path, monkeypatch) -> Store:
    """The same test on a local folder and on S3; FORESIGHT_STORE points at it for the CLI."""
    if request.param == "local":
        store = Store(str(tmp_path / "store"))
    else:
        server = request.getfixturevalue("s3_env")
        store = _s3_store(server)
    monkeypatch.setenv("FORESIGHT_STORE", store.root)
    return store


@pytest.fixture
def s3_store(s3_env, monkeypatch) -> Store:
    store = _s3_store(s3_env)
    monkeypatch.setenv("FORESIGHT_STORE", store.root)
    return store
