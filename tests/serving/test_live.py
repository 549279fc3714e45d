"""Tier 3: one real `bentoml serve` on a free loopback port, queried through the client."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
import pytest

from foresight.datasets.storage import Store
from foresight.serving import launch
from foresight.serving.client import AsyncForesightClient, ForesightClient, ForesightError
from foresight.serving.launch import OPENAPI_PATH, ServerProcess, build_bento, comparable_spec
from foresight.serving.runtime import ModelLoadError
from foresight.serving.schemas import ActionQuery, ActRequest, ImagineRequest, NextQuery
from tests.serving.helpers import (
    TINY_BEHAVIOR,
    free_port,
    register_pair,
    register_untrained,
    served_store,
    spread_spec,
)

from .test_service import AGENTS, BAD_REQUESTS, history, past

KEY = "test-key"

pytestmark = pytest.mark.slow  # one real `bentoml serve` process for the module (~6 s to start)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    with served_store(tmp_path_factory, "live") as store:
        yield store


@pytest.fixture(scope="module")
def server(store, tmp_path_factory):
    log = tmp_path_factory.mktemp("live-log") / "serve.log"
    with ServerProcess(free_port(), log, api_key=KEY, reload_seconds=0.5) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    with ForesightClient(server.url, api_key=KEY) as c:
        yield c


def test_client_round_trip(client):
    [actions] = client.predict_actions([ActionQuery(obs=history(4), samples=2)])
    assert set(actions.agents) == set(AGENTS) and len(actions.agents["agent_0"].samples) == 2
    nxt, nxt2 = client.predict_next(
        [
            {"obs": history(2), "action": dict.fromkeys(AGENTS, 3)},  # a dict works too
            NextQuery(obs=history(1, agents=AGENTS[:2]), action={"agent_0": 0, "agent_1": 1}),
        ]
    )
    assert len(nxt.agents["agent_2"].mean) == 18 and set(nxt2.agents) == set(AGENTS[:2])
    out = client.imagine(ImagineRequest(obs=history(3), horizon=4, samples=2, seed=1))
    assert len(out.futures) == 2 and len(out.futures[0].agents["agent_0"].obs) == 4
    models = client.models()
    assert {m.version for m in models.models} == {"world@1", "behavior@1"}
    assert models.models[0].card["dataset"]["resolved"] == "spread@1"


def test_both_client_encodings_get_the_same_answers(server, client):
    """The client sends observations as base64 float32 by default; JSON numbers agree."""
    from foresight.serving.schemas import EncodedArray

    queries = [ActionQuery(obs=history(5, seed=2)), {"obs": history(3, seed=4)}]
    sent = []
    client._http.event_hooks["request"] = [lambda request: sent.append(request.content)]
    try:
        as_array = client.predict_actions(queries)
    finally:
        client._http.event_hooks["request"] = []
    [obs] = [json.loads(s)["queries"][0]["obs"] for s in sent]
    assert EncodedArray.model_validate(obs["agent_0"]).shape == [5, 18]
    with ForesightClient(server.url, api_key=KEY, encoding="json") as plain:
        as_json = plain.predict_actions(queries)
        with pytest.raises(ForesightError) as bad:  # the server's 400 reaches the caller
            plain._post("/predict_actions", {"queries": [{"obs": {"agent_0": {"dtype": "x"}}}]})
    assert [a.model_dump() for a in as_array] == [a.model_dump() for a in as_json]
    assert bad.value.status == 400 and "obs.agent_0.dtype" in bad.value.message


def test_act_through_the_sync_and_async_clients(server, client):
    out = client.act(
        ActRequest(obs=history(4), past_actions=past(4), egos=["agent_0", "agent_2"], samples=2)
    )
    assert list(out.agents) == ["agent_0", "agent_2"] and out.samples == 2
    d = out.agents["agent_2"]
    assert len(d.candidates) == 5 and set(d.predicted_others) == {"agent_0", "agent_1"}
    assert out.world_model == "world@1"

    async def concurrent_acts():
        async with AsyncForesightClient(server.url, api_key=KEY) as fs:
            return await asyncio.gather(
                *(fs.act({"obs": history(1, seed=s), "egos": ["agent_1"]}) for s in range(4))
            )

    for out in asyncio.run(concurrent_acts()):
        assert out.horizon == 6 and out.agents["agent_1"].action in range(5)
    with pytest.raises(ForesightError) as err:  # checked by the server against the models
        client.act({"obs": {"agent_5": [[0.0] * 18]}, "egos": ["agent_5"]})
    assert err.value.status == 400 and "agent_5" in err.value.message


def test_openapi_in_repo_matches_the_live_docs(server):
    live = httpx.get(f"{server.url}/docs.json", headers={"Authorization": f"Bearer {KEY}"})
    assert live.status_code == 200
    kept = json.loads(OPENAPI_PATH.read_text())
    assert comparable_spec(live.json()) == comparable_spec(kept), (
        "serving/openapi.json is stale: run `python -m foresight.serving.launch openapi`"
    )


def test_api_key_and_open_health_endpoints(server):
    body = {"queries": [{"obs": history(1)}]}
    assert httpx.post(f"{server.url}/predict_actions", json=body).status_code == 401
    with ForesightClient(server.url, api_key="wrong") as bad, pytest.raises(ForesightError) as err:
        bad.models()
    assert err.value.status == 401
    for path in ("/readyz", "/livez"):
        assert httpx.get(f"{server.url}{path}").status_code == 200, path
    # /metrics needs the key too (unless FORESIGHT_METRICS_OPEN=1)
    assert httpx.get(f"{server.url}/metrics").status_code == 401
    auth = {"Authorization": f"Bearer {KEY}"}
    assert httpx.get(f"{server.url}/metrics", headers=auth).status_code == 200


def test_malformed_requests_get_4xx_and_the_server_keeps_serving(server, client):
    auth = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=server.url, headers=auth) as http:
        for path, body, words in BAD_REQUESTS:
            if isinstance(body, bytes):
                r = http.post(path, content=body, headers={"content-type": "application/json"})
            else:
                r = http.post(path, json=body)
            assert 400 <= r.status_code < 500, (path, body, r.status_code, r.text)
            assert all(w in r.json()["error"] for w in words), (words, r.text)
    with pytest.raises(ForesightError) as err:
        client.predict_actions([{"obs": {"agent_9": [[0.0] * 18]}}])  # checked by the server
    assert err.value.status == 400 and "agent_9" in err.value.message
    [ok] = client.predict_actions([ActionQuery(obs=history(2))])
    assert ok.model == "behavior@1"


@pytest.fixture
def own_store(tmp_path, monkeypatch):
    """A store of this test's own, for a test that moves aliases: the module's store stays
    as every other test expects it, whatever the order."""
    store = Store(str(tmp_path / "store"))
    register_pair(store)
    monkeypatch.setenv("FORESIGHT_STORE", store.root)
    return store


def test_moved_alias_is_picked_up_by_polling(own_store, tmp_path):
    with (
        ServerProcess(free_port(), tmp_path / "serve.log", api_key=KEY, reload_seconds=0.5) as srv,
        ForesightClient(srv.url, api_key=KEY) as client,
    ):
        _poll_until_the_moved_alias_is_served(own_store, client)


def _poll_until_the_moved_alias_is_served(store: Store, client: ForesightClient) -> None:
    assert {m.role: m.version for m in client.models().models}["behavior"] == "behavior@1"
    mv = register_untrained(store, "behavior", spread_spec(), TINY_BEHAVIOR, seed=3)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        served = {m.role: m.version for m in client.models().models}
        if served["behavior"] == mv.ref:
            break
        [pred] = client.predict_actions([ActionQuery(obs=history(2))])  # never fails meanwhile
        assert pred.model in ("behavior@1", mv.ref)
        time.sleep(0.2)
    assert served["behavior"] == mv.ref
    assert client.predict_actions([ActionQuery(obs=history(2))])[0].model == mv.ref
    assert not any(c.changed for c in client.reload().changes)


def test_unresolvable_reference_fails_before_the_server_starts(store, tmp_path, monkeypatch):
    spawned = []
    monkeypatch.setattr(launch.subprocess, "Popen", lambda *a, **kw: spawned.append(a))
    server = ServerProcess(free_port(), tmp_path / "log", world="world@nope")
    with pytest.raises(ModelLoadError, match=r"world@nope.*does not resolve"):
        server.start()
    assert spawned == [] and server.process is None, "no child process was started"
    assert not (tmp_path / "log").exists()


def test_bentoml_build_packages_the_served_models(store, _bentoml_home):
    tag = build_bento("world@production", "behavior@production")
    import bentoml

    bento = bentoml.bentos.get(tag)
    tags = {str(m.tag).split(":")[0] for m in bento.info.all_models}
    assert tags == {"foresight-world", "foresight-behavior"}
    # into the session's temporary BentoML home, never the developer's own
    assert Path(bento.path).resolve().is_relative_to(Path(_bentoml_home).resolve())


def test_arena_via_http_decides_through_the_service(server, store, monkeypatch):
    from foresight.serving.remote import http_factories
    from foresight.training.loop.workflow import run_arena_registered

    calls = {"act": 0, "predict_actions": 0}

    def counting(name):
        original = getattr(ForesightClient, name)

        def wrapper(self, *args, **kwargs):
            calls[name] += 1
            return original(self, *args, **kwargs)

        return wrapper

    for name in calls:
        monkeypatch.setattr(ForesightClient, name, counting(name))
    result = run_arena_registered(
        "simple_spread",
        1,
        ["anticipatory", "bc"],
        store=store,
        factories=http_factories(server.url, api_key=KEY),
    )
    assert {t: r["episodes"] for t, r in result["controllers"].items()} == {
        "anticipatory": 1,
        "bc": 1,
    }
    assert calls == {"act": 25, "predict_actions": 25}  # one call per step, all agents at once
    assert result["models"] == {}  # nothing loaded locally: every decision came over HTTP
    # a team size or a view the served models were not trained on: refused before playing
    for case, refusal in (
        ({"agents": 6}, r"served world model world@\d+ \(playing anticipatory\) was trained "
                        r"with 3 agents .* this arena has 6 agents"),
        ({"obs_radius": 0.35}, r"served world model .* partial view \(obs_radius 0.35\) != "
                               r"trained on a full view"),
    ):  # fmt: skip
        with pytest.raises(ValueError, match=refusal):
            run_arena_registered(
                "simple_spread", 1, ["anticipatory"], store=store,
                factories=http_factories(server.url, api_key=KEY), **case,
            )  # fmt: skip
    assert calls["act"] == 25
    specs = {k: list(f.model_specs) for k, f in http_factories(server.url, api_key=KEY).items()}
    assert [k.split()[1] for k in specs["anticipatory"]] == ["world", "behavior"]
    assert [k.split()[1] for k in specs["bc"]] == ["behavior"]
    with pytest.raises(ValueError, match="no Foresight service ready"):
        http_factories("http://127.0.0.1:9", api_key=KEY)
