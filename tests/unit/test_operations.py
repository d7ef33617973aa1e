"""Moves on what is served (retrain/operations.py) and the rollout driver's bookkeeping, over
the in-memory registry: every move is written and recorded together, and a move made outside
is recorded once when seen. Real MLflow is in tests/integration (test_rollout_e2e.py)."""

from __future__ import annotations

import pytest

from retrain.config import config_from_dict
from retrain.errors import ModelNotFoundError
from retrain.ledger import EventKind, Ledger
from retrain.operations import move_champion, set_traffic
from retrain.registry import CHAMPION, InMemoryRegistry, Registry
from retrain.traffic_control import RolloutDriver, TrafficStore
from serve.features import FeatureSpec
from serve.loader import TRAFFIC_TAG, LoadedModel
from serve.traffic import TrafficSplit
from tests.synthetic import config_dict

SPEC = FeatureSpec(names=("x",), kinds=("numeric",))


def _registry(versions: int = 3) -> InMemoryRegistry:
    registry = InMemoryRegistry("m")
    for _ in range(versions):
        registry.add_version(LoadedModel("m", "0", "classification", SPEC, booster=None))
    return registry


def _moves(ledger: Ledger) -> list[tuple[str, str | None, str | None]]:
    return [(e.kind.value, e.version, e.previous_version) for e in ledger.events(model_name="m")]


def test_the_in_memory_registry_is_a_registry():
    registry: Registry = _registry()
    assert registry.alias_version() is None
    with pytest.raises(ModelNotFoundError, match="no version 9"):
        registry.set_alias(CHAMPION, "9")


def test_a_champion_move_is_written_and_recorded_forward_and_back(tmp_path):
    registry, ledger = _registry(), Ledger(tmp_path / "ledger.db")
    assert move_champion(registry, ledger, "m", "1", reasons=("first",)) is None
    assert move_champion(registry, ledger, "m", "3", reasons=("better",)) == "1"
    assert move_champion(registry, ledger, "m", "2", reasons=("operator",)) == "3"
    assert registry.alias_version(CHAMPION) == "2"
    assert _moves(ledger) == [("alias_move", "1", None), ("alias_move", "3", "1"),
                              ("rollback", "2", "3")]


def test_a_move_to_an_unknown_version_changes_and_records_nothing(tmp_path):
    registry, ledger = _registry(), Ledger(tmp_path / "ledger.db")
    move_champion(registry, ledger, "m", "1", reasons=("first",))
    with pytest.raises(ModelNotFoundError):
        move_champion(registry, ledger, "m", "7", reasons=("typo",))
    assert registry.alias_version(CHAMPION) == "1"
    assert len(_moves(ledger)) == 1


def test_a_split_is_written_and_recorded_and_its_removal_records_what_stopped(tmp_path):
    registry, ledger = _registry(), Ledger(tmp_path / "ledger.db")
    store = TrafficStore(registry)
    set_traffic(store, ledger, "m", TrafficSplit({"1": 0.9, "2": 0.1}), reasons=("canary",))
    assert store.read() == TrafficSplit({"1": 0.9, "2": 0.1})
    set_traffic(store, ledger, "m", None, reasons=("done",))
    set_traffic(store, ledger, "m", None, reasons=("nothing to remove",))
    assert TRAFFIC_TAG not in registry.model_tags()
    steps = [e.traffic for e in ledger.events(model_name="m") if e.kind is EventKind.TRAFFIC_STEP]
    assert steps == [{"1": 0.9, "2": 0.1}, {"1": 0.9, "2": 0.1}]


def test_a_split_naming_an_unregistered_version_is_refused_before_anything_changes(tmp_path):
    registry, ledger = _registry(), Ledger(tmp_path / "ledger.db")
    with pytest.raises(ModelNotFoundError):
        set_traffic(TrafficStore(registry), ledger, "m", TrafficSplit({"1": 0.5, "8": 0.5}),
                    reasons=("typo",))
    assert registry.model_tags() == {} and ledger.events(model_name="m") == []


def _driver(tmp_path, registry: InMemoryRegistry) -> RolloutDriver:
    raw = config_dict(tmp_path / "data", tmp_path / "work")
    raw["mlflow"] = {"model_name": "m"}
    return RolloutDriver(config_from_dict(raw), registry=registry, url="http://127.0.0.1:9",
                         token="t", clock=lambda: 1_800_000_000.0)


