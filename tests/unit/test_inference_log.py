"""The inference log without Ray: buffering, flushing, layout, bounds, readers, requests."""

from __future__ import annotations

import os
import re
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from serve import inference_log as il
from serve.features import FeatureSpec
from serve.inference_log import (
    FeedbackItem,
    InferenceLog,
    InvalidFeedback,
    LogTail,
    consume_request,
    parse_feedback,
    pending_requests,
    read_feedback,
    read_predictions,
    request_retrain,
)
from serve.inference_log.reader import MTIME_SLACK_S
from tests.conftest import wait_until

SPEC = FeatureSpec(names=("x1", "x2", "cat"), kinds=("numeric", "numeric", "categorical"),
                   categories={"cat": ("a", "b", "c")})
T0 = datetime(2024, 3, 5, 7, 59, 59, 500_000, tzinfo=timezone.utc).timestamp()


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def rows(n: int, start: int = 0) -> pd.DataFrame:
    return pd.DataFrame({"x1": np.arange(start, start + n, dtype=float), "x2": 1.0, "cat": "b"})


def log_rows(log: InferenceLog, n: int, request_id: str = "r", start: int = 0,
             version: str = "1") -> bool:
    return log.log_predictions(
        request_id=request_id, model_version=version, spec=SPEC, frame=rows(n, start),
        predictions=np.linspace(0, 1, n),
    )


def parquet_files(root: Path, kind: str = "predictions") -> list[Path]:
    return sorted((root / kind).rglob("*.parquet")) if (root / kind).exists() else []


# -- flushing -------------------------------------------------------------------------------


def test_flushes_when_flush_rows_are_buffered(tmp_path):
    log = InferenceLog(tmp_path, flush_rows=10, flush_interval_s=3600)
    try:
        assert log_rows(log, 9)
        time.sleep(0.3)
        assert parquet_files(tmp_path) == []  # below the size, far below the age
        assert log_rows(log, 1, request_id="r2")
        (file,) = wait_until(lambda: parquet_files(tmp_path), timeout=5)
        assert pq.read_table(file).num_rows == 10
        assert log.stats().predictions_written == 10 and log.stats().rows_buffered == 0
    finally:
        log.close()


def test_flushes_when_the_oldest_row_is_flush_interval_old(tmp_path):
    log = InferenceLog(tmp_path, flush_rows=1000, flush_interval_s=0.5)
    try:
        started = time.monotonic()
        log_rows(log, 1)
        assert log.stats().files_written == 0
        wait_until(lambda: parquet_files(tmp_path), timeout=5, interval=0.02)
        waited = time.monotonic() - started
        assert 0.45 <= waited < 4
        assert log.stats().predictions_written == 1
    finally:
        log.close()


def test_close_writes_what_is_left_and_later_rows_are_dropped(tmp_path):
    log = InferenceLog(tmp_path, flush_rows=1000, flush_interval_s=3600)
    log_rows(log, 3)
    log.close()
    assert sum(pq.read_table(f).num_rows for f in parquet_files(tmp_path)) == 3
    assert not log_rows(log, 2)
    assert log.stats().rows_dropped == 2
    log.close()  # a second close is harmless


# -- layout and atomic files ----------------------------------------------------------------


def test_files_land_in_hive_partitions_of_their_rows_hour(tmp_path):
    clock = Clock()
    log = InferenceLog(tmp_path, writer_id="host-1-abc", clock=clock, start=False)
    log_rows(log, 2, request_id="before")
    clock.now = T0 + 0.7  # 08:00:00.2, the next hour
    log_rows(log, 1, request_id="after")
    log.flush()
    files = [p.relative_to(tmp_path).as_posix() for p in parquet_files(tmp_path)]
    assert files == [
        "predictions/date=2024-03-05/hour=07/host-1-abc-00000001.parquet",
        "predictions/date=2024-03-05/hour=08/host-1-abc-00000002.parquet",
    ]
    assert pq.read_table(tmp_path / files[1]).column("request_id").to_pylist() == ["after"]


