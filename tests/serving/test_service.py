"""Tiers 1 and 2: service methods called directly, then the ASGI app with a test client."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
import torch

from foresight.datasets.storage import Store
from foresight.serving import runtime
from foresight.serving.runtime import ModelHost, ModelLoadError
from foresight.serving.schemas import (
    MAX_ACT_HORIZON,
    MAX_ACT_SAMPLES,
    MAX_HORIZON,
    ActionQuery,
    ActRequest,
    ImagineRequest,
    NextQuery,
)
from foresight.training.agents.planning import Planner, PlannerConfig
from foresight.training.data import build_tensors, gather_window
from foresight.training.registry import WEIGHTS, ModelRegistry
from tests.serving.helpers import TINY_BEHAVIOR, register_pair, register_untrained, spread_spec

AGENTS = ["agent_0", "agent_1", "agent_2"]


def history(T: int = 5, seed: int = 0, agents=AGENTS) -> dict[str, list[list[float]]]:
    g = torch.Generator().manual_seed(seed)
    return {a: torch.randn(T, 18, generator=g).tolist() for a in agents}


def past(T: int = 5, agents=AGENTS) -> dict[str, list[int]]:
    return {a: [(t + n) % 5 for t in range(T - 1)] for n, a in enumerate(agents)}


run = asyncio.run  # the service's API methods are coroutines


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    store = Store(str(tmp_path_factory.mktemp("serving") / "store"))
    register_pair(store)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FORESIGHT_STORE", store.root)
        mp.setenv("FORESIGHT_RELOAD_SECONDS", "0")
        mp.delenv("FORESIGHT_API_KEY", raising=False)
        yield store


@pytest.fixture(scope="module")
def svc(store):
    from foresight.serving.service import Foresight

    instance = Foresight()
    yield instance
    instance.shutdown()


# -- tier 1: methods called directly ------------------------------------------------------------


def test_predict_actions_returns_distributions_per_agent(svc):
    queries = [
        ActionQuery(obs=history(5), samples=3),
        ActionQuery(obs=history(2, seed=1, agents=AGENTS[:2]), agents=["agent_1"]),
    ]
    first, second = run(svc.predict_actions(queries))
    assert first.model == "behavior@1" and set(first.agents) == set(AGENTS)
    for dist in first.agents.values():
        assert len(dist.probs) == 5 and abs(sum(dist.probs) - 1) < 1e-5
        assert dist.mode == max(range(5), key=dist.probs.__getitem__)
        assert len(dist.samples) == 3 and all(0 <= s < 5 for s in dist.samples)
    assert set(second.agents) == {"agent_1"} and second.agents["agent_1"].samples is None


def test_predict_next_returns_mean_std_reward_termination(svc):
    obs = history(3)
    past_actions = {a: [1, 2] for a in AGENTS}
    [pred] = run(
        svc.predict_next(
            [
                NextQuery(
                    obs=obs, past_actions=past_actions, action=dict.fromkeys(AGENTS, 4), samples=2
                )
            ]
        )
    )
    assert pred.model == "world@1"
    for agent in AGENTS:
        nxt = pred.agents[agent]
        assert len(nxt.mean) == len(nxt.std) == 18 and min(nxt.std) >= 0
        assert 0 <= nxt.termination_prob <= 1 and len(nxt.samples) == 2
        assert len(nxt.samples[0]) == 18


def test_windows_match_the_training_windows(store):
    """A request built from logged steps gives the model the window training gathers."""
    from tests.training.conftest import make_frame

    frame, spec = make_frame(episodes=2, agents=3, steps=12, obs_sizes=dict.fromkeys(AGENTS, 18))
    data = build_tensors(frame, spec)
    local = Store(store.root + "-windows")
    register_pair(local, spec, behavior_config={**TINY_BEHAVIOR, "context": 4})
    host = ModelHost(runtime.refs_from_env(), local, export=False)
    behavior, world = host.current.behavior.model, host.current.world.model
    for t, T in ((9, 6), (2, 3)):  # longer and shorter than the behavior context (4)
        obs = {a: data.obs[t - T + 1 : t + 1, n].tolist() for n, a in enumerate(AGENTS)}
        past = {a: data.action[t - T + 1 : t, n].tolist() for n, a in enumerate(AGENTS)}
        [pred] = runtime.predict_actions(host.current, [ActionQuery(obs=obs, past_actions=past)])
        want = behavior.action_distribution(gather_window(data, torch.tensor([t]), 4)).probs()
        got = torch.tensor([pred.agents[a].probs for a in AGENTS])
        assert torch.allclose(got, want[0], atol=1e-5), (t, got, want)
        act = {a: int(data.action[t, n]) for n, a in enumerate(AGENTS)}
        [nxt] = runtime.predict_next(
            host.current, [NextQuery(obs=obs, past_actions=past, action=act)]
        )
        want = world.predict(gather_window(data, torch.tensor([t]), 2)).obs.mean()[0]
        got = torch.tensor([nxt.agents[a].mean for a in AGENTS])
        assert torch.allclose(got, want, atol=1e-5)


def test_imagine_samples_futures_and_follows_plans(svc):
    req = ImagineRequest(obs=history(4), horizon=5, samples=3, plans={"agent_0": [4] * 5}, seed=7)
    out = run(svc.imagine(**dict(req)))
    assert out.horizon == 5 and len(out.futures) == 3
    for future in out.futures:
        assert future.agents["agent_0"].actions == [4] * 5
        for agent in AGENTS:
            assert len(future.agents[agent].obs) == 5 and len(future.agents[agent].obs[0]) == 18
            assert len(future.agents[agent].rewards) == len(future.agents[agent].terminated) == 5
    again = run(svc.imagine(**dict(req)))
    assert again.futures[0].agents["agent_1"].obs == out.futures[0].agents["agent_1"].obs


def test_act_decides_for_each_ego_with_scores_and_forecasts(svc):
    req = ActRequest(obs=history(5), past_actions=past(5), egos=["agent_2", "agent_0"])
    out = run(svc.act(**dict(req)))
    assert (out.world_model, out.behavior_model) == ("world@1", "behavior@1")
    assert (out.horizon, out.samples) == (6, 3)  # the planner's defaults
    assert list(out.agents) == ["agent_2", "agent_0"]  # request order
    for ego, d in out.agents.items():
        assert [c.action for c in d.candidates] == list(range(5))
        best = max(d.candidates, key=lambda c: c.score)
        assert d.action == best.action == d.plan[0] and d.predicted_return == best.score
        assert set(d.predicted_others) == set(AGENTS) - {ego}
        assert all(0 <= a < 5 for a in d.predicted_others.values()) and len(d.plan) == 6
    short = ActRequest(obs=history(1), egos=["agent_1"], horizon=3, samples=2)  # pads
    out = run(svc.act(**dict(short)))
    assert (out.horizon, out.samples) == (3, 2) and len(out.agents["agent_1"].plan) == 3


def test_act_matches_the_planner_on_the_same_history(store):
    """The service's decision is the Planner's, given the same history and random stream."""
    host = ModelHost(runtime.refs_from_env(), store, export=False)
    models = host.current
    req = ActRequest(obs=history(6), past_actions=past(6), egos=["agent_1"], start_step=20)
    got = runtime.act(models, req).agents["agent_1"]
    planner = Planner(models.world.model, models.behavior.model, PlannerConfig())
    hist = runtime.joint_history(req, True, 5)
    assert hist.obs.shape == (6, 3, 18) and hist.prev_actions[1:, 0].tolist() == past(6)["agent_0"]
    [want] = planner.decide(hist, ["agent_1"])
    assert got.action == want.action and got.plan == want.plan
    assert got.predicted_return == pytest.approx(want.predicted_return)
    assert [c.score for c in got.candidates] == pytest.approx([v for _, v in want.candidate_scores])
    # a known objective by name: the planner's next decision with that objective
    req.objective = "simple_spread"
    got = runtime.act(models, req)
    assert got.objective == "simple_spread"
    planner = Planner(
        models.world.model, models.behavior.model, PlannerConfig(objective="simple_spread")
    )
    planner.decide(hist, ["agent_1"])  # the service's stream is one decision on
    [want] = planner.decide(hist, ["agent_1"])
    assert [c.score for c in got.agents["agent_1"].candidates] == pytest.approx(
        [v for _, v in want.candidate_scores]
    )
    assert models.planner.config.objective == "learned", "the served planner is unchanged"
    # a team: the plans are scored by its agents' predicted rewards (the planner's next one)
    req.objective, req.team = None, ["agent_0"]
    got = runtime.act(models, req).agents["agent_1"]
    fresh = Planner(models.world.model, models.behavior.model, PlannerConfig())
    for _ in range(2):  # the service's stream is two decisions on
        fresh.decide(hist, ["agent_1"])
    [want] = fresh.decide(hist, ["agent_1"], team=["agent_0"])
    assert [c.score for c in got.candidates] == pytest.approx([v for _, v in want.candidate_scores])
    # a history that does not begin the episode and is not longer than the context
    C = models.planner.context
    late = ActRequest(obs=history(C), past_actions=past(C), egos=["agent_0"], start_step=3)
    with pytest.raises(runtime.ActInputError, match=rf"obs: has {C} steps.*at least {C + 1}"):
        runtime.act(models, late)
    host.close()


def test_models_reports_versions_with_lineage(svc):
    out = run(svc.models())
    roles = {m.role: m for m in out.models}
    assert roles["world"].version == "world@1" and roles["world"].ref == "world@production"
    assert roles["behavior"].card["dataset"]["resolved"] == "spread@1"
    assert roles["world"].bento_tag.startswith("foresight-world:world-1-")

    import bentoml

    stored = bentoml.models.get(roles["world"].bento_tag)
    assert stored.info.labels["registry_version"] == "1"
    assert "production" in stored.info.labels["aliases"].split(",")


def test_reload_swaps_a_moved_alias_and_in_flight_requests_keep_their_models(tmp_path):
    store = Store(str(tmp_path / "store"))
    register_pair(store)
    host = ModelHost({"world": "world@production", "behavior": "behavior@production"}, store)
    before = host.current
    assert [c.changed for c in host.reload()] == [False, False]
    mv = register_untrained(store, "behavior", spread_spec(), TINY_BEHAVIOR, seed=1)
    changes = {c.role: c for c in host.reload()}
    assert changes["behavior"].changed and changes["behavior"].current == mv.ref
    assert not changes["world"].changed
    assert host.current.behavior.version == "behavior@2" and host.current.world is before.world
    assert host.current.planner is not before.planner  # rebuilt on the new models
    assert host.current.planner.behavior is host.current.behavior.model
    # a request that took the old set before the swap finishes on it
    [old] = runtime.predict_actions(before, [ActionQuery(obs=history())])
    [new] = runtime.predict_actions(host.current, [ActionQuery(obs=history())])
    assert old.model == "behavior@1" and new.model == "behavior@2"
    # an alias pointing at a broken target: reported, the loaded model keeps serving
    ModelRegistry(store).promote("world@1", "production")
    ModelRegistry(store)._move_alias("behavior", "production", 99, "promote")
    changes = {c.role: c for c in host.reload()}
    assert changes["behavior"].error and "99" in changes["behavior"].error
    assert host.current.behavior.version == "behavior@2"
    # a new version whose weights file is truncated: reported, the old one keeps serving
    broken = register_untrained(store, "behavior", spread_spec(), TINY_BEHAVIOR, seed=2)
    weights = tmp_path / "store" / "models" / "behavior" / str(broken.version) / WEIGHTS
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    changes = {c.role: c for c in host.reload()}
    assert changes["behavior"].error and not changes["behavior"].changed
    assert changes["behavior"].current == "behavior@2"
    assert host.current.behavior.version == "behavior@2"
    [still] = runtime.predict_actions(host.current, [ActionQuery(obs=history())])
    assert still.model == "behavior@2"
    host.close()


def test_unresolvable_or_wrong_kind_reference_fails_at_start(store):
    with pytest.raises(ModelLoadError, match=r"world@staging.*does not resolve.*no alias"):
        ModelHost({"world": "world@staging", "behavior": "behavior@production"}, store)
    with pytest.raises(ModelLoadError, match="a 'behavior' model"):
        ModelHost({"world": "behavior@1", "behavior": "behavior@production"}, store)


# -- tier 2: the ASGI app --------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(store, tmp_path_factory):
    from starlette.testclient import TestClient

    from foresight.serving.service import Foresight

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path_factory.mktemp("prom")))
        mp.setenv("FORESIGHT_MAX_BODY_BYTES", str(256 * 1024))
        with TestClient(Foresight.to_asgi()) as c:
            yield c


def _valid_next() -> dict:
    return {"queries": [{"obs": history(2), "action": dict.fromkeys(AGENTS, 1)}]}


BAD_REQUESTS = [
    # (path, body, words the error names)
    ("/predict_actions", b"{", ["body", "JSON"]),
    ("/predict_actions", b"", ["queries", "required"]),  # BentoML reads no body as {}
    ("/predict_actions", b"[1, 2]", ["body", "object"]),
    ("/predict_actions", {}, ["queries", "required"]),
    ("/predict_actions", {"queries": []}, ["queries", "at least 1"]),
    ("/predict_actions", {"queries": [{}]}, ["queries.0.obs", "required"]),
    ("/predict_actions", {"queries": [{"obs": "x"}]}, ["queries.0.obs", "object"]),
    ("/predict_actions", {"queries": [{"obs": {"agent_9": [[0.0] * 18]}}]}, ["agent_9", "unknown"]),
    ("/predict_actions", {"queries": [{"obs": {"agent_0": [[0.0] * 7]}}]}, ["obs.agent_0", "18"]),
    (
        "/predict_actions",
        {"queries": [{"obs": {"agent_0": [[0.0] * 18] * 2, "agent_1": [[0.0] * 18]}}]},
        ["obs.agent_1", "steps"],
    ),
    (
        "/predict_actions",
        b'{"queries": [{"obs": {"agent_0": [[NaN]]}}]}',
        ["agent_0.0.0", "finite"],
    ),
    (
        "/predict_actions",
        b'{"queries": [{"obs": {"agent_0": [[Infinity]]}}]}',
        ["agent_0.0.0", "finite"],
    ),
    (
        "/predict_actions",
        {"queries": [{"obs": history(1), "samples": "3"}]},
        ["samples", "integer"],
    ),
    (
        "/predict_actions",
        {"queries": [{"obs": history(1), "sample": 3}]},
        ["sample", "not permitted"],
    ),
    (
        "/predict_actions",
        {"queries": [{"obs": history(3), "past_actions": {"agent_0": [1]}}]},
        ["past_actions.agent_0", "expected 2"],
    ),
    (
        "/predict_actions",
        {"queries": [{"obs": history(2), "past_actions": {"agent_0": [7]}}]},
        ["past_actions.agent_0.0", "0..4"],
    ),
    (
        "/predict_next",
        {"queries": [{"obs": history(2), "action": {"agent_0": 1}}]},
        ["action", "missing"],
    ),
    (
        "/predict_next",
        {"queries": [{"obs": history(2), "action": dict.fromkeys(AGENTS, 1.5)}]},
        ["action", "int"],
    ),
    ("/imagine", {"obs": history(2), "horizon": MAX_HORIZON + 1}, ["horizon", "less than"]),
    ("/imagine", {"obs": history(2), "horizon": 0}, ["horizon", "greater than"]),
    ("/imagine", {"obs": history(2), "horizon": 5, "samples": 1000}, ["samples", "less than"]),
    ("/imagine", {"obs": history(2), "horizon": 64, "samples": 64}, ["horizon * samples", "1024"]),
    ("/imagine", {"obs": history(2)}, ["horizon", "required"]),
    (
        "/imagine",
        {"obs": history(2), "horizon": 3, "plans": {"agent_0": [1, 2]}},
        ["plans.agent_0", "horizon is 3"],
    ),
    (
        "/imagine",
        {"obs": history(2), "horizon": 3, "plans": {"agent_7": [1, 2, 3]}},
        ["plans.agent_7", "not in obs"],
    ),
    ("/act", {"obs": history(2), "past_actions": past(2)}, ["egos", "required"]),
    ("/act", {"obs": history(1), "egos": ["agent_7"]}, ["egos.0", "not in obs"]),
    ("/act", {"obs": history(1), "egos": ["agent_0", "agent_0"]}, ["egos", "repeat"]),
    ("/act", {"obs": {"agent_9": [[0.0] * 18]}, "egos": ["agent_9"]}, ["agent_9", "unknown"]),
    (
        "/act",
        b'{"obs": {"agent_0": [[NaN]]}, "egos": ["agent_0"]}',
        ["agent_0.0.0", "finite"],
    ),
    (
        "/act",
        {"obs": history(1), "egos": ["agent_0"], "horizon": MAX_ACT_HORIZON + 1},
        ["horizon", "less than"],
    ),
    ("/act", {"obs": history(1), "egos": ["agent_0"], "horizon": 0}, ["horizon", "greater"]),
    (
        "/act",
        {"obs": history(1), "egos": ["agent_0"], "samples": MAX_ACT_SAMPLES + 1},
        ["samples", "less than"],
    ),
    (
        "/act",
        {"obs": history(3), "past_actions": past(3, AGENTS[:2]), "egos": ["agent_0"]},
        ["past_actions", "missing", "agent_2"],
    ),
    (
        "/act",
        {"obs": history(2), "past_actions": past(2), "egos": ["agent_0"], "start_step": 9},
        ["obs", "start_step", "at least"],
    ),
    (
        "/act",
        {"obs": history(1), "egos": ["agent_0"], "state": [[0.0]]},
        ["state"],
    ),
    (
        "/act",
        {"obs": history(1), "egos": ["agent_0"], "team": ["agent_0", "agent_8"]},
        ["team.1", "'agent_8' is not in obs"],
    ),
    (
        "/act",
        {"obs": history(1), "egos": ["agent_0"], "team": ["agent_1", "agent_1"]},
        ["team", "repeat"],
    ),
    ("/act", {"obs": history(1), "egos": ["agent_0"], "team": []}, ["team", "at least 1"]),
    (
        "/act",
        {"obs": history(1), "egos": ["agent_0"], "objective": "tidy"},
        ["objective", "unknown objective 'tidy'", "learned, simple_spread"],
    ),
    (
        "/act",
        {"obs": history(1), "egos": ["agent_0"], "objective": "simple_tag"},
        ["objective", "reads simple_tag observations", "simple_spread_v3"],
    ),
    (
        "/act",
        {"obs": history(1), "egos": ["agent_0"], "objective": "import os; os.system('x')"},
        ["objective", "unknown objective"],
    ),
]


def _post(client, path, body):
    if isinstance(body, bytes):
        return client.post(path, content=body, headers={"content-type": "application/json"})
    return client.post(path, json=body)


@pytest.mark.parametrize("path,body,words", BAD_REQUESTS, ids=range(len(BAD_REQUESTS)))
def test_bad_request_is_a_4xx_naming_the_field_and_problem(client, path, body, words):
    r = _post(client, path, body)
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    error = r.json()["error"]
    for word in words:
        assert word in error, (word, error)


def test_service_keeps_serving_after_a_loop_of_malformed_requests(client):
    for _ in range(3):
        for path, body, _words in BAD_REQUESTS:
            assert _post(client, path, body).status_code < 500
    r = client.post("/predict_next", json=_valid_next())
    assert r.status_code == 200 and r.json()[0]["model"] == "world@1"


def encoded(obs: dict, **change) -> dict:
    """``obs`` with every agent's steps as an EncodedArray body, ``change`` applied to each."""
    from foresight.serving.schemas import EncodedArray

    return {a: {**EncodedArray.of(steps).model_dump(), **change} for a, steps in obs.items()}


