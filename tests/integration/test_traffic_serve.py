"""Traffic control inside the Serve app: real Ray Serve, real MLflow (SQLite), real HTTP.

Four registered versions: 1 (champion), 2 (a healthy challenger), 3 (raises on rows with
x1 > 1) and 4 (answers 0.3 s late). The faults are injected by `faulty_loader`, which the
replicas use as their ``model_loader``: it loads the real registered booster and wraps it
according to the version's ``test.fault`` tag, so the faulty versions are real registry
versions served through the real request path.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from dataclasses import replace

import httpx
import numpy as np
import pytest
import xgboost as xgb

from retrain.loadgen import LoadGenerator
from serve.loader import TRAFFIC_TAG, LoadedModel, load_version
from serve.traffic import TrafficSplit
from tests.conftest import wait_until
from tests.synthetic import frame

pytestmark = [pytest.mark.ray, pytest.mark.slow]

MODEL = "traffic"
TOKEN = "traffic-test-" + uuid.uuid4().hex
AUTH = {"authorization": f"Bearer {TOKEN}"}
ROW = {"x1": 0.3, "x2": 4.0, "cat": "b"}
FAULT_TAG = "test.fault"
SLOW_S = 0.3


# -- fault injection (runs inside the replicas) ------------------------------------------------


class _Faulty:
    """A real booster that raises on rows with x1 > 1 ("raise") or answers late ("slow")."""

    def __init__(self, booster, fault: str) -> None:
        self.booster, self.fault = booster, fault

    def inplace_predict(self, data):
        if self.fault == "raise" and (data["x1"].to_numpy() > 1.0).any():
            raise ValueError("injected fault: x1 > 1")
        if self.fault == "slow":
            time.sleep(SLOW_S)
        return self.booster.inplace_predict(data)


def faulty_loader(tracking_uri: str, name: str, version: str) -> LoadedModel:
    from mlflow import MlflowClient

    model = load_version(tracking_uri, name, version)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    fault = client.get_model_version(name, version).tags.get(FAULT_TAG)
    return replace(model, booster=_Faulty(model.booster, fault)) if fault else model


# -- the project ------------------------------------------------------------------------------


def _register(registry, seed: int, fault: str | None) -> str:
    from serve.features import FeatureSpec

    data = frame(1500, seed)
    spec = FeatureSpec.learn(data, ("x1", "x2", "cat"))
    booster = xgb.train({"objective": "binary:logistic", "max_depth": 3, "nthread": 1},
                        xgb.DMatrix(spec.frame(data), data["label"], enable_categorical=True),
                        10 + seed)
    with registry.cycle_run(f"traffic-v{seed}", {}) as run_id:
        uri = registry.log_model(run_id, booster, spec, task="classification", metric="auc")
        return registry.register(uri, tags={FAULT_TAG: fault} if fault else {})


@pytest.fixture(scope="module")
def project(ray_cluster, tmp_path_factory):
    from retrain.registry import MlflowRegistry

    root = tmp_path_factory.mktemp("traffic")
    registry = MlflowRegistry(tracking_uri=f"sqlite:///{root}/mlflow.db",
                              artifact_location=str(root / "artifacts"), experiment="traffic",
                              model_name=MODEL)
    versions = [_register(registry, seed, fault)
                for seed, fault in ((1, None), (2, None), (3, "raise"), (4, "slow"))]
    assert versions == ["1", "2", "3", "4"]
    registry.set_alias("champion", "1")
    return {"root": root, "registry": registry}


@pytest.fixture(scope="module")
def served(project, serve_port):
    from ray import serve

    from retrain.serving import deploy
    from serve.settings import ServeSettings

    root = project["root"]
    settings = ServeSettings(
        tracking_uri=project["registry"].tracking_uri, model_name=MODEL,
        app_name="traffic-test", route_prefix="/tc", port=serve_port, cpus_per_replica=0.2,
        poll_interval_s=0.5, inference_log_path=str(root / "inference"), flush_interval_s=0.3,
        admin_token=TOKEN, version_timeout_s=3.0,
        model_loader=f"{__name__}:faulty_loader",
    )
    deploy(settings)
    url = f"http://127.0.0.1:{serve_port}/tc"
    wait_until(lambda: _health(url).get("model_version") == "1", timeout=120)
    yield {"url": url, "log": settings.inference_log_path, **project}
    serve.delete(settings.app_name)


def _health(url: str) -> dict:
    try:
        return httpx.get(f"{url}/health", timeout=5).json()
    except (httpx.HTTPError, ValueError):
        return {}


def _tag(registry) -> str | None:
    return registry.client.get_registered_model(MODEL).tags.get(TRAFFIC_TAG)


def _apply(served, split: TrafficSplit | None, timeout: float = 60) -> tuple[float, float]:
    """Write the split as the rollout driver does; wait until the replica applies it.
    Returns when it was written and when the replica was seen applying it."""
    from retrain.traffic_control import TrafficStore

    written = time.monotonic()
    TrafficStore(served["registry"]).write(split)
    wanted = (split or TrafficSplit.single("1")).to_dict()
    wait_until(lambda: _health(served["url"]).get("traffic") == wanted, timeout=timeout)
    return written, time.monotonic()


def _logged(served, request_ids: set[str], rows_expected: int, timeout: float = 30):
    """The log's rows of ``request_ids`` once there are ``rows_expected`` of them."""
    from serve.inference_log import read_predictions

    def ready():
        rows = read_predictions(served["log"])
        mine = rows[rows["request_id"].isin(request_ids)]
        return (mine,) if len(mine) >= rows_expected else None

    try:
        return wait_until(ready, timeout=timeout)[0]
    except AssertionError:
        rows = read_predictions(served["log"])
        mine = rows[rows["request_id"].isin(request_ids)]
        raise AssertionError(
            f"{len(mine)} of {rows_expected} rows logged; log: "
            f"{_health(served['url']).get('inference_log')}; logged:\n{mine}") from None


