"""TrafficSplit: validation, JSON round trip, weighted and sticky choice."""

import json
import math
import os
import random
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serve.traffic import TrafficSplit


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"weights": {}}, "non-empty mapping"),
        ({"weights": [("1", 1.0)]}, "non-empty mapping"),
        ({"weights": {"1": 95, "2": 5}}, "fractions, not percent"),
        ({"weights": {"1": 0.5, "2": 0.4}}, "sum to 1"),
        ({"weights": {"1": 1.2, "2": -0.2}}, "finite number >= 0"),
        ({"weights": {"1": math.nan}}, "finite number >= 0"),
        ({"weights": {"1": math.inf}}, "finite number >= 0"),
        ({"weights": {"1": True}}, "must be a number"),
        ({"weights": {"1": "1.0"}}, "must be a number"),
        ({"weights": {"v1": 1.0}}, "registry version number"),
        ({"weights": {"01": 1.0}}, "registry version number"),
        ({"weights": {3: 1.0}}, "registry version number"),
        ({"weights": {"0": 1.0}}, "registry version number"),
        ({"weights": {"1": 1.0}, "shadow": "1"}, "also takes"),
        ({"weights": {"1": 1.0}, "shadow": "x"}, "shadow must be a registry version"),
        ({"weights": {"1": 1.0}, "sticky_key": ""}, "sticky_key must be"),
        ({"weights": {"1": 1.0}, "sticky_key": "user id"}, "sticky_key must be"),
        ({"weights": {"1": 1.0}, "sticky_key": 7}, "sticky_key must be"),
    ],
)
def test_invalid_splits_are_refused_with_a_reason(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrafficSplit(**kwargs)


def test_valid_split_keeps_weights_read_only_and_knows_its_versions():
    split = TrafficSplit({"12": 0.0, "3": 0.75, "10": 0.25}, shadow="12", sticky_key="x-user")
    assert split.versions == ("3", "10")  # numeric order, zero weight left out
    assert split.deployed == ("3", "10", "12")
    standby = TrafficSplit({"3": 1.0, "4": 0.0})
    assert standby.versions == ("3",) and standby.deployed == ("3", "4")
    assert {standby.choose(None, r / 10) for r in range(10)} == {"3"}
    assert split.weight("10") == 0.25 and split.weight("99") == 0.0
    with pytest.raises(TypeError):
        split.weights["3"] = 1.0  # type: ignore[index]
    # a zero-weight shadow is fine; weights summing to 1 within rounding too
    TrafficSplit({"1": 1 / 3, "2": 1 / 3, "3": 1 / 3})


def test_json_round_trip_and_equality():
    split = TrafficSplit({"3": 0.95, "4": 0.05}, shadow="5", sticky_key="x-user-id")
    again = TrafficSplit.from_dict(json.loads(json.dumps(split.to_dict())))
    assert again == split and hash(again) == hash(split)
    assert again.to_dict() == {"weights": {"3": 0.95, "4": 0.05}, "shadow": "5",
                               "sticky_key": "x-user-id"}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ([1, 2], "must be an object"),
        ({"weights": {"1": 1.0}, "shadows": "2"}, "unknown key"),
        ({"shadow": "2"}, "needs 'weights'"),
        ({"weights": {"1": 0.5}}, "sum to 1"),
    ],
)
def test_from_dict_errors_say_what_is_wrong(raw, message):
    with pytest.raises(ValueError, match=message):
        TrafficSplit.from_dict(raw)


def test_choose_is_deterministic_and_never_picks_shadow_or_zero_weight():
    split = TrafficSplit({"1": 0.0, "2": 0.5, "3": 0.5}, shadow="4")
    rng = random.Random(0)
    draws = [rng.random() for _ in range(2000)]
    chosen = [split.choose(None, r) for r in draws]
    assert chosen == [split.choose(None, r) for r in draws]
    assert set(chosen) == {"2", "3"}
    keys = [f"user-{i}" for i in range(2000)]
    sticky = [split.choose(k, 0.0) for k in keys]
    assert set(sticky) == {"2", "3"}
    # with a key, rand does not matter: one caller keeps one version
    assert all(split.choose(k, r) == s for k, r, s in zip(keys, draws, sticky, strict=True))


