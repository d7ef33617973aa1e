"""One bad input never reaches storage, and never destroys other data (no Ray, no HTTP).

Poisoned labels, poisoned ledger rows, requests with no feature at all, oversized bodies and
admin bodies that are not canonical: each refused at the door with a message, or, where a
bad row is already stored, read without failing. The HTTP layer's own checks are exercised
against real Serve in tests/integration/test_traffic_serve.py.
"""

from __future__ import annotations

import json
import sqlite3
import time

import numpy as np
import pandas as pd
import pytest

from retrain.ledger import EventKind, Ledger, LedgerEvent, format_events
from serve.features import FeatureSpec
from serve.inference_log import (
    FeedbackItem,
    InferenceLog,
    InvalidFeedback,
    parse_feedback,
    pending_requests,
    read_feedback,
    read_predictions,
    request_retrain,
)
from serve.oip import parse_infer
from serve.schemas import InvalidInput, check_text, parse_invocation, refuse_surrogates
from serve.settings import ServeSettings, token_hash
from serve.traffic import TrafficSplit, is_version

SPEC = FeatureSpec(names=("x1", "x2", "cat"), kinds=("numeric", "numeric", "categorical"),
                   categories={"cat": ("a", "b")})


# -- /feedback: each label checked at the door ---------------------------------------------------


@pytest.mark.parametrize("label, expected", [
    ({"request_id": "r", "row": 10**400, "label": 1}, "integer of 401 digits"),
    ({"request_id": "r", "row": 2**31, "label": 1}, "from 0 to 2147483647"),
    ({"request_id": "r\ud800", "row": 0, "label": 1}, "printable ASCII"),
    ({"request_id": "r\u00e9", "row": 0, "label": 1}, "printable ASCII"),
    ({"request_id": "r", "row": 0, "label": 10**400}, "finite number"),
    ({"request_id": "r", "row": 0, "label": float("inf")}, "finite number"),
], ids=["row-400-digits", "row-int64", "surrogate-id", "non-ascii-id", "huge-label", "inf"])
def test_a_bad_label_is_refused_at_the_door_with_its_index(label, expected):
    good = {"request_id": "ok", "row": 0, "label": 0}
    with pytest.raises(InvalidFeedback) as refused:
        parse_feedback({"labels": [good, label]}, max_items=10)
    message = str(refused.value)
    assert message.startswith("labels[1]") and expected in message
    message.encode("utf-8")  # the message itself can be sent


def test_the_batch_writer_keeps_every_valid_row_when_one_row_cannot_be_stored(tmp_path):
    """Rows that slipped past the door (or a future bug): the flush keeps the 999 good labels
    and the good predictions, drops and counts the bad ones."""
    log = InferenceLog(str(tmp_path), flush_rows=10**6, flush_interval_s=60, start=False)
    for i in range(999):
        assert log.log_feedback((FeedbackItem(request_id=f"r{i}", label=1.0, row=0),))
        if i == 500:
            log.log_feedback((FeedbackItem(request_id="bad", label=1.0, row=10**400),))
    frame = pd.DataFrame({"x1": [1.0], "x2": [2.0], "cat": ["a"]})
    for i in range(20):
        log.log_predictions(request_id=f"p{i}", model_version="1", spec=SPEC, frame=frame,
                            predictions=np.array([0.5]))
    log.log_predictions(request_id="bad", model_version="1", spec=SPEC,
                        frame=frame.assign(cat=pd.Series(["\ud800"], dtype=object)),
                        predictions=np.array([0.5]))
    log.close()
    labels = read_feedback(str(tmp_path))
    assert len(labels) == 999 and "bad" not in set(labels["request_id"])
    predictions = read_predictions(str(tmp_path))
    assert len(predictions) == 20 and "bad" not in set(predictions["request_id"])
    stats = log.stats()
    assert stats.rows_dropped == 2 and "dropped 1" in stats.last_error


# -- texts that reach the ledger -----------------------------------------------------------------


def test_a_retrain_reason_must_be_bounded_text(tmp_path):
    for reason, expected in (("\ud800", "surrogate"), ("x" * 1001, "more than the limit"),
                             ("a\x00b", "control character")):
        with pytest.raises(ValueError, match=expected):
            request_retrain(tmp_path, reason)
    assert request_retrain(tmp_path, "drift in\tcarrier\n").reason == "drift in\tcarrier\n"