# -- a steady load ------------------------------------------------------------------------------


class Load(LoadGenerator):
    """Client threads posting one row each to ``/invocations``, as fast as answers come, for
    the whole block (retrain/loadgen.py records every request)."""

    def __init__(self, url: str, *, threads: int = 3, body: dict | None = None,
                 headers: dict | None = None) -> None:
        super().__init__(f"{url}/invocations", body or {"dataframe_records": [ROW]},
                         threads=threads, pause_s=0.0, headers=headers)


def _wait_for_answers(load: Load, since: float, count: int, timeout: float = 60) -> None:
    wait_until(lambda: len(load.after(since)) >= count, timeout=timeout, interval=0.1)


def _post(url: str, body, headers=None) -> httpx.Response:
    return httpx.post(f"{url}/invocations", json=body, headers=headers or {}, timeout=30)


# -- the split under load ------------------------------------------------------------------------


def test_a_weighted_split_under_load_fails_nothing_and_answers_in_its_shares(served):
    url = served["url"]
    with Load(url) as load:
        time.sleep(1.0)
        written, applied = _apply(served, TrafficSplit({"1": 0.7, "2": 0.3}))
        _wait_for_answers(load, applied, 400)
    assert not load.failures(), load.failures()[:5]
    versions = Counter(a.version for a in load.after(applied))
    share = versions["2"] / (versions["1"] + versions["2"])
    assert set(versions) == {"1", "2"}
    assert abs(share - 0.3) < 0.08, versions  # about 5 standard deviations at n = 400
    before = {a.version for a in load.answers if a.started < written}
    assert before == {"1"}  # nothing from version 2 before the split


def test_a_sticky_key_keeps_each_caller_on_one_version(served):
    split = TrafficSplit({"1": 0.5, "2": 0.5}, sticky_key="x-user")
    _apply(served, split)
    seen: dict[str, set[str]] = {}
    with httpx.Client(timeout=30) as http:
        for _ in range(3):
            for i in range(24):
                key = f"user-{i}"
                # the header name is matched case-insensitively
                r = http.post(f"{served['url']}/invocations", headers={"X-User": key},
                              json={"dataframe_records": [ROW]})
                assert r.status_code == 200
                seen.setdefault(key, set()).add(r.json()["model_version"])
    assert all(len(v) == 1 for v in seen.values()), seen
    assert {k: v.pop() for k, v in seen.items()} == {
        k: split.choose(k, 0.0) for k in seen}  # exactly the documented rendezvous choice
    assert {split.choose(k, 0.0) for k in seen} == {"1", "2"}