@pytest.mark.parametrize("rand", [-0.1, 1.0, 1.5, math.nan, None, True])
def test_choose_refuses_rand_outside_unit_interval(rand):
    with pytest.raises(ValueError, match=r"rand must be a number in \[0, 1\)"):
        TrafficSplit({"1": 1.0}).choose(None, rand)


def _within(count: int, n: int, p: float, sigmas: float = 4.0) -> bool:
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


def test_weights_are_respected_with_seeded_random_draws():
    weights = {"1": 0.7, "2": 0.2, "3": 0.1}
    split = TrafficSplit(weights)
    rng = random.Random(42)
    n = 50_000
    chosen = [split.choose(None, rng.random()) for _ in range(n)]
    for version, p in weights.items():
        assert _within(chosen.count(version), n, p), (version, chosen.count(version))


def test_weights_are_respected_across_sticky_keys():
    weights = {"7": 0.95, "8": 0.05}
    split = TrafficSplit(weights, sticky_key="x-user-id")
    n = 40_000
    chosen = [split.choose(f"caller-{i}", 0.0) for i in range(n)]
    for version, p in weights.items():
        assert _within(chosen.count(version), n, p), (version, chosen.count(version))


def test_moving_the_canary_up_keeps_every_caller_on_it_and_adds_the_right_share():
    keys = [f"caller-{i}" for i in range(20_000)]
    on_canary = []
    for percent in (5, 25, 50, 100):
        share = percent / 100
        split = TrafficSplit({"3": 1 - share, "4": share}, sticky_key="x-user-id")
        now = {k for k in keys if split.choose(k, 0.0) == "4"}
        if share < 1:
            assert _within(len(now), len(keys), share), (percent, len(now))
        if on_canary:
            assert on_canary[-1] <= now  # nobody who was on the canary leaves it
        on_canary.append(now)
    assert on_canary[-1] == set(keys)


@settings(max_examples=300, deadline=None)
@given(
    key=st.text(min_size=0, max_size=40),
    w1=st.floats(min_value=0.0, max_value=1.0),
    w2=st.floats(min_value=0.0, max_value=1.0),
)
def test_sticky_assignment_is_monotone_in_the_canary_weight(key, w1, w2):
    low, high = sorted((w1, w2))
    before = TrafficSplit({"3": 1 - low, "4": low}, sticky_key="k")
    after = TrafficSplit({"3": 1 - high, "4": high}, sticky_key="k")
    if before.choose(key, 0.5) == "4":
        assert after.choose(key, 0.5) == "4"
    if after.choose(key, 0.5) == "3":  # and the other way: the champion's callers shrink only
        assert before.choose(key, 0.5) == "3"


@settings(max_examples=100, deadline=None)
@given(key=st.text(max_size=20), w=st.floats(min_value=0.01, max_value=0.99))
def test_sticky_choice_does_not_depend_on_the_order_of_the_weights(key, w):
    a = TrafficSplit({"3": 1 - w, "4": w})
    b = TrafficSplit({"4": w, "3": 1 - w})
    assert a.choose(key, 0.0) == b.choose(key, 0.0)


def test_sticky_choice_is_the_same_in_another_process_with_another_hash_seed():
    # Python's hash() of a str changes per process; the router's replicas must agree.
    split = TrafficSplit({"3": 0.5, "4": 0.5}, sticky_key="k")
    keys = [f"user-{i}" for i in range(200)]
    here = [split.choose(k, 0.0) for k in keys]
    code = (
        "import json, sys\n"
        "from serve.traffic import TrafficSplit\n"
        "s = TrafficSplit({'3': 0.5, '4': 0.5}, sticky_key='k')\n"
        "print(json.dumps([s.choose(k, 0.0) for k in json.loads(sys.argv[1])]))\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code, json.dumps(keys)], env=env,
                         capture_output=True, text=True, check=True, timeout=60)
    assert json.loads(out.stdout) == here
    assert 60 < here.count("4") < 140  # and the keys really are spread