def test_a_stored_request_with_a_bad_reason_is_read_cleaned(tmp_path):
    folder = tmp_path / "requests"
    folder.mkdir()
    raw = {"id": "20260101T000000000000Z-abcdef12", "reason": "\ud800" + "y" * 5000,
           "requested_by": "old", "requested_at": "2026-01-01T00:00:00+00:00"}
    (folder / f"{raw['id']}.json").write_text(json.dumps(raw))
    (request,) = pending_requests(tmp_path)
    assert request.reason.startswith("\ufffd") and len(request.reason) == 1000
    request.reason.encode("utf-8")


def test_the_ledger_never_stores_or_returns_text_that_cannot_be_printed(tmp_path):
    ledger = Ledger(tmp_path / "ledger.db")
    event = ledger.append(LedgerEvent(kind=EventKind.TRIGGER, model_name="m",
                                      reasons=("on demand: \ud800",),
                                      details={"outcome": "fired", "why\udfff": ["\ud800"],
                                               "long": "z" * 20_000}))
    assert event.reasons == ("on demand: \ufffd",)
    assert event.details["why\ufffd"] == ["\ufffd"] and len(event.details["long"]) == 10_000
    # a row stored before this check (a surrogate escaped in JSON) and a TEXT cell that is
    # not UTF-8 (another tool's write): both read, and print
    with sqlite3.connect(tmp_path / "ledger.db") as conn:
        conn.execute("INSERT INTO events (at, kind, model_name, reasons, details) "
                     "VALUES (?, 'trigger', 'm', ?, ?)",
                     (time.time(), json.dumps(["old \ud800 reason"]),
                      json.dumps({"outcome": "\ud800"})))
        conn.execute("INSERT INTO events (at, kind, model_name, run_id) "
                     "VALUES (?, 'cycle', 'm', CAST(X'66FF6F' AS TEXT))", (time.time(),))
    events = ledger.events(model_name="m")
    assert len(events) == 3
    assert events[1].reasons == ("old \ufffd reason",) and events[2].run_id == "f\ufffdo"
    format_events(events).encode("utf-8")


# -- bodies: limits before frames, text, surrogates ---------------------------------------------


def test_columns_and_values_are_capped_before_a_frame_is_built():
    wide = {"dataframe_records": [{f"c{i}": 1 for i in range(2000)}]}
    started = time.perf_counter()
    with pytest.raises(InvalidInput, match="2000 columns, more than the limit of 1024"):
        parse_invocation(wide)
    assert time.perf_counter() - started < 0.5
    with pytest.raises(InvalidInput, match="values, more than the limit of 100"):
        parse_invocation({"dataframe_split": {"columns": ["a", "b"], "data": [[1, 2]] * 60}},
                         max_cells=100)
    with pytest.raises(InvalidInput, match="rows, more than the limit of 5"):
        parse_invocation({"inputs": {"a": list(range(6))}}, max_rows=5)
    with pytest.raises(InvalidInput, match="more than the limit of 1024"):
        parse_invocation({"dataframe_records": [{"cat": "x" * 1025}]})
    tensor = {"name": "x1", "shape": [50], "datatype": "FP64", "data": [1.0] * 50}
    with pytest.raises(InvalidInput, match="more than 120 values"):
        parse_infer({"inputs": [tensor, {**tensor, "name": "x2"}, {**tensor, "name": "c"}]},
                    SPEC.names, max_rows=100, max_cells=120)
    with pytest.raises(InvalidInput, match="3 tensors, more than the limit of 2"):
        parse_infer({"inputs": [tensor] * 3}, SPEC.names, max_rows=100, max_columns=2)


def test_lone_surrogates_anywhere_in_a_body_are_refused_with_where():
    for body, where in (({"inputs": [{"name": "x\ud800"}]}, "body.inputs[0].name"),
                        ({"inputs": {"x\ud800": [1]}}, "a key in body.inputs"),
                        ({"id": "\udfff"}, "body.id"),
                        ({"dataframe_split": {"columns": ["\ud800"]}},
                         "body.dataframe_split.columns[0]")):
        raw = json.dumps(body).encode()
        with pytest.raises(InvalidInput, match="lone UTF-16 surrogate") as refused:
            refuse_surrogates(raw, json.loads(raw))
        assert str(refused.value).startswith(where), refused.value
    raw = b'{"id": "\xed\xa0\x80"}'  # the surrogate's own bytes, which json.loads lets in
    with pytest.raises(InvalidInput, match=r"^body\.id holds a lone UTF-16 surrogate"):
        refuse_surrogates(raw, json.loads(raw))
    pair = json.dumps({"cat": "\U0001f600"}).encode()  # a valid pair is text
    refuse_surrogates(pair, json.loads(pair))
    assert check_text("r", "ok", max_chars=2) == "ok"


# -- admin bodies ----------------------------------------------------------------------------------