def test_a_shadow_gets_mirrored_rows_in_the_log_and_never_answers(served):
    _apply(served, TrafficSplit({"1": 1.0}, shadow="2"))
    ids = set()
    for i in range(10):
        r = _post(served["url"], {"dataframe_records": [ROW, {**ROW, "x1": i / 10}]})
        assert r.status_code == 200 and r.json()["model_version"] == "1"
        ids.add(r.json()["request_id"])
    pinned = _post(served["url"], {"dataframe_records": [ROW]},
                   headers={"x-retrain-version": "2", **AUTH})
    assert pinned.status_code == 200 and pinned.json()["model_version"] == "2"

    rows = _logged(served, ids | {pinned.json()["request_id"]}, 41)
    mine = rows[rows["request_id"].isin(ids)]
    live, shadow = mine[~mine["shadow"]], mine[mine["shadow"]]
    assert set(live["model_version"]) == {"1"} and set(shadow["model_version"]) == {"2"}
    assert len(live) == len(shadow) == 20  # every row of every request, mirrored
    assert shadow["error"].isna().all() and (shadow["latency_ms"] > 0).all()
    # the shadow computed its own answers: what version 2 says when asked directly
    first = shadow[shadow["row"] == 0]["prediction"].iloc[0]
    assert first == pytest.approx(pinned.json()["predictions"][0])
    assert not np.allclose(live.sort_values(["request_id", "row"])["prediction"],
                           shadow.sort_values(["request_id", "row"])["prediction"])
    pinned_row = rows[rows["request_id"] == pinned.json()["request_id"]]
    assert not pinned_row["shadow"].any()  # a pinned answer is a live row of its version


def test_rollback_under_load_stops_the_challenger_and_fails_nothing(served):
    url = served["url"]
    _apply(served, TrafficSplit({"1": 0.5, "2": 0.5}))
    with Load(url) as load:
        time.sleep(1.5)
        r = httpx.post(f"{url}/admin/rollback", headers=AUTH)
        assert r.status_code == 200, r.text
        assert r.json()["traffic"] == TrafficSplit.single("1").to_dict()
        rolled_back = time.monotonic()
        wait_until(lambda: _health(url).get("traffic_source") == "alias", timeout=30)
        applied = time.monotonic()
        _wait_for_answers(load, applied, 100)
    assert _tag(served["registry"]) is None
    assert not load.failures(), load.failures()[:5]
    assert {a.version for a in load.answers if a.started < rolled_back} == {"1", "2"}
    assert {a.version for a in load.after(applied)} == {"1"}


# -- faulty versions -------------------------------------------------------------------------


def test_a_version_that_raises_fails_only_its_own_requests_and_logs_them(served):
    _apply(served, TrafficSplit({"1": 0.5, "3": 0.5}))
    bad = {"dataframe_records": [{**ROW, "x1": 2.0}]}
    answers = [_post(served["url"], bad) for _ in range(40)]
    by_version = Counter((r.headers["x-model-version"], r.status_code) for r in answers)
    assert set(by_version) == {("1", 200), ("3", 500)}, by_version
    failed = next(r for r in answers if r.status_code == 500)
    assert "injected fault" in failed.json()["error"] and failed.json()["model_version"] == "3"
    good = [_post(served["url"], {"dataframe_records": [ROW]}) for _ in range(10)]
    assert all(r.status_code == 200 for r in good)  # valid rows: both versions answer

    ids = {r.headers["x-request-id"] for r in answers}
    rows = _logged(served, ids, len(ids))
    errors = rows[rows["error"].notna()]
    assert set(errors["model_version"]) == {"3"} and (errors["row"] == -1).all()
    assert errors["prediction"].isna().all() and (errors["latency_ms"] >= 0).all()
    assert errors["error"].str.startswith("ValueError: injected fault").all()
    assert len(errors) == by_version[("3", 500)]  # one row per failed request
    assert rows.loc[rows["model_version"] == "1", "error"].isna().all()
    counters = httpx.get(f"{served['url']}/admin/traffic", headers=AUTH).json()["counters"]
    assert counters["3"]["errors"] >= by_version[("3", 500)]


def test_a_slow_version_does_not_slow_the_other(served):
    _apply(served, TrafficSplit({"1": 0.5, "4": 0.5}))
    with Load(served["url"], threads=4) as load:
        since = time.monotonic()
        _wait_for_answers(load, since, 80)
    answers = load.after(since)
    assert not load.failures()
    fast = [a.seconds for a in answers if a.version == "1"]
    slow = [a.seconds for a in answers if a.version == "4"]
    assert fast and slow
    assert np.median(slow) >= SLOW_S
    assert np.median(fast) < SLOW_S / 2, (np.median(fast), np.median(slow))


# -- the admin API and pinning -------------------------------------------------------------------


@pytest.mark.parametrize("headers", [{}, {"authorization": "Bearer wrong"},
                                     {"authorization": TOKEN}], ids=["none", "wrong", "scheme"])