def test_writer_ids_differ_between_logs():
    ids = {il.new_writer_id() for _ in range(50)}
    assert len(ids) == 50 and all(re.fullmatch(r"[A-Za-z0-9_.-]+-\d+-[0-9a-f]{6}", i) for i in ids)


def test_a_failed_write_leaves_no_file_and_keeps_the_rows_for_a_retry(tmp_path, monkeypatch):
    log = InferenceLog(tmp_path, start=False)
    log_rows(log, 4)
    real = pq.write_table

    def half_then_fail(table, where, **kwargs):
        real(table.slice(0, 1), where, **kwargs)  # something reached the disk ...
        raise OSError("disk full")  # ... then the store failed

    monkeypatch.setattr(pq, "write_table", half_then_fail)
    log.flush()
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []  # no final, no temp
    stats = log.stats()
    assert "disk full" in stats.last_error and stats.rows_buffered == 4 and stats.rows_dropped == 0
    monkeypatch.setattr(pq, "write_table", real)
    log.flush()
    assert len(read_predictions(tmp_path)) == 4
    assert [p.name for p in tmp_path.rglob("*") if p.name.startswith(".")] == []


def test_readers_never_see_a_half_written_file(tmp_path):
    log = InferenceLog(tmp_path, flush_rows=50, flush_interval_s=0.05)
    errors: list[BaseException] = []
    stop = threading.Event()

    def read_all_the_time():
        while not stop.is_set():
            try:
                frame = read_predictions(tmp_path)
                assert frame["row"].notna().all()
            except BaseException as exc:  # a torn file raises ArrowInvalid here
                errors.append(exc)
                return

    reader = threading.Thread(target=read_all_the_time)
    reader.start()
    try:
        for i in range(200):
            log_rows(log, 20, request_id=f"r{i}")
            time.sleep(0.002)
    finally:
        log.close()
        stop.set()
        reader.join()
    assert errors == []
    assert len(read_predictions(tmp_path)) == 4000


# -- bounded memory -------------------------------------------------------------------------


def test_rows_beyond_max_buffer_rows_are_dropped_and_counted(tmp_path):
    log = InferenceLog(tmp_path, max_buffer_rows=5, start=False)
    assert log_rows(log, 3)
    assert not log_rows(log, 3)  # would make 6
    assert log_rows(log, 2)
    assert not log_rows(log, 1)
    stats = log.stats()
    assert (stats.rows_buffered, stats.rows_dropped) == (5, 4)
    log.flush()
    assert len(read_predictions(tmp_path)) == 5 and log.stats().rows_buffered == 0
    assert log_rows(log, 5)  # room again after the flush


def test_a_stalled_store_never_blocks_the_request_path(tmp_path, monkeypatch):
    release = threading.Event()
    real = pq.write_table

    def stalled(*args, **kwargs):
        release.wait(10)
        real(*args, **kwargs)

    monkeypatch.setattr(pq, "write_table", stalled)
    log = InferenceLog(tmp_path, flush_rows=10, flush_interval_s=0.01, max_buffer_rows=100)
    try:
        log_rows(log, 10)
        wait_until(lambda: log.stats().rows_buffered == 10 and not log._entries, timeout=5)
        started = time.perf_counter()
        accepted = [log_rows(log, 10, request_id=f"r{i}") for i in range(20)]
        took = time.perf_counter() - started
        assert took < 0.5  # 20 appends while the writer hangs on the store
        assert accepted.count(True) == 9 and accepted.count(False) == 11
        assert log.stats().rows_dropped == 110 and log.stats().rows_buffered == 100
    finally:
        release.set()
        log.close()
    assert len(read_predictions(tmp_path)) == 100


# -- typed columns and readers --------------------------------------------------------------