def test_observations_as_base64_float32_get_the_answers_of_json_numbers(client):
    obs = history(6, seed=3)
    for path, extra in (
        ("/predict_actions", {}),
        ("/predict_next", {"action": dict.fromkeys(AGENTS, 2)}),
    ):
        as_json = client.post(path, json={"queries": [{"obs": obs, **extra}]})
        as_array = client.post(path, json={"queries": [{"obs": encoded(obs), **extra}]})
        assert as_json.status_code == as_array.status_code == 200, as_array.text
        assert as_array.json() == as_json.json()
    body = {"obs": obs, "past_actions": past(6), "egos": AGENTS[:1], "samples": 1}
    as_json = client.post("/act", json=body)
    as_array = client.post("/act", json={**body, "obs": encoded(obs)})
    assert as_array.status_code == 200, as_array.text
    assert as_array.json()["agents"].keys() == as_json.json()["agents"].keys()
    mixed = {**encoded(obs), "agent_1": obs["agent_1"]}  # lists and arrays in one request
    assert client.post("/predict_actions", json={"queries": [{"obs": mixed}]}).status_code == 200


def server_timing(response) -> dict[str, float]:
    """``Server-Timing: decide;dur=41.2, app;dur=42.0`` as ``{"decide": 41.2, "app": 42.0}``."""
    parts = [p.strip().split(";dur=") for p in response.headers["server-timing"].split(",")]
    return {name: float(ms) for name, ms in parts}