def test_admin_endpoints_refuse_without_the_token_and_change_nothing(served, headers):
    url, registry = served["url"], served["registry"]
    _apply(served, TrafficSplit({"1": 0.9, "2": 0.1}))
    before = _tag(registry)
    calls = [
        httpx.get(f"{url}/admin/traffic", headers=headers),
        httpx.put(f"{url}/admin/traffic", headers=headers, json={"weights": {"2": 1.0}}),
        httpx.post(f"{url}/admin/rollback", headers=headers),
    ]
    assert [r.status_code for r in calls] == [401, 401, 401]
    assert all(r.headers["www-authenticate"] == "Bearer" for r in calls)
    pinned = _post(url, {"dataframe_records": [ROW]}, headers={"x-retrain-version": "2",
                                                                **headers})
    assert pinned.status_code == 403 and "admin token" in pinned.json()["error"]
    time.sleep(1.0)  # more than a poll: nothing was applied either
    assert _tag(registry) == before
    assert _health(url)["traffic"] == TrafficSplit({"1": 0.9, "2": 0.1}).to_dict()


def test_put_traffic_validates_writes_the_tag_and_the_replica_applies_it(served):
    url, registry = served["url"], served["registry"]
    _apply(served, None)
    bad = [
        ({"weights": {"1": 0.5, "2": 0.4}}, 400, "sum to 1"),
        ({"weights": {"1": 1.0}, "shadow": "1"}, 400, "shadow"),
        ({"weights": {"1": 1.0}, "colour": "red"}, 400, "unknown key"),
        ([1, 2], 400, "must be an object"),
        ({"weights": {"1": 0.5, "77": 0.5}}, 409, "['77']"),
        ({"weights": {"1": 1.0}, "shadow": "78"}, 409, "['78']"),
    ]
    for body, status, message in bad:
        r = httpx.put(f"{url}/admin/traffic", headers=AUTH, json=body)
        assert r.status_code == status and message in r.json()["error"], (body, r.text)
    r = httpx.put(f"{url}/admin/traffic", headers=AUTH, content=b"{nope")
    assert r.status_code == 400
    # a body over the server's limit (8 MiB by default) is refused before it is parsed
    huge = b" " * (8 * 1024 * 1024 + 1)
    for method, path in (("PUT", "/admin/traffic"), ("POST", "/admin/promote")):
        r = httpx.request(method, f"{url}{path}", headers=AUTH, content=huge)
        assert r.status_code == 413 and "over the limit" in r.json()["error"], (path, r.text)
    assert _tag(registry) is None  # refused: nothing written

    wanted = {"weights": {"1": 0.8, "2": 0.2}, "shadow": "3", "sticky_key": "x-user"}
    r = httpx.put(f"{url}/admin/traffic", headers=AUTH, json=wanted)
    assert r.status_code == 200 and r.json()["traffic"] == wanted
    assert json.loads(_tag(registry)) == wanted

    def applied():
        body = httpx.get(f"{url}/admin/traffic", headers=AUTH).json()
        return body if body["traffic"] == wanted else None

    state = wait_until(applied, timeout=30)
    assert state["loaded_versions"] == ["1", "2", "3"] and state["traffic_source"] == "tag"
    assert set(state["counters"]) >= {"1", "2", "3"}
    pin = _post(url, {"dataframe_records": [ROW]}, headers={"x-retrain-version": "4", **AUTH})
    assert pin.status_code == 409 and "not loaded" in pin.json()["error"]


def test_a_split_naming_a_version_that_cannot_load_is_not_applied(served):
    url, registry = served["url"], served["registry"]
    _apply(served, None)
    # written around the API's check, as a hand edit would: version 99 does not exist
    registry.client.set_registered_model_tag(
        MODEL, TRAFFIC_TAG, json.dumps({"weights": {"1": 0.5, "99": 0.5}}))
    health = wait_until(lambda: (h := _health(url)).get("pending_traffic") and h, timeout=30)
    assert "version 99" in health["last_error"]
    assert health["traffic"] == TrafficSplit.single("1").to_dict()  # the previous routing
    assert {_post(url, {"dataframe_records": [ROW]}).json()["model_version"]
            for _ in range(10)} == {"1"}
    _apply(served, None)
    # the routing never changed, so the next poll is what clears the report
    wait_until(lambda: (h := _health(url)) and h["last_error"] is None
               and h["pending_traffic"] is None, timeout=30)