def test_feature_columns_are_typed_by_the_spec_and_raw_as_sent(tmp_path):
    log = InferenceLog(tmp_path, start=False)
    sent = pd.DataFrame({
        "x1": [1, None, 3],  # ints and a missing value
        "x2": [0.5, 2.0, np.nan],
        "cat": ["zzz", None, 7],  # not in the vocabulary, missing, a number
        "extra": ["not", "a", "feature"],
    }, dtype=object)
    log.log_predictions(request_id="q", model_version="7", spec=SPEC, frame=sent,
                        predictions=[0.1, 0.2, 0.3])
    log.flush()
    frame = read_predictions(tmp_path)
    assert list(frame.columns) == ["request_id", "row", "ts", "model_version", "prediction",
                                   "latency_ms", "shadow", "error", "x1", "x2", "cat"]
    assert frame["x1"].dtype == "float64" and frame["x2"].dtype == "float64"
    assert pd.api.types.is_string_dtype(frame["cat"])
    assert str(frame["ts"].dtype) == "datetime64[ms, UTC]"
    assert frame["x1"].tolist()[0::2] == [1.0, 3.0] and np.isnan(frame["x1"][1])
    assert frame["cat"].tolist()[0] == "zzz" and frame["cat"].tolist()[2] == "7"
    assert pd.isna(frame["cat"][1])
    assert frame["row"].tolist() == [0, 1, 2] and set(frame["model_version"]) == {"7"}
    assert frame["prediction"].tolist() == [0.1, 0.2, 0.3]


def test_versions_with_different_features_read_back_together(tmp_path):
    log = InferenceLog(tmp_path, start=False)
    log_rows(log, 2, request_id="old", version="1")
    other = FeatureSpec(names=("x1", "x3"), kinds=("numeric", "categorical"))
    log.log_predictions(request_id="new", model_version="2", spec=other,
                        frame=pd.DataFrame({"x1": [5.0], "x3": ["k"]}), predictions=[0.9])
    log.flush()
    frame = read_predictions(tmp_path)
    assert frame["model_version"].tolist() == ["1", "1", "2"]
    assert frame["x3"].tolist()[2] == "k" and pd.isna(frame["x3"][0])
    assert pd.isna(frame["cat"][2])


def test_a_feature_named_like_a_fixed_column_is_prefixed(tmp_path):
    log = InferenceLog(tmp_path, start=False)
    spec = FeatureSpec(names=("ts", "x1"), kinds=("numeric", "numeric"))
    log.log_predictions(request_id="q", model_version="1", spec=spec,
                        frame=pd.DataFrame({"ts": [3.0], "x1": [1.0]}), predictions=[0.5])
    log.flush()
    frame = read_predictions(tmp_path)
    assert frame["feature_ts"].tolist() == [3.0] and str(frame["ts"].dtype).startswith("datetime")


def test_latency_shadow_and_failures_round_trip(tmp_path):
    log = InferenceLog(tmp_path, start=False)
    log.log_predictions(request_id="live", model_version="1", spec=SPEC, frame=rows(2),
                        predictions=[0.1, 0.2], latency_ms=3.5)
    log.log_predictions(request_id="live", model_version="2", spec=SPEC, frame=rows(2),
                        predictions=[0.3, 0.4], latency_ms=7.25, shadow=True)
    log.log_failure(request_id="bad", model_version="2", spec=SPEC,
                    error="ValueError: x1 out of range", latency_ms=1.5)
    log.flush()
    frame = read_predictions(tmp_path)
    assert frame["request_id"].tolist() == ["live", "live", "live", "live", "bad"]
    assert frame["latency_ms"].tolist() == [3.5, 3.5, 7.25, 7.25, 1.5]
    assert frame["latency_ms"].dtype == "float64" and frame["shadow"].dtype == bool
    assert frame["shadow"].tolist() == [False, False, True, True, False]
    assert frame["prediction"].tolist()[:4] == [0.1, 0.2, 0.3, 0.4]
    assert frame["error"].iloc[:4].isna().all()
    failed = frame.iloc[4]
    assert failed["row"] == il.FAILED_ROW == -1 and np.isnan(failed["prediction"])
    assert failed["error"] == "ValueError: x1 out of range" and failed["model_version"] == "2"
    assert np.isnan(failed["x1"]) and pd.isna(failed["cat"])  # no features on a failure