def test_act_and_imagine_say_what_the_service_spent_in_server_timing(client):
    """/act names the planner's decision and the request's whole time in the service; the
    decision fits inside the request, and the request inside what the client waited."""
    import time

    body = {"obs": history(4), "past_actions": past(4), "egos": AGENTS}
    for _ in range(3):
        started = time.perf_counter()
        answer = client.post("/act", json=body)
        waited = 1000 * (time.perf_counter() - started)
        assert answer.status_code == 200, answer.text
        timing = server_timing(answer)
        assert set(timing) == {"decide", "app"}
        assert len(answer.headers.get_list("server-timing")) == 1  # merged into one header
        assert 0 < timing["decide"] <= timing["app"] <= waited
    imagined = client.post("/imagine", json={"obs": history(2), "horizon": 2})
    assert imagined.status_code == 200 and set(server_timing(imagined)) == {"app"}
    refused = client.post("/act", json={"obs": history(1), "egos": ["agent_7"]})
    assert refused.status_code == 400 and set(server_timing(refused)) == {"app"}
    assert "server-timing" not in client.post("/predict_next", json=_valid_next()).headers
    spec = client.get("/docs.json").json()
    assert "Server-Timing" in spec["paths"]["/act"]["post"]["responses"]["200"]["headers"]