@pytest.mark.parametrize("text, ok", [("4", True), ("123456789012345678", True),
                                      ("\u096a", False), ("01", False), ("0", False),
                                      ("1" * 19, False), (" 4", False), ("4\n", False),
                                      ("\uff14", False), (4, False)])
def test_versions_are_canonical_ascii_decimals(text, ok):
    assert is_version(text) is ok


def test_a_huge_integer_weight_is_a_value_error_not_an_overflow():
    with pytest.raises(ValueError, match="integer of 401 digits"):
        TrafficSplit.from_dict({"weights": {"1": 10**400}})
    with pytest.raises(ValueError, match="registry version"):
        TrafficSplit.from_dict({"weights": {"\u096a": 1.0}})


# -- the admin token never leaves the driver in plain text ---------------------------------------


def test_only_a_salted_hash_of_the_token_reaches_the_deployment_arguments(monkeypatch):
    from serve.app import app_builder, build_app

    token = "tok-" + "9" * 40
    settings = ServeSettings(tracking_uri="sqlite:///x.db", model_name="m", admin_token=token)
    assert settings.admin_token is None and settings.admin_token_hash.startswith("sha256$")
    assert settings.token_matches(token) and not settings.token_matches(token + "x")
    assert not settings.token_matches("") and token not in repr(settings)
    (args,) = build_app(settings)._bound_deployment.init_args
    assert token not in json.dumps(args) and args["admin_token"] is None
    again = ServeSettings(**args)  # what the replica builds from them
    assert again.token_matches(token)
    # the hash is salted: the same token hashes differently each time
    assert token_hash(token) != token_hash(token)

    monkeypatch.setenv("RETRAIN_ADMIN_TOKEN", token)
    (args,) = app_builder({"tracking_uri": "t", "model_name": "m"})._bound_deployment.init_args
    assert token not in json.dumps(args) and ServeSettings(**args).token_matches(token)
    none = ServeSettings(tracking_uri="t", model_name="m")
    assert none.admin_token_hash is None and not none.token_matches("")


def test_the_proxy_check_refuses_headers_serves_proxy_would_fail_on():
    from serve.proxy import _problem

    assert _problem([(b"x-request-id", b"abc-123"), (b"x-user", "é".encode())]) is None
    for headers, expected in (([(b"x-request-id", b"\x80")], "printable ASCII"),
                              ([(b"x-request-id", "é".encode())], "printable ASCII"),
                              ([(b"x-request-id", b"a" * 257)], "printable ASCII"),
                              ([(b"traceparent", b"\xff\xfe")], "traceparent header is not UTF-8")):
        assert expected in _problem(headers)


def test_a_request_the_proxy_leaves_unanswered_gets_503_to_retry_and_answers_pass_through():
    """Serve's proxy returns without a response when the replica holding the request died;
    the middleware answers 503 with Retry-After there, and leaves every answer that was
    started (a 500 of the application's own included) as it was."""
    import asyncio

    from serve.proxy import RetryWhenUnanswered, middlewares

    async def lost(scope, receive, send):  # what the proxy does when the replica died
        return None

    def answering(status):
        async def app(scope, receive, send):
            await send({"type": "http.response.start", "status": status, "headers": []})
            await send({"type": "http.response.body", "body": b"{}"})
        return app

    def call(app) -> list[dict]:
        sent = []

        async def send(message):
            sent.append(message)

        async def receive():
            return {"type": "http.request", "body": b""}

        scope = {"type": "http", "headers": [(b"x-request-id", b"req-7")]}
        asyncio.run(RetryWhenUnanswered(app)(scope, receive, send))
        return sent

    start, body = call(lost)
    assert start["status"] == 503 and (b"retry-after", b"1") in start["headers"]
    assert json.loads(body["body"])["request_id"] == "req-7"
    for status in (200, 400, 500):
        sent = call(answering(status))
        assert [m.get("status") for m in sent] == [status, None]
    assert [m.cls.__name__ for m in middlewares()] == ["HeaderCheck", "RetryWhenUnanswered"]


def test_the_app_refuses_a_bad_request_id_itself_where_no_proxy_check_runs():
    """The app's own check (for clusters started without serve/proxy.py in front): a 400
    before any endpoint runs, and a good id passes on."""
    from starlette.testclient import TestClient

    from serve.model import api

    with TestClient(api) as client:
        for bad in ("\u00e9t\u00e9".encode(), b"a" * 257, b"\x80"):
            r = client.get("/no-such-path", headers={"x-request-id": bad})
            assert r.status_code == 400 and "printable ASCII" in r.json()["error"]
        assert client.get("/no-such-path", headers={"x-request-id": "ok-1"}).status_code == 404
        # no public documentation of the admin endpoints
        assert client.get("/docs").status_code == 404