def test_a_group_of_only_failures_is_written(tmp_path):
    log = InferenceLog(tmp_path, start=False)
    log.log_failure(request_id="a", model_version="3", spec=SPEC, error="TimeoutError: slow")
    log.flush()
    frame = read_predictions(tmp_path)
    assert frame["row"].tolist() == [-1] and frame["error"].tolist() == ["TimeoutError: slow"]
    assert np.isnan(frame["latency_ms"][0]) and not frame["shadow"][0]
    assert log.stats().rows_dropped == 0
    with pytest.raises(ValueError, match="error message"):
        log.log_failure(request_id="a", model_version="3", spec=SPEC, error="")


def test_files_without_the_newer_columns_read_with_defaults(tmp_path):
    log = InferenceLog(tmp_path, start=False)
    log.log_predictions(request_id="new", model_version="2", spec=SPEC, frame=rows(1),
                        predictions=[0.5], latency_ms=2.0, shadow=True)
    log.flush()
    # a file as the log wrote it before latency_ms, shadow and error existed
    folder = next((tmp_path / "predictions").glob("date=*/hour=*"))
    old = pd.DataFrame({"request_id": ["old"], "row": [0],
                        "ts": pd.to_datetime([T0 - 60], unit="s", utc=True).as_unit("ms"),
                        "model_version": ["1"], "prediction": [0.7], "x1": [1.0],
                        "x2": [2.0], "cat": ["a"]})
    pq.write_table(__import__("pyarrow").Table.from_pandas(old, preserve_index=False),
                   folder / "aaa-old-00000001.parquet")
    frame = read_predictions(tmp_path)
    assert list(frame.columns)[:8] == ["request_id", "row", "ts", "model_version",
                                       "prediction", "latency_ms", "shadow", "error"]
    mine = frame.set_index("request_id")
    assert np.isnan(mine.loc["old", "latency_ms"]) and mine.loc["new", "latency_ms"] == 2.0
    assert frame["shadow"].dtype == bool
    assert not mine.loc["old", "shadow"] and mine.loc["new", "shadow"]
    assert mine["error"].isna().all() and mine.loc["old", "x1"] == 1.0


def _three_hours(tmp_path) -> None:
    clock = Clock(T0 - 3600)  # 06:59:59.5
    log = InferenceLog(tmp_path, clock=clock, start=False)
    for i in range(30):  # one row every 6 minutes: hours 06, 07, 08, 09
        log_rows(log, 1, request_id=f"r{i:02d}", start=i)
        clock.now += 360
    log.flush()


def test_read_predictions_limit_keeps_the_newest_rows_oldest_first(tmp_path):
    _three_hours(tmp_path)
    frame = read_predictions(tmp_path, limit=4)
    assert frame["request_id"].tolist() == ["r26", "r27", "r28", "r29"]
    assert frame["ts"].is_monotonic_increasing
    assert len(read_predictions(tmp_path)) == 30
    assert len(read_predictions(tmp_path, limit=0)) == 0


def test_read_predictions_since_keeps_rows_at_or_after_it(tmp_path):
    _three_hours(tmp_path)
    since = datetime.fromtimestamp(T0 - 3600 + 360 * 25, tz=timezone.utc)  # exactly row 25
    assert read_predictions(tmp_path, since=since)["request_id"].tolist() == [
        f"r{i}" for i in range(25, 30)
    ]
    naive = since.replace(tzinfo=None)  # naive means UTC
    assert len(read_predictions(tmp_path, since=naive)) == 5
    assert len(read_predictions(tmp_path, since=since.timestamp())) == 5
    assert len(read_predictions(tmp_path, since=since, limit=2)) == 2


def test_readers_skip_partitions_they_do_not_need(tmp_path):
    _three_hours(tmp_path)
    old = next((tmp_path / "predictions").glob("date=*/hour=06/*.parquet"))
    old.write_bytes(b"not parquet")  # reading it would raise
    with pytest.raises(Exception, match=r"(?i)parquet"):
        read_predictions(tmp_path)
    assert len(read_predictions(tmp_path, limit=10)) == 10
    assert len(read_predictions(tmp_path, since=T0 + 1)) > 0


