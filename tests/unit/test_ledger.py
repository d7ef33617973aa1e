import json
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from retrain.decide import Verdict
from retrain.errors import RetrainError
from retrain.ledger import VERDICTS, EventKind, Ledger, LedgerEvent, ServedAt, format_events

MODEL = "churn"


def _decision(at: float, version: str, verdict: str, *reasons: str, **kw) -> LedgerEvent:
    return LedgerEvent(kind=EventKind.DECISION, model_name=kw.pop("model_name", MODEL), at=at,
                       version=version, verdict=verdict, reasons=reasons, **kw)


def _move(at: float, version: str, previous: str | None, *reasons: str,
          kind: EventKind = EventKind.ALIAS_MOVE, **kw) -> LedgerEvent:
    return LedgerEvent(kind=kind, model_name=kw.pop("model_name", MODEL), at=at,
                       version=version, previous_version=previous, alias="champion",
                       reasons=reasons, **kw)


def _story(ledger: Ledger) -> None:
    """Promote v1 at 100, keep the champion at 200, promote v3 at 300, roll back to v1 at 400."""
    ledger.append(_decision(100, "1", "promote", "no champion yet", run_id="r1"))
    ledger.append(_move(100, "1", None, "promoted by run r1"))
    ledger.append(_decision(200, "2", "keep", "improvement +0.0010 <= required +0.0100"))
    ledger.append(_decision(300, "3", "promote", "improvement +0.0300 > required +0.0100"))
    ledger.append(_move(300, "3", "1", "promoted by run r3"))
    ledger.append(_move(400, "1", "3", "error rate 7% > 5% on v3", kind=EventKind.ROLLBACK))


def _full_event() -> LedgerEvent:
    return LedgerEvent(
        kind=EventKind.TRAFFIC_STEP,
        model_name=MODEL,
        at=1_700_000_000.25,
        version="3",
        previous_version="1",
        alias="champion",
        reasons=("canary step 2 of 4", "p99 latency ok"),
        traffic={"1": 0.75, "3": 0.25},
        data_snapshot={"partitions": [{"value": "4", "rows": 100, "sha256": "ab" * 32}]},
        search="/work/.retrain/search/churn-7",
        run_id="0123abcd",
        details={"step": 2, "nested": {"ok": True, "none": None}},
    )


def test_append_assigns_increasing_seq_and_round_trips_every_field(tmp_path: Path):
    ledger = Ledger(tmp_path / "sub" / "ledger.db")  # parent folders are created
    first = ledger.append(_full_event())
    second = ledger.append(_decision(5, "2", "reject", "auc undefined"))
    assert first.seq is not None and second.seq is not None and second.seq > first.seq
    assert first == LedgerEvent(**{**_full_event().to_dict(), "seq": first.seq})
    stored = ledger.events()
    assert stored == sorted([first, second], key=lambda e: (e.at, e.seq))
    assert stored[1] == first and stored[1].to_dict() == first.to_dict()
    assert isinstance(stored[1].kind, EventKind) and isinstance(stored[1].reasons, tuple)
    # to_dict is JSON-safe and from_dict inverts it
    assert LedgerEvent.from_dict(json.loads(json.dumps(first.to_dict()))) == first


def test_append_refuses_an_event_that_is_already_stored(tmp_path: Path):
    ledger = Ledger(tmp_path / "ledger.db")
    stored = ledger.append(_decision(1, "1", "promote"))
    with pytest.raises(ValueError, match=r"already stored \(seq=1\)"):
        ledger.append(stored)


def test_event_copies_its_inputs_and_accepts_the_decide_verdict_enum():
    details = {"k": [1, 2]}
    event = _decision(1, "1", Verdict.PROMOTE, details=details)
    details["k"].append(3)
    assert event.details == {"k": [1, 2]}
    assert event.verdict == "promote" and type(event.verdict) is str
    assert set(VERDICTS) == {v.value for v in Verdict}
    assert LedgerEvent(kind="decision", model_name=MODEL, verdict="keep").kind is (
        EventKind.DECISION
    )


def test_update_delete_and_replace_are_refused_by_the_database(tmp_path: Path):
    path = tmp_path / "ledger.db"
    ledger = Ledger(path)
    _story(ledger)
    before = ledger.events()
    conn = sqlite3.connect(path)
    try:
        with pytest.raises(sqlite3.IntegrityError, match=r"append-only.*updated"):
            conn.execute("UPDATE events SET version = '9' WHERE seq = 1")
        with pytest.raises(sqlite3.IntegrityError, match=r"append-only.*deleted"):
            conn.execute("DELETE FROM events")
        with pytest.raises(sqlite3.IntegrityError, match=r"append-only.*replaced"):
            conn.execute("INSERT OR REPLACE INTO events (seq, at, kind, model_name) "
                         "VALUES (1, 0, 'decision', 'x')")
        with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
            conn.execute("INSERT INTO events (at, kind, model_name) VALUES (0, 'oops', 'x')")
        conn.commit()
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()
    assert Ledger(path).events() == before