def b64(array) -> str:
    import base64

    import numpy as np

    return base64.b64encode(np.asarray(array, "<f4").tobytes()).decode()


BAD_ARRAYS = [
    # (change to each agent's EncodedArray, words the error names)
    ({"dtype": "float64"}, ["obs.agent_0.dtype", "float32"]),
    ({"data": "AAAA" * 10}, ["obs.agent_0.data", "30 bytes", "needs 360"]),
    ({"data": "not base64!"}, ["obs.agent_0.data", "base64"]),
    ({"shape": [5, 18, 1]}, ["obs.agent_0.shape"]),
    ({"shape": [0, 18]}, ["obs.agent_0.shape", "bounds"]),
    (
        {"shape": [4, 18], "data": b64(np.zeros((4, 18)))},
        ["obs.agent_1", "5 steps", "agent_0 has 4"],
    ),
    ({"shape": [1, 18], "data": b64(np.full((1, 18), np.nan))}, ["obs.agent_0.data", "NaN"]),
    ({"shape": [5, 17], "data": b64(np.zeros((5, 17)))}, ["obs.agent_0", "17 features", "18"]),
]


@pytest.mark.parametrize("change,words", BAD_ARRAYS, ids=range(len(BAD_ARRAYS)))
def test_bad_encoded_observations_are_a_4xx_naming_the_field(client, change, words):
    obs = encoded(history(5), **change)
    if "shape" in change and change["shape"][0] == 4:  # only agent_0 is shorter
        obs = {**encoded(history(5)), "agent_0": obs["agent_0"]}
    r = client.post("/predict_actions", json={"queries": [{"obs": obs}]})
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    error = r.json()["error"]
    for word in words:
        assert word in error, (word, error)


