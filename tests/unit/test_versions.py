"""Versions side by side in one replica, without Ray: pools, outcomes, shadow, refresh."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import numpy as np
import pandas as pd
import pytest

from serve.features import FeatureSpec
from serve.loader import TRAFFIC_TAG, LoadedModel, RegistryState
from serve.traffic import TrafficSplit
from serve.versions import Limits, Routing, VersionCounters, VersionRunner, VersionSet, wanted_split

SPEC = FeatureSpec(names=("x1", "cat"), kinds=("numeric", "categorical"),
                   categories={"cat": ("a", "b")})


class Booster:
    """A stand-in booster: predicts x1 / 10 + offset; raises or sleeps when told to."""

    def __init__(self, offset: float = 0.0, *, raise_above: float | None = None,
                 sleep_s: float = 0.0, gate: threading.Event | None = None) -> None:
        self.offset, self.raise_above, self.sleep_s, self.gate = (
            offset, raise_above, sleep_s, gate)
        self.calls = 0
        self.sizes: list[int] = []  # rows per call

    def inplace_predict(self, frame: pd.DataFrame) -> np.ndarray:
        self.calls += 1
        self.sizes.append(len(frame))
        if self.gate is not None:
            self.gate.wait(10)
        time.sleep(self.sleep_s)
        x1 = frame["x1"].to_numpy(dtype=np.float64)
        if self.raise_above is not None and (x1 > self.raise_above).any():
            raise ValueError(f"x1 above {self.raise_above}")
        return x1 / 10 + self.offset


def model(version: str, booster: Booster | None = None) -> LoadedModel:
    return LoadedModel(name="m", version=version, task="classification", spec=SPEC,
                       booster=booster or Booster(float(version)))


def rows(*x1: float) -> pd.DataFrame:
    return pd.DataFrame({"x1": list(x1), "cat": ["a"] * len(x1)}, dtype=object)


def runner(version: str = "1", booster: Booster | None = None, **limits) -> VersionRunner:
    return VersionRunner(model(version, booster), Limits(**limits), VersionCounters())


def run(coro):
    return asyncio.run(coro)


def state(aliases=None, split: dict | str | None = None) -> RegistryState:
    tags = {} if split is None else {
        TRAFFIC_TAG: split if isinstance(split, str) else json.dumps(split)}
    return RegistryState(aliases=aliases or {}, tags=tags)


# -- one version ----------------------------------------------------------------------------


def test_a_prediction_carries_the_version_and_its_own_latency():
    r = runner("3", Booster(0.5, sleep_s=0.02))
    outcome = run(r.predict(rows(1.0, 2.0)))
    assert outcome.ok and outcome.version == "3" and outcome.status == 200
    assert outcome.predictions.tolist() == pytest.approx([0.6, 0.7])
    assert 20 <= outcome.latency_ms < 2000


def test_an_exception_becomes_that_requests_error_and_the_version_keeps_answering():
    r = runner("2", Booster(raise_above=1.0))
    failed = run(r.predict(rows(0.5, 3.0)))
    assert not failed.ok and failed.status == 500
    assert failed.error == "ValueError: x1 above 1.0" and failed.latency_ms >= 0
    assert run(r.predict(rows(0.5))).ok
    r.counters.record(failed)
    assert r.counters.to_dict()["errors"] == 1


def test_input_a_version_cannot_read_is_invalid_not_an_error():
    r = runner()
    outcome = run(r.predict(pd.DataFrame({"cat": ["a"]})))
    assert outcome.status == 400 and outcome.error is None and "x1" in outcome.invalid
    huge = run(r.predict(pd.DataFrame({"x1": [10**400], "cat": ["a"]}, dtype=object)))
    assert huge.status == 400 and "cannot be read" in huge.invalid  # not a 5xx


def test_a_non_finite_prediction_is_the_versions_error():
    outcome = run(runner("1", Booster(float("nan"))).predict(rows(1.0)))
    assert outcome.status == 500 and "non-finite" in outcome.error


def test_a_slow_version_times_out_and_does_not_slow_another():
    slow = runner("2", Booster(sleep_s=1.0), timeout_s=0.2)
    fast = runner("1", Booster())

    async def both():
        started = time.perf_counter()
        fast_task = asyncio.ensure_future(fast.predict(rows(1.0)))
        slow_task = asyncio.ensure_future(slow.predict(rows(1.0)))
        fast_outcome = await fast_task
        fast_s = time.perf_counter() - started
        return fast_outcome, fast_s, await slow_task

    fast_outcome, fast_s, slow_outcome = run(both())
    assert fast_outcome.ok and fast_s < 0.15
    assert slow_outcome.status == 504 and slow_outcome.error.startswith("VersionTimeout")
    assert 200 <= slow_outcome.latency_ms < 900


def test_past_threads_plus_queue_a_version_refuses_at_once():
    gate = threading.Event()
    r = runner("1", Booster(gate=gate), threads=1, queue=1, timeout_s=5)

    async def three():
        first = asyncio.ensure_future(r.predict(rows(1.0)))
        second = asyncio.ensure_future(r.predict(rows(1.0)))
        await asyncio.sleep(0.05)
        third = await r.predict(rows(1.0))  # the pool (1) and its queue (1) are full
        gate.set()
        return third, await first, await second

    third, first, second = run(three())
    assert third.status == 503 and third.error.startswith("Overloaded")
    assert first.ok and second.ok


def test_shadow_copies_are_bounded_dropped_and_counted():
    gate = threading.Event()
    r = runner("4", Booster(gate=gate), threads=1, shadow_pending=2)
    seen: list = []
    accepted = [r.mirror(rows(1.0), seen.append) for _ in range(4)]
    assert accepted == [True, True, False, False]
    gate.set()
    deadline = time.monotonic() + 5
    while len(seen) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [o.ok for o in seen] == [True, True]
    counts = r.counters.to_dict()
    assert counts["shadow_requests"] == 2 and counts["shadow_dropped"] == 2
    assert counts["requests"] == 0  # shadow copies are not live requests


def test_a_shadow_that_cannot_read_a_live_request_fails_on_it():
    r = runner()
    seen: list = []
    r.mirror(pd.DataFrame({"cat": ["a"]}), seen.append)
    deadline = time.monotonic() + 5
    while not seen and time.monotonic() < deadline:
        time.sleep(0.01)
    assert seen[0].status == 500 and seen[0].error.startswith("InvalidInput")
    assert r.counters.to_dict()["shadow_errors"] == 1


def test_a_retired_version_finishes_in_flight_work_and_releases_its_threads():
    gate = threading.Event()
    r = runner("1", Booster(gate=gate))

    async def retire_midway():
        pending = asyncio.ensure_future(r.predict(rows(1.0)))
        await asyncio.sleep(0.05)
        r.retire()
        gate.set()
        return await pending

    assert run(retire_midway()).ok
    assert r._closed and r.in_flight == 0
    assert run(r.predict(rows(2.0))).ok  # a straggler that read the old routing is served


# -- batching: only when requests queue ---------------------------------------------------------


async def _until(check, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.002)


def _held(booster: Booster, gate: threading.Event, r: VersionRunner, *later: float,
          settle_s: float = 0.05):
    """Outcomes of a first request (x1 0) that holds the version's one thread at ``gate``,
    and of requests for ``later`` sent while it is held; the gate opens once they are in."""
    async def go():
        first = asyncio.ensure_future(r.predict(rows(0.0)))
        await _until(lambda: booster.calls == 1)
        rest = [asyncio.ensure_future(r.predict(rows(x))) for x in later]
        await asyncio.sleep(settle_s)
        gate.set()
        return await asyncio.gather(first, *rest)
    return run(go())


def test_batching_predicts_the_requests_that_queued_behind_a_busy_thread_together():
    gate = threading.Event()
    booster = Booster(1.0, gate=gate)
    r = runner("1", booster, threads=1, batch_max_size=4)
    outcomes = _held(booster, gate, r, *(float(x) for x in range(1, 7)))
    assert all(o.ok for o in outcomes)
    # each request gets its own row's answer
    assert [o.predictions.tolist() for o in outcomes] == [
        pytest.approx([1.0 + x / 10]) for x in range(7)]
    # the first alone (it found the thread free); the six queued in batches of at most four
    assert booster.sizes == [1, 4, 2]
    assert (r.counters.batches, r.counters.batched_requests) == (2, 6)


def test_with_batching_a_lone_request_never_waits_for_a_batch():
    booster = Booster(1.0)
    r = runner("1", booster, threads=1, batch_max_size=32, batch_wait_s=30.0)
    outcome = run(asyncio.wait_for(r.predict(rows(2.0)), timeout=10))
    assert outcome.ok and outcome.predictions.tolist() == pytest.approx([1.2])
    assert booster.sizes == [1] and r.counters.batches == 0


def test_with_batching_a_requests_latency_includes_its_prediction():
    """Alone or in a batch, the latency the log and the rollout's p99 gate read counts the
    prediction itself (a slow version must look slow)."""
    gate = threading.Event()
    booster = Booster(0.0, gate=gate, sleep_s=0.1)
    r = runner("1", booster, threads=1, batch_max_size=8)
    outcomes = _held(booster, gate, r, 1.0, 2.0)
    assert booster.sizes == [1, 2]
    assert all(o.ok and o.latency_ms >= 100 for o in outcomes), outcomes
    alone = run(r.predict(rows(3.0)))
    assert alone.ok and alone.latency_ms >= 100


def test_with_batching_a_full_queue_refuses_at_once_and_the_queued_are_answered():
    gate = threading.Event()
    booster = Booster(0.0, gate=gate)
    r = runner("1", booster, threads=1, queue=2, batch_max_size=8)
    outcomes = _held(booster, gate, r, 1.0, 2.0, 3.0)
    assert [o.status for o in outcomes] == [200, 200, 200, 503]
    assert "retry later" in outcomes[3].error
    assert booster.sizes == [1, 2]


def test_with_batching_a_request_that_timed_out_in_the_queue_is_not_predicted():
    gate = threading.Event()
    booster = Booster(0.0, gate=gate)
    r = runner("1", booster, threads=1, batch_max_size=8, timeout_s=0.2)
    # the held request and the queued one both pass their timeout before the gate opens
    outcomes = _held(booster, gate, r, 1.0, settle_s=0.5)
    assert [o.status for o in outcomes] == [504, 504]
    after = run(r.predict(rows(2.0)))
    assert after.ok and after.predictions.tolist() == pytest.approx([0.2])
    # the queued request was dropped when its caller gave up: never predicted
    assert booster.sizes == [1, 1]


def test_with_batching_a_pool_full_of_shadow_copies_refuses_a_request_at_once():
    """Shadow copies hold every place in the pool (threads + queue): a live request cannot
    start a thread to take it, so it is refused (503) rather than left in the queue."""
    gate = threading.Event()
    r = runner("1", Booster(gate=gate), threads=1, queue=1, batch_max_size=8,
               shadow_pending=2)
    assert [r.mirror(rows(1.0), lambda o: None) for _ in range(2)] == [True, True]
    refused = run(r.predict(rows(2.0)))
    assert refused.status == 503 and not r._queued
    gate.set()
    deadline = time.monotonic() + 5
    while r.in_flight and time.monotonic() < deadline:
        time.sleep(0.01)
    assert run(r.predict(rows(3.0))).ok  # once the copies are done, it answers again


def test_counters_summarise_outcomes():
    c = VersionCounters()
    r = runner("1", Booster(raise_above=1.0), timeout_s=5)
    for x in (0.5, 0.7, 2.0):
        c.record(run(r.predict(rows(x))), pinned=x == 0.7)
    c.record(run(r.predict(pd.DataFrame({"cat": ["a"]}))))
    out = c.to_dict()
    assert (out["requests"], out["answered"], out["errors"], out["invalid"],
            out["pinned"]) == (4, 2, 1, 1, 1)
    assert out["mean_latency_ms"] > 0 and out["last_error"].startswith("ValueError")


# -- the registry's wish --------------------------------------------------------------------


def test_no_tag_means_everything_to_the_alias_version():
    assert wanted_split(state({"champion": "3"}), "champion") == (
        TrafficSplit.single("3"), "alias", None)
    assert wanted_split(state(), "champion") == (None, "none", None)


def test_the_tag_is_the_split():
    split = {"weights": {"1": 0.7, "2": 0.3}, "shadow": "3", "sticky_key": "x-user"}
    wanted, source, problem = wanted_split(state({"champion": "1"}, split), "champion")
    assert wanted == TrafficSplit.from_dict(split) and source == "tag" and problem is None


@pytest.mark.parametrize("tag", ["{not json", '{"weights": {"1": 0.5}}', "[1, 2]"])
def test_an_unreadable_tag_falls_back_to_the_alias_and_says_so(tag):
    wanted, source, problem = wanted_split(state({"champion": "2"}, tag), "champion")
    assert wanted == TrafficSplit.single("2") and source == "alias"
    assert TRAFFIC_TAG in problem and "rollback" in problem


# -- refresh --------------------------------------------------------------------------------


class Registry:
    """Loads versions from a dict; a version missing from it cannot be loaded."""

    def __init__(self, boosters: dict[str, Booster]) -> None:
        self.boosters = boosters
        self.loads: list[str] = []

    def load(self, version: str) -> LoadedModel:
        self.loads.append(version)
        if version not in self.boosters:
            raise FileNotFoundError(f"no artifact for version {version}")
        return model(version, self.boosters[version])


def test_refresh_loads_and_warms_every_named_version_then_swaps():
    registry = Registry({"1": Booster(1), "2": Booster(2), "3": Booster(3)})
    versions = VersionSet(registry.load, alias="champion", limits=Limits())
    assert versions.refresh(state({"champion": "1"}))
    first = versions.routing
    assert first.split == TrafficSplit.single("1") and first.loaded == ["1"]
    assert registry.boosters["1"].calls == 1  # warmed before any request
    split = {"weights": {"1": 0.7, "2": 0.3}, "shadow": "3", "sticky_key": None}
    assert versions.refresh(state({"champion": "1"}, split))
    second = versions.routing
    assert second.loaded == ["1", "2", "3"] and second.source == "tag"
    assert second.runners["1"] is first.runners["1"]  # kept, not reloaded
    assert registry.loads == ["1", "2", "3"]
    assert not versions.refresh(state({"champion": "1"}, split))  # nothing new
    assert first.runners == {"1": first.runners["1"]}  # the old snapshot never changed


def test_a_version_that_cannot_load_keeps_the_previous_routing_and_is_reported():
    registry = Registry({"1": Booster(1), "2": Booster(2)})
    versions = VersionSet(registry.load, alias="champion", limits=Limits())
    versions.refresh(state({"champion": "1"}))
    before = versions.routing
    wish = {"weights": {"1": 0.5, "2": 0.5}, "shadow": "9", "sticky_key": None}
    assert not versions.refresh(state({"champion": "1"}, wish))
    assert versions.routing is before
    assert versions.pending == TrafficSplit.from_dict(wish)
    assert "version 9: FileNotFoundError" in versions.last_error
    assert "Still serving" in versions.last_error
    versions.refresh(state({"champion": "1"}, wish))
    assert registry.loads.count("2") == 1  # staged: loaded once, not on every retry
    registry.boosters["9"] = Booster(9)
    assert versions.refresh(state({"champion": "1"}, wish))
    assert versions.routing.loaded == ["1", "2", "9"] and versions.last_error is None
    assert versions.pending is None


def test_a_version_that_fails_its_warm_up_is_not_applied():
    registry = Registry({"1": Booster(1), "2": Booster(raise_above=-1.0)})
    versions = VersionSet(registry.load, alias="champion", limits=Limits())
    versions.refresh(state({"champion": "1"}))
    assert not versions.refresh(state({"champion": "2"}))
    assert versions.routing.loaded == ["1"] and "ValueError" in versions.last_error


def test_versions_no_longer_named_are_retired_and_counters_stay():
    registry = Registry({"1": Booster(1), "2": Booster(2)})
    versions = VersionSet(registry.load, alias="champion", limits=Limits())
    versions.refresh(state({"champion": "1"}, {"weights": {"1": 0.5, "2": 0.5}}))
    old = versions.routing.runners["2"]
    old.counters.record(run(old.predict(rows(1.0))))
    versions.refresh(state({"champion": "1"}))  # rollback: the tag is gone
    assert versions.routing.loaded == ["1"] and versions.routing.source == "alias"
    assert old._retired and old._closed
    assert versions.counters_dict()["2"]["answered"] == 1


def test_routing_primary_is_the_largest_share():
    r = {v: runner(v) for v in ("1", "2", "3")}
    assert Routing(TrafficSplit({"1": 0.7, "2": 0.3}), r, "tag").primary == "1"
    assert Routing(TrafficSplit({"1": 0.5, "2": 0.5}, shadow="3"), r, "tag").primary == "2"


@pytest.mark.parametrize(
    ("limits", "message"),
    [({"threads": 0}, "threads"), ({"queue": -1}, "queue"), ({"timeout_s": 0}, "timeout_s"),
     ({"batch_wait_s": -1}, "batch_wait_s")],
)
def test_limits_are_checked(limits, message):
    with pytest.raises(ValueError, match=message):
        Limits(**limits)


def test_infinite_features_are_the_callers_fault():
    outcome = run(runner().predict(pd.DataFrame({"x1": [1e39], "cat": ["a"]}, dtype=object)))
    assert outcome.status == 400 and "finite" in outcome.invalid


def test_a_row_with_no_feature_is_refused_naming_it_unless_allowed():
    frame = pd.DataFrame({"x1": [0.5, None, np.nan], "cat": ["a", None, None]}, dtype=object)
    refused = run(runner().predict(frame))
    assert refused.status == 400 and refused.invalid.startswith("row 1 (and 1 more) has none")
    assert "allow_all_missing_rows" in refused.invalid
    one_feature = pd.DataFrame({"x1": [0.5], "cat": [None]}, dtype=object)
    assert run(runner().predict(one_feature)).ok  # some features missing: predicted
    # allowed: the rows reach the model (this stand-in answers NaN for a missing x1, which
    # the runner reports as the model's failure, not as the caller's)
    allowed = run(runner(allow_all_missing_rows=True).predict(frame))
    assert allowed.invalid is None and "non-finite prediction" in allowed.error


def test_a_retired_version_is_freed_though_it_was_frozen_at_start():
    """A replica freezes what it loaded at start, its first version included (gc.freeze in
    ModelServer): the cyclic collector never looks at frozen objects again, so a retired
    version must be freed by reference counting alone, or its booster's native memory would
    stay for the replica's life."""
    import gc
    import weakref

    import xgboost as xgb

    from tests.conftest import wait_until

    data = pd.DataFrame({"x1": np.arange(40.0), "cat": pd.Categorical(["a", "b"] * 20)})
    booster = xgb.train({"objective": "binary:logistic", "max_depth": 2, "nthread": 1},
                        xgb.DMatrix(SPEC.frame(data), (data["x1"] > 20).astype(int),
                                    enable_categorical=True), 3)
    one = VersionRunner(LoadedModel(name="m", version="1", task="classification", spec=SPEC,
                                    booster=booster), Limits(), VersionCounters())
    assert run(one.predict(rows(1.0, 30.0))).predictions.shape == (2,)  # its threads ran
    gone = weakref.ref(booster)
    del booster
    gc.collect()
    gc.freeze()
    try:
        one.retire()
        del one
        wait_until(lambda: gone() is None, timeout=10)
    finally:
        gc.unfreeze()