@pytest.mark.parametrize(
    ("at", "expected", "decided_at", "first_reason"),
    [
        (50, None, None, None),
        (100, "1", 100, "no champion yet"),
        (150, "1", 100, "no champion yet"),
        (250, "1", 100, "no champion yet"),  # the keep at 200 did not move the alias
        (350, "3", 300, "improvement +0.0300 > required +0.0100"),
        (450, "1", 100, "no champion yet"),  # rolled back: v1's original promotion explains it
    ],
)
def test_served_at_answers_which_version_and_why(tmp_path: Path, at, expected, decided_at,
                                                 first_reason):
    path = tmp_path / "ledger.db"
    _story(Ledger(path))
    # A fresh object on the same file stands for a restarted process.
    for ledger in (Ledger(path), Ledger(str(path))):
        served = ledger.served_at(MODEL, at)
        if expected is None:
            assert served is None
            continue
        assert isinstance(served, ServedAt)
        assert served.version == expected and served.because.version == expected
        assert served.decision is not None
        assert served.decision.at == decided_at and served.decision.verdict == "promote"
        assert served.decision.reasons[0] == first_reason


def test_served_at_after_a_rollback_points_at_the_rollback(tmp_path: Path):
    ledger = Ledger(tmp_path / "ledger.db")
    _story(ledger)
    served = ledger.served_at(MODEL, 450)
    assert served is not None
    assert served.since == 400 and served.because.kind is EventKind.ROLLBACK
    assert served.because.previous_version == "3"
    assert served.because.reasons == ("error rate 7% > 5% on v3",)
    assert ledger.served_at(MODEL, 450, alias="challenger") is None
    assert ledger.served_at("other-model", 450) is None


def test_history_lists_each_period_of_the_alias(tmp_path: Path):
    path = tmp_path / "ledger.db"
    _story(Ledger(path))
    history = Ledger(path).history(MODEL)
    assert [(h.version, h.since, h.because.kind) for h in history] == [
        ("1", 100, EventKind.ALIAS_MOVE),
        ("3", 300, EventKind.ALIAS_MOVE),
        ("1", 400, EventKind.ROLLBACK),
    ]
    assert [h.decision.at if h.decision else None for h in history] == [100, 300, 100]
    assert history[2] == Ledger(path).served_at(MODEL, 400)
    assert json.loads(json.dumps(history[1].to_dict()))["decision"]["verdict"] == "promote"


def test_the_latest_decision_up_to_the_move_explains_it(tmp_path: Path):
    ledger = Ledger(tmp_path / "ledger.db")
    ledger.append(_decision(10, "1", "keep", "first look: not better enough"))
    ledger.append(_decision(20, "1", "promote", "second look: better"))
    ledger.append(_move(30, "1", None))
    ledger.append(_decision(40, "1", "reject", "after the move: does not explain it"))
    served = ledger.served_at(MODEL, 1000)
    assert served is not None and served.decision is not None
    assert served.decision.reasons == ("second look: better",)


def test_a_move_without_any_decision_has_none(tmp_path: Path):
    ledger = Ledger(tmp_path / "ledger.db")
    ledger.append(_move(30, "7", None, "set by hand"))
    served = ledger.served_at(MODEL, 30)
    assert served is not None and served.version == "7" and served.decision is None


def test_events_filter_by_kinds_since_until_and_limit(tmp_path: Path):
    ledger = Ledger(tmp_path / "ledger.db")
    _story(ledger)
    ledger.append(LedgerEvent(kind=EventKind.TRAFFIC_STEP, model_name=MODEL, at=350,
                              traffic={"1": 0.5, "3": 0.5}))

    def ats(**kw) -> list[float]:
        return [e.at for e in ledger.events(model_name=MODEL, **kw)]

    assert ats() == [100, 100, 200, 300, 300, 350, 400]
    assert ats(kinds=[EventKind.DECISION]) == [100, 200, 300]
    assert ats(kinds="rollback") == [400]
    assert ats(kinds=["alias_move", EventKind.ROLLBACK]) == [100, 300, 400]
    assert ats(kinds=[]) == []
    assert ats(since=200, until=350) == [200, 300, 300, 350]  # both bounds inclusive
    assert ats(limit=2) == [350, 400]  # the newest two, oldest first
    assert ats(limit=0) == []
    assert ats(kinds=["decision"], until=250, limit=1) == [200]
    # equal times are ordered by seq: the decision was appended before the move
    assert [e.kind for e in ledger.events(since=100, until=100)] == [
        EventKind.DECISION, EventKind.ALIAS_MOVE,
    ]
    with pytest.raises(ValueError, match="kinds must hold values of"):
        ledger.events(kinds=["promotion"])
    with pytest.raises(ValueError, match="limit must be an int >= 0"):
        ledger.events(limit=-1)
    with pytest.raises(ValueError, match="since must be unix seconds"):
        ledger.events(since="yesterday")  # type: ignore[arg-type]