def test_asgi_endpoints_and_health(client):
    r = client.post("/predict_actions", json={"queries": [{"obs": history(3)}] * 3})
    assert r.status_code == 200 and len(r.json()) == 3
    r = client.post("/imagine", json={"obs": history(2), "horizon": 2, "samples": 2})
    assert r.status_code == 200 and len(r.json()["futures"]) == 2
    r = client.post("/act", json={"obs": history(3), "past_actions": past(3), "egos": AGENTS})
    assert r.status_code == 200 and list(r.json()["agents"]) == AGENTS
    assert client.post("/models").json()["models"][0]["role"] == "world"
    for path in ("/readyz", "/livez", "/metrics", "/docs.json"):
        assert client.get(path).status_code == 200, path
    assert "bentoml_service_request" in client.get("/metrics").text
    # the benchmarks' /echo is not part of the product API unless asked for
    assert client.post("/echo", json={"message": "hi"}).status_code == 404
    assert "/echo" not in client.get("/docs.json").json()["paths"]


def test_bench_endpoints_only_when_benchmarking_asks(monkeypatch):
    """The middleware in front of a stand-in app serving the real spec (a second BentoML
    app in one process would register its metrics twice)."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from foresight.serving.middleware import ForesightMiddleware
    from foresight.serving.service import Foresight

    spec = Foresight.openapi_spec.asdict()
    inner = Starlette(
        routes=[
            Route("/echo", lambda r: JSONResponse({"message": "hi"}), methods=["POST"]),
            Route("/docs.json", lambda r: JSONResponse(spec)),
        ]
    )
    monkeypatch.delenv("FORESIGHT_BENCH_ENDPOINTS", raising=False)
    product = TestClient(ForesightMiddleware(inner))
    assert product.post("/echo", json={}).status_code == 404
    assert "/echo" not in product.get("/docs.json").json()["paths"]
    monkeypatch.setenv("FORESIGHT_BENCH_ENDPOINTS", "1")
    bench = TestClient(ForesightMiddleware(inner))
    assert bench.post("/echo", json={}).json() == {"message": "hi"}
    served = bench.get("/docs.json").json()
    assert (
        "/echo" in served["paths"] and "EchoResponseIODescriptor" in served["components"]["schemas"]
    )


def test_flags_are_read_when_the_service_is_built(store, monkeypatch):
    """FORESIGHT_BATCHING and friends take effect at construction, no module reload."""
    from foresight.serving.service import Foresight

    def built():
        instance = Foresight()
        instance.shutdown()
        return instance

    query = [ActionQuery(obs=history(2))]
    monkeypatch.setenv("FORESIGHT_BATCHING", "0")
    monkeypatch.setenv("FORESIGHT_INLINE_QUERIES", "9")
    try:
        instance = built()
        assert not instance.batching and instance.inline_max == 9
        run(instance.predict_actions(query))
        assert instance.batchers["predict_actions"].batches == 0  # answered without the queue
    finally:
        monkeypatch.delenv("FORESIGHT_BATCHING")
        monkeypatch.delenv("FORESIGHT_INLINE_QUERIES")
        instance = built()
    assert instance.batching and instance.inline_max == 4
    run(instance.predict_actions(query))
    assert instance.batchers["predict_actions"].batches == 1
    assert not any(api.batchable for api in Foresight.apis.values())  # BentoML's is not used


@pytest.mark.parametrize("path", ["/models", "/reload", "/predict_actions", "/act"])
def test_json_sent_as_another_media_type_is_a_415_not_a_500(client, path):
    """Found by schemathesis: BentoML answered 500 to a body sent as multipart/form-data."""
    r = client.post(path, content=b"{}", headers={"content-type": "multipart/form-data"})
    assert r.status_code == 415 and "Content-Type" in r.json()["error"], r.text


def test_oversized_body_gets_413(client):
    big = {"queries": [{"obs": history(200)}] * 2}  # ~ 0.8 MB > the 256 KiB set above
    r = client.post("/predict_actions", json=big)
    assert r.status_code == 413 and "body" in r.json()["error"]
    r = client.post(
        "/predict_actions",
        content=iter([json.dumps(big).encode()]),  # chunked, no Content-Length
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 413


def test_api_key_middleware_guards_everything_but_health(monkeypatch):
    """The middleware alone (the live-server test checks it inside the real service)."""
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from foresight.serving.middleware import ForesightMiddleware

    ok = lambda request: PlainTextResponse("ok")  # noqa: E731
    paths = ("/x", "/readyz", "/metrics")
    inner = Starlette(routes=[Route(p, ok, methods=["GET", "POST"]) for p in paths])
    monkeypatch.setenv("FORESIGHT_API_KEY", "s3cret")
    c = TestClient(ForesightMiddleware(inner))
    assert c.post("/x", json={}).status_code == 401
    assert c.post("/x", json={}, headers={"Authorization": "Bearer nope"}).status_code == 401
    assert c.post("/x", json={}, headers={"Authorization": "Basic s3cret"}).status_code == 401
    assert c.post("/x", json={}, headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert c.get("/readyz").status_code == 200
    assert c.get("/metrics").status_code == 401  # metrics need the key too
    assert c.get("/metrics", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    monkeypatch.setenv("FORESIGHT_METRICS_OPEN", "1")  # unless a scraper is trusted
    assert TestClient(ForesightMiddleware(inner)).get("/metrics").status_code == 200


def test_every_503_says_overloaded_with_retry_after():
    """BentoML's own 503 (its batcher's "An unexpected error has occurred") is rewritten."""
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from foresight.serving.middleware import ForesightMiddleware

    def unavailable(request):
        return PlainTextResponse("An unexpected error has occurred", status_code=503)

    inner = Starlette(routes=[Route("/predict_actions", unavailable, methods=["POST"])])
    r = TestClient(ForesightMiddleware(inner)).post("/predict_actions", json={})
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert r.json()["error"].startswith("overloaded")


def test_concurrent_requests_are_merged_and_each_gets_its_own_answers(svc):
    queries = [[ActionQuery(obs=history(3 + i % 3, seed=i))] for i in range(12)]
    queries[5] = [ActionQuery(obs=history(4, seed=50, agents=AGENTS[:2]))] * 2  # other layout
    batcher = svc.batchers["predict_actions"]
    before = batcher.batches

    async def together():
        return await asyncio.gather(*(svc.predict_actions(q) for q in queries))

    answers = run(together())
    assert batcher.batches - before < len(queries)  # merged into fewer model calls
    for q, got in zip(queries, answers, strict=True):
        [want] = runtime.predict_actions(svc.host.current, q[:1])
        assert len(got) == len(q) and set(got[0].agents) == set(want.agents)
        for agent, dist in want.agents.items():
            assert torch.allclose(
                torch.tensor(got[0].agents[agent].probs), torch.tensor(dist.probs)
            )


def _gated_batcher(max_batch=64, max_wait_s=10.0):
    """A Batcher over a fake model that records its batches and runs while ``gate`` is open."""
    from foresight.serving.batching import Batcher

    calls: list[list[int]] = []
    gate = asyncio.Event()

    async def model(queries):
        calls.append(list(queries))
        await gate.wait()
        if -1 in queries:
            raise RuntimeError("model failed")
        return [q * 10 for q in queries]

    return Batcher(model, max_batch, max_wait_s), calls, gate


def test_batcher_dispatches_a_lone_request_and_queues_arrivals_while_busy():
    async def scenario():
        batcher, calls, gate = _gated_batcher(max_batch=4)
        first = asyncio.ensure_future(batcher([1]))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert calls == [[1]]  # idle model: dispatched on the next turn, nothing waited for
        rest = [asyncio.ensure_future(batcher(q)) for q in ([2, 3], [4], [5, 6], [7] * 5)]
        await asyncio.sleep(0)
        assert len(calls) == 1  # the model is busy: they queue
        gate.set()
        answers = await asyncio.gather(first, *rest)
        return calls, answers

    calls, answers = run(scenario())
    # FIFO, up to 4 queries a batch; a request larger than the limit runs alone
    assert calls == [[1], [2, 3, 4], [5, 6], [7] * 5]
    assert answers == [[10], [20, 30], [40], [50, 60], [70] * 5]


def test_batcher_refuses_requests_queued_past_the_deadline_and_survives_model_errors():
    from foresight.serving.batching import Overloaded

    async def scenario():
        batcher, calls, gate = _gated_batcher(max_wait_s=0.05)
        first = asyncio.ensure_future(batcher([-1]))  # this batch fails
        await asyncio.sleep(0)
        late = asyncio.ensure_future(batcher([2]))
        await asyncio.sleep(0.1)  # the queued request is now past its deadline
        gate.set()
        results = await asyncio.gather(first, late, return_exceptions=True)
        return results, await batcher([3]), calls

    (failed, refused), after, calls = run(scenario())
    assert isinstance(failed, RuntimeError) and "model failed" in str(failed)
    assert isinstance(refused, Overloaded) and refused.error_code == 503
    assert "waited" in str(refused)
    assert after == [30] and calls == [[-1], [3]]  # the late one never reached the model


def test_api_routes_skip_tracing_spans_unless_asked():
    from foresight.serving.service import API_ROUTES, Foresight

    excluded = Foresight.config["tracing"]["excluded_urls"]
    assert {f"/{r}$" for r in API_ROUTES} == set(excluded) and "/act$" in excluded
    assert not any("readyz" in u or "metrics" in u for u in excluded)


def test_answers_are_written_as_pydantic_would(svc):
    """foresight.serving.fastio writes the answer objects with orjson: the same JSON document."""
    from pydantic import TypeAdapter

    from foresight.serving.fastio import dumps
    from foresight.serving.schemas import ActionPrediction, NextPrediction

    queries = [
        ActionQuery(obs=history(3), samples=2),
        ActionQuery(obs=history(2), agents=["agent_1"]),
    ]
    answers = run(svc.predict_actions(queries))
    expected = TypeAdapter(list[ActionPrediction]).dump_python(answers, mode="json")
    assert json.loads(dumps(answers)) == expected
    nxt = run(svc.predict_next([NextQuery(obs=history(2), action=dict.fromkeys(AGENTS, 1))]))
    expected = TypeAdapter(list[NextPrediction]).dump_python(nxt, mode="json")
    assert json.loads(dumps(nxt)) == expected


def test_startup_hook_freezes_the_heap_and_shutdown_restores_the_collector(store):
    import gc

    from foresight.serving.service import GC_THRESHOLD, Foresight

    before = gc.get_threshold()
    instance = Foresight()
    instance.tune_garbage_collector()
    try:
        assert gc.get_freeze_count() > 0 and gc.get_threshold()[0] == GC_THRESHOLD
    finally:
        instance.shutdown()
    assert gc.get_freeze_count() == 0 and gc.get_threshold() == before