def test_the_driver_records_an_outside_alias_move_once(tmp_path):
    registry = _registry()
    driver = _driver(tmp_path, registry)
    registry.set_alias(CHAMPION, "2")  # e.g. POST /admin/promote, straight to the registry
    assert "v2" in (driver.record_outside_moves() or "")
    assert driver.record_outside_moves() is None  # known now
    [event] = driver.ledger.events(model_name="m")
    assert (event.kind, event.version, event.details) == (EventKind.ALIAS_MOVE, "2",
                                                          {"observed": True})


def test_reconcile_removes_a_split_left_without_a_rollout_and_records_it(tmp_path):
    registry = _registry()
    driver = _driver(tmp_path, registry)
    registry.set_model_tag(TRAFFIC_TAG, '{"weights": {"1": 0.5, "3": 0.5}}')
    assert "removed a stale split" in driver.reconcile()
    assert driver.store.read() is None
    assert driver.reconcile() == "in agreement: no rollout, no split"
    [event] = driver.ledger.events(model_name="m")
    assert event.kind is EventKind.TRAFFIC_STEP and event.details["reconciled"] is True


# -- moves made through the admin endpoints -------------------------------------------------------


def test_admin_moves_noted_by_the_app_reach_the_ledger_at_their_own_time_once(tmp_path):
    from retrain.operations import record_admin_moves
    from serve.inference_log import consume_move, note_move, pending_moves

    log, ledger = tmp_path / "log", Ledger(tmp_path / "ledger.db")
    by = {"made_by": "http 10.0.0.7"}
    note_move(log, "traffic", request_id="r1", weights={"1": 0.9, "2": 0.1, "3": 0.0}, **by)
    note_move(log, "rollback", request_id="r2", version="1", **by)
    note_move(log, "promote", request_id="r3", version="3", previous="1", alias=CHAMPION, **by)
    note_move(log, "promote", request_id="r4", version="2", previous="3", alias=CHAMPION, **by)
    moves = pending_moves(log)
    assert [m.request_id for m in moves] == ["r1", "r2", "r3", "r4"]  # oldest first

    events = record_admin_moves(ledger, "m", moves)
    assert [(e.kind.value, e.traffic, e.version, e.previous_version) for e in events] == [
        ("traffic_step", {"1": 0.9, "2": 0.1}, None, None),
        ("traffic_step", {"1": 1.0}, None, None),
        ("alias_move", {}, "3", "1"),
        ("rollback", {}, "2", "3")]
    assert [e.at for e in events] == [m.made_at for m in moves]
    assert events[3].details["request_id"] == "r4" and "10.0.0.7" in events[3].reasons[0]
    assert ledger.served_at("m", moves[2].made_at).version == "3"
    # a controller that died before consuming the notes copies nothing twice
    assert record_admin_moves(ledger, "m", pending_moves(log)) == []
    assert all(consume_move(log, m.id) for m in moves) and pending_moves(log) == []
    assert not consume_move(log, moves[0].id)  # consumed once


def test_a_note_no_move_could_have_made_is_skipped_not_recorded(tmp_path):
    import json

    from serve.inference_log import note_move, pending_moves

    log = tmp_path / "log"
    note_move(log, "promote", made_by="http x", request_id="ok", version="2")
    (log / "moves" / "0-bad-weights.json").write_text(json.dumps(
        {"id": "0-bad-weights", "action": "traffic", "made_at": 1.0, "made_by": "x",
         "request_id": "r", "weights": {"1": 0.5}}))
    (log / "moves" / "0-not-json.json").write_text("{")
    (log / "moves" / "0-no-version.json").write_text(json.dumps(
        {"id": "0-no-version", "action": "rollback", "made_at": 1.0, "made_by": "x",
         "request_id": "r"}))
    assert [m.request_id for m in pending_moves(log)] == ["ok"]
    with pytest.raises(ValueError, match="traffic move"):
        note_move(log, "traffic", made_by="x", request_id="r")


def test_a_move_that_does_not_fit_the_rollouts_state_is_a_state_error(tmp_path):
    from retrain.errors import StateError

    registry = _registry()
    driver = _driver(tmp_path, registry)
    with pytest.raises(StateError, match="no champion to roll out against"):
        driver.start("2")
    with pytest.raises(StateError, match="no rollout in progress"):
        driver.step()
    assert StateError.exit_code == 8