def test_two_models_do_not_mix(tmp_path: Path):
    ledger = Ledger(tmp_path / "ledger.db")
    _story(ledger)
    ledger.append(_decision(150, "1", "promote", "fraud first", model_name="fraud"))
    ledger.append(_move(150, "1", None, model_name="fraud"))
    ledger.append(_move(350, "2", "1", model_name="fraud"))
    assert {e.model_name for e in ledger.events(model_name="fraud")} == {"fraud"}
    assert len(ledger.events(model_name=MODEL)) == 6
    assert len(ledger.events()) == 9
    assert [h.version for h in ledger.history("fraud")] == ["1", "2"]
    churn = ledger.served_at(MODEL, 360)
    fraud = ledger.served_at("fraud", 360)
    assert churn is not None and churn.version == "3"
    assert fraud is not None and fraud.version == "2" and fraud.decision is None
    assert ledger.served_at("fraud", 100) is None


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        (dict(kind="promotion"), r"kind must be one of .*but got kind='promotion'"),
        (dict(model_name=""), r"model_name must be a non-empty string, but got model_name=''"),
        (dict(at=float("nan")), r"at must be finite unix seconds, but got at=nan"),
        (dict(at=True), r"at must be finite unix seconds"),
        (dict(version=3), r"version must be a non-empty string.*str\(version\).*version=3"),
        (dict(verdict="maybe"), r"verdict must be one of \['promote', 'keep', 'reject'\]"),
        (dict(verdict=None), r"a decision event needs a verdict.*verdict=None"),
        (dict(reasons="too good"), r"reasons must be a tuple of strings.*'too good'"),
        (dict(reasons=("ok", 1)), r"reasons must hold strings only"),
        (dict(traffic={"1": 0.5, "2": 0.4}), r"traffic weights must sum to 1.*total=0.9"),
        (dict(traffic={"1": 1.5, "2": -0.5}), r"weights must be finite numbers >= 0.*'2'"),
        (dict(traffic={1: 1.0}), r"traffic keys must be non-empty version strings.*version=1"),
        (dict(details={"f": object()}), r"details must be JSON-serialisable"),
        (dict(data_snapshot=[1]), r"data_snapshot must be a dict, but got data_snapshot=\[1\]"),
        (dict(seq=0), r"seq is assigned by the ledger.*seq=0"),
    ],
)
def test_bad_events_fail_on_construction_with_clear_messages(kw, message):
    base = dict(kind=EventKind.DECISION, model_name=MODEL, at=1.0, version="1",
                verdict="promote")
    with pytest.raises(ValueError, match=message):
        LedgerEvent(**{**base, **kw})


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        (dict(kind=EventKind.ALIAS_MOVE, version="1"), r"alias_move event needs the alias.*"
                                                       r"alias=None, version='1'"),
        (dict(kind=EventKind.ROLLBACK, alias="champion"), r"rollback event needs the alias.*"
                                                          r"version=None"),
        (dict(kind=EventKind.ALIAS_MOVE, alias="champion", version="1", verdict="promote"),
         r"only decision events carry a verdict"),
        (dict(kind=EventKind.TRAFFIC_STEP), r"traffic_step event needs traffic"),
    ],
)
def test_each_kind_requires_its_fields(kw, message):
    with pytest.raises(ValueError, match=message):
        LedgerEvent(model_name=MODEL, **kw)


def test_traffic_tolerates_rounding_and_from_dict_rejects_unknown_keys():
    thirds = LedgerEvent(kind=EventKind.TRAFFIC_STEP, model_name=MODEL,
                         traffic={"1": 1 / 3, "2": 1 / 3, "3": 1 / 3})
    assert sum(thirds.traffic.values()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"unknown keys \['when'\]"):
        LedgerEvent.from_dict({**thirds.to_dict(), "when": 1})
    with pytest.raises(ValueError, match=r"needs keys \['model_name'\]"):
        LedgerEvent.from_dict({"kind": "decision", "verdict": "keep"})