def test_a_file_modified_long_before_since_is_not_read(tmp_path):
    since = T0 - 1800  # mid-hour: both files below land in since's hour partition
    assert 300 < MTIME_SLACK_S < 900  # the stamps below sit either side of the slack
    log = InferenceLog(tmp_path, clock=Clock(since + 1), start=False)  # the writer's clock
    log_rows(log, 2, request_id="ahead")
    log.flush()
    ahead = parquet_files(tmp_path)[0]
    # the store's clock runs 5 minutes behind the writer's: within the slack, still read
    os.utime(ahead, (since - 300, since - 300))
    log_rows(log, 3, request_id="stale")
    log.flush()
    stale = next(p for p in parquet_files(tmp_path) if p != ahead)
    stale.write_bytes(b"not parquet")  # reading it would raise
    os.utime(stale, (since - 900, since - 900))  # modified long before since: never read
    assert read_predictions(tmp_path, since=since)["request_id"].tolist() == ["ahead"] * 2
    assert LogTail(tmp_path).read(since)["request_id"].tolist() == ["ahead"] * 2
    with pytest.raises(Exception, match=r"(?i)parquet"):
        read_predictions(tmp_path)  # without since every file is read


def test_a_tail_reads_what_the_readers_read_each_file_once(tmp_path):
    clock = Clock(T0 - 3600)
    log = InferenceLog(tmp_path, clock=clock, start=False)
    tail, labels = LogTail(tmp_path), LogTail(tmp_path, "feedback")
    assert tail.read(T0 - 3600).empty and labels.read(T0 - 3600).empty
    held = []
    for i in range(12):  # a file every 10 minutes, across hours 06-08
        log_rows(log, 2, request_id=f"r{i:02d}", start=i)
        log.log_feedback([FeedbackItem(f"r{i:02d}", 1.0)])
        log.flush()
        clock.now += 600
        since = T0 - 3600 + 600 * max(0, i - 3)  # the window moves on, as a rollout's step
        pd.testing.assert_frame_equal(tail.read(since), read_predictions(tmp_path, since=since))
        pd.testing.assert_frame_equal(labels.read(since), read_feedback(tmp_path, since=since))
        held.append(len(tail.files))
    assert len(tail.read(since)) == 8  # the last 4 files' rows
    assert max(held) > held[-1]  # files of hours before since's are let go
    # a file already read is not read again (files never change once in place)
    newest = parquet_files(tmp_path)[-1]
    newest.write_bytes(b"not parquet")
    assert len(tail.read(since)) == 8
    with pytest.raises(Exception, match=r"(?i)parquet"):
        read_predictions(tmp_path, since=since)
    # a file gone from the store is gone from the tail
    newest.unlink()
    assert len(tail.read(since)) == 6 and str(newest) not in tail.files
    with pytest.raises(ValueError, match="kind must be one of"):
        LogTail(tmp_path, "labels")


def test_empty_log_reads_as_empty_frames_with_the_columns(tmp_path):
    predictions = read_predictions(tmp_path / "nothing-yet")
    assert predictions.empty
    assert list(predictions.columns) == ["request_id", "row", "ts", "model_version", "prediction",
                                         "latency_ms", "shadow", "error"]
    feedback = read_feedback(tmp_path)
    assert feedback.empty and list(feedback.columns) == ["request_id", "row", "label", "ts"]


def test_readers_ignore_temp_and_foreign_files(tmp_path):
    _three_hours(tmp_path)
    folder = next((tmp_path / "predictions").glob("date=*/hour=09"))
    (folder / ".half.parquet.1234.tmp").write_bytes(b"partial")
    (folder / "_SUCCESS").write_bytes(b"")
    (folder / "notes.txt").write_text("hi")
    assert len(read_predictions(tmp_path)) == 30


# -- feedback -------------------------------------------------------------------------------