def test_a_batching_app_without_a_token_refuses_admin_and_answers_each_row_right(
    served, serve_port
):
    """A second app on the same registry: no admin token (403, nothing changes) and Serve
    batching on (concurrent requests predicted together, each still gets its own rows)."""
    from concurrent.futures import ThreadPoolExecutor

    from ray import serve

    from retrain.serving import deploy
    from serve.settings import ServeSettings

    _apply(served, None)
    settings = ServeSettings(
        tracking_uri=served["registry"].tracking_uri, model_name=MODEL,
        app_name="traffic-batched", route_prefix="/tcb", port=serve_port,
        cpus_per_replica=0.2, poll_interval_s=0.5, admin_token=None,
        batch_max_size=8, batch_wait_s=0.02,
    )
    deploy(settings)
    url = f"http://127.0.0.1:{serve_port}/tcb"
    try:
        wait_until(lambda: _health(url).get("model_version") == "1", timeout=120)
        calls = [httpx.get(f"{url}/admin/traffic", headers=AUTH),
                 httpx.put(f"{url}/admin/traffic", headers=AUTH, json={"weights": {"2": 1.0}}),
                 httpx.post(f"{url}/admin/rollback", headers=AUTH),
                 _post(url, {"dataframe_records": [ROW]},
                       headers={"x-retrain-version": "1", **AUTH})]
        assert [r.status_code for r in calls] == [403] * 4
        assert "RETRAIN_ADMIN_TOKEN" in calls[0].json()["error"]
        assert _tag(served["registry"]) is None

        bodies = [{"dataframe_records": [{**ROW, "x1": i / 7 - 2}]} for i in range(32)]
        with ThreadPoolExecutor(16) as pool:
            batched = list(pool.map(lambda b: _post(url, b), bodies))
        assert all(r.status_code == 200 for r in batched)
        alone = [_post(served["url"], b).json()["predictions"][0] for b in bodies]
        assert [r.json()["predictions"][0] for r in batched] == pytest.approx(alone)
    finally:
        serve.delete(settings.app_name)


# -- the Open Inference Protocol ----------------------------------------------------------------


def test_open_inference_protocol(served):
    url = served["url"]
    _apply(served, None)
    assert httpx.get(f"{url}/v2/health/ready").json() == {"ready": True}
    meta = httpx.get(f"{url}/v2/models/{MODEL}").json()
    assert meta["name"] == MODEL and meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "x1", "datatype": "FP64", "shape": [-1]},
                              {"name": "x2", "datatype": "FP64", "shape": [-1]},
                              {"name": "cat", "datatype": "BYTES", "shape": [-1]}]
    body = {"id": "oip-1", "inputs": [
        {"name": "x1", "shape": [2], "datatype": "FP64", "data": [0.3, -1.0]},
        {"name": "x2", "shape": [2], "datatype": "FP32", "data": [4.0, 2.0]},
        {"name": "cat", "shape": [2], "datatype": "BYTES", "data": ["b", "a"]}]}
    r = httpx.post(f"{url}/v2/models/{MODEL}/infer", json=body)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["model_name"] == MODEL and answer["model_version"] == "1"
    assert answer["id"] == "oip-1"  # the body's id, echoed
    assert r.headers["x-request-id"] and "," not in r.headers["x-request-id"]  # one copy
    (output,) = answer["outputs"]
    assert output["name"] == "predict" and output["datatype"] == "FP64"
    assert output["shape"] == [2]
    same = _post(url, {"dataframe_records": [ROW, {"x1": -1.0, "x2": 2.0, "cat": "a"}]})
    assert output["data"] == pytest.approx(same.json()["predictions"])  # same model, same rows

    assert httpx.post(f"{url}/v2/models/other/infer", json=body).status_code == 404
    assert httpx.get(f"{url}/v2/models/other").status_code == 404
    for bad in ({}, {"inputs": [{"name": "x1", "shape": [2], "datatype": "FP64",
                                 "data": [1.0]}]},
                {"inputs": [{"name": "x1", "shape": [1], "datatype": "FP64", "data": [1.0]}]},
                {"inputs": [{"name": "m", "shape": [1, 2], "datatype": "FP64",
                             "data": [1.0, 2.0]}]}):  # 2 columns for 3 features
        r = httpx.post(f"{url}/v2/models/{MODEL}/infer", json=bad)
        assert 400 <= r.status_code < 500 and r.json()["error"], (bad, r.text)
    r = httpx.post(f"{url}/v2/models/{MODEL}/infer", content=b"not json")
    assert r.status_code == 400