def test_two_ledgers_on_one_file_append_in_one_consistent_order(tmp_path: Path):
    path = tmp_path / "ledger.db"
    a, b = Ledger(path), Ledger(path)
    stored = []
    for i in range(10):
        writer = a if i % 2 == 0 else b
        stored.append(writer.append(_decision(7, str(i), "keep", f"from {writer is a}")))
    seqs = [e.seq for e in stored]
    assert seqs == sorted(seqs) and len(set(seqs)) == 10
    # same timestamp everywhere: the order is the append order, seen alike by both objects
    assert a.events() == b.events() == stored


def test_concurrent_appends_lose_nothing(tmp_path: Path):
    path = tmp_path / "ledger.db"
    Ledger(path)

    def write(worker: int) -> list[int | None]:
        ledger = Ledger(path)
        return [ledger.append(_decision(worker * 100 + i, f"{worker}.{i}", "keep")).seq
                for i in range(20)]

    with ThreadPoolExecutor(max_workers=4) as pool:
        seqs = [s for batch in pool.map(write, range(4)) for s in batch]
    assert sorted(seqs) == list(range(1, 81))
    assert len(Ledger(path).events()) == 80


def test_a_file_that_is_not_a_ledger_is_refused(tmp_path: Path):
    path = tmp_path / "notes.db"
    path.write_text("this is not sqlite, just text that is long enough to have a header" * 10)
    with pytest.raises(RetrainError, match=r"cannot open the ledger at .*notes.db"):
        Ledger(path)


def test_a_ledger_from_a_newer_schema_is_refused(tmp_path: Path):
    path = tmp_path / "ledger.db"
    Ledger(path)
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA user_version = 99")
    finally:
        conn.close()
    with pytest.raises(RetrainError, match="schema version 99, newer than"):
        Ledger(path)


def test_format_events_prints_one_aligned_line_per_event(tmp_path: Path):
    ledger = Ledger(tmp_path / "ledger.db")
    _story(ledger)
    ledger.append(LedgerEvent(kind=EventKind.TRAFFIC_STEP, model_name=MODEL, at=350,
                              traffic={"1": 0.9, "3": 0.1}, reasons=("canary",)))
    text = format_events(ledger.events())
    lines = text.splitlines()
    assert len(lines) == 1 + 7
    assert lines[0].split() == ["seq", "time", "(UTC)", "kind", "version", "previous",
                                "verdict/traffic", "reason"]
    assert lines[1].split()[:6] == ["1", "1970-01-01T00:01:40Z", "decision", "1", "-",
                                    "promote"]
    assert lines[1].endswith("no champion yet")
    assert "alias_move:champion" in lines[2]
    assert "1=0.90 3=0.10" in lines[6] and lines[6].endswith("canary")
    assert lines[7].split()[2:5] == ["rollback:champion", "1", "3"]
    # aligned: the reason column starts at the same offset on every line
    assert len({line.index(reason) for line, reason in
                zip(lines[1:3], ["no champion yet", "promoted by run r1"], strict=True)}) == 1
    assert format_events([]) == "(no events)"


def test_a_version_1_ledger_is_migrated_in_place_keeping_every_row(tmp_path):
    from retrain.ledger import store as module

    path = tmp_path / "old.db"
    v1_kinds = "'decision', 'alias_move', 'traffic_step', 'rollback'"
    old_schema = module._SCHEMA.replace(module._KIND_VALUES, v1_kinds)
    assert old_schema != module._SCHEMA
    with sqlite3.connect(path) as conn:
        conn.executescript(f"{old_schema}PRAGMA user_version=1;")
        conn.execute("INSERT INTO events (seq, at, kind, model_name, version, alias) "
                     "VALUES (7, 1.0, 'alias_move', 'm', '1', 'champion')")
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute("INSERT INTO events (at, kind, model_name) VALUES (2.0, 'trigger', 'm')")

    ledger = Ledger(path)
    stored = ledger.append(LedgerEvent(kind=EventKind.TRIGGER, model_name="m", at=2.0,
                                       details={"fired": None}))
    assert stored.seq == 8  # seqs continue after the migrated rows, never reused
    events = ledger.events(model_name="m")
    assert [(e.seq, e.kind) for e in events] == [(7, EventKind.ALIAS_MOVE),
                                                 (8, EventKind.TRIGGER)]
    assert ledger.served_at("m", 1.5).version == "1"
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == module.SCHEMA_VERSION
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("DELETE FROM events WHERE seq = 7")