def test_feedback_round_trip(tmp_path):
    log = InferenceLog(tmp_path, clock=Clock(), start=False)
    items = parse_feedback({"labels": [
        {"request_id": "a", "label": 1}, {"request_id": "b", "row": 3, "label": 0.0},
    ]}, max_items=10)
    assert items == (FeedbackItem("a", 1.0, 0), FeedbackItem("b", 0.0, 3))
    assert log.log_feedback(items)
    log.flush()
    assert [p.relative_to(tmp_path).parts[:3] for p in parquet_files(tmp_path, "feedback")] == [
        ("feedback", "date=2024-03-05", "hour=07")
    ]
    frame = read_feedback(tmp_path)
    assert frame[["request_id", "row", "label"]].to_dict("records") == [
        {"request_id": "a", "row": 0, "label": 1.0}, {"request_id": "b", "row": 3, "label": 0.0},
    ]
    assert (frame["ts"] == pd.Timestamp(T0, unit="s", tz="UTC").floor("ms")).all()
    assert log.stats().feedback_written == 2 and log.stats().predictions_written == 0
    assert read_predictions(tmp_path).empty


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ([], 400, "JSON object"),
        ({"label": 1}, 400, "JSON object like"),
        ({"labels": {"request_id": "a"}}, 400, "must be a list"),
        ({"labels": []}, 400, "empty"),
        ({"labels": [1]}, 400, "labels[0] must be an object"),
        ({"labels": [{"label": 1}]}, 400, "request_id"),
        ({"labels": [{"request_id": "", "label": 1}]}, 400, "request_id"),
        ({"labels": [{"request_id": "a"}]}, 400, "no 'label'"),
        ({"labels": [{"request_id": "a", "label": "yes"}]}, 400, "finite number"),
        ({"labels": [{"request_id": "a", "label": True}]}, 400, "finite number"),
        ({"labels": [{"request_id": "a", "label": float("nan")}]}, 400, "finite number"),
        ({"labels": [{"request_id": "a", "label": 1, "row": -1}]}, 400, "row"),
        ({"labels": [{"request_id": "a", "label": 1, "row": 1.5}]}, 400, "row"),
        ({"labels": [{"request_id": "a", "label": 1, "extra": 2}]}, 400, "unknown key"),
        ({"labels": [{"request_id": "a", "label": 1}], "more": 1}, 400, "unknown key"),
        ({"labels": [{"request_id": "a", "label": 1}] * 6}, 413, "limit of 5"),
    ],
)
def test_bad_feedback_bodies_are_refused_with_a_reason(body, status, message):
    with pytest.raises(InvalidFeedback) as caught:
        parse_feedback(body, max_items=5)
    assert caught.value.status == status
    assert message in str(caught.value)


# -- retrain requests -----------------------------------------------------------------------


def test_retrain_requests_are_pending_until_consumed_once(tmp_path):
    first = request_retrain(tmp_path, "drift on x2", "http 10.0.0.1")
    second = request_retrain(tmp_path)
    assert [r.id for r in pending_requests(tmp_path)] == [first.id, second.id]
    assert pending_requests(tmp_path)[0] == first
    assert consume_request(tmp_path, first.id) is True
    assert consume_request(tmp_path, first.id) is False
    assert [r.id for r in pending_requests(tmp_path)] == [second.id]
    assert (tmp_path / "requests" / "done" / f"{first.id}.json").is_file()
    assert [p.name for p in (tmp_path / "requests").iterdir() if p.name.startswith(".")] == []


def test_racing_consumers_get_a_request_exactly_once(tmp_path):
    made = request_retrain(tmp_path, "now")
    results: list[bool] = []
    barrier = threading.Barrier(8)

    def consume():
        barrier.wait()
        results.append(consume_request(tmp_path, made.id))

    threads = [threading.Thread(target=consume) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 7 + [True]
    assert pending_requests(tmp_path) == []


def test_pending_requests_skip_unreadable_files_and_ids_are_checked(tmp_path):
    assert pending_requests(tmp_path) == []
    made = request_retrain(tmp_path)
    (tmp_path / "requests" / "junk.json").write_text("{not json")
    assert [r.id for r in pending_requests(tmp_path)] == [made.id]
    with pytest.raises(ValueError, match="not a retrain request id"):
        consume_request(tmp_path, "../../etc/passwd")
    with pytest.raises(ValueError, match="reason"):
        request_retrain(tmp_path, "x" * 5000)
