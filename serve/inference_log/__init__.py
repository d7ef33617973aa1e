"""The inference log: every prediction and every late label, as hive-partitioned Parquet.

Layout under one root (a local folder or any pyarrow URI such as ``s3://bucket/log``)::

    <root>/predictions/date=YYYY-MM-DD/hour=HH/<writer-id>-<seq>.parquet
    <root>/feedback/date=YYYY-MM-DD/hour=HH/<writer-id>-<seq>.parquet
    <root>/requests/<id>.json          on-demand retrain requests, pending
    <root>/requests/done/<id>.json     ... and consumed by the controller
    <root>/moves/<id>.json             moves made through the admin endpoints, pending
    <root>/moves/done/<id>.json        ... and copied to the ledger by the controller

Writing (`InferenceLog`) happens inside the Serve replicas; reading (`read_predictions`,
`read_feedback`, `pending_requests`, `pending_moves`; `LogTail` for a reader that polls
and reads each file once) in the monitor and the controller. The
request path only appends references to a buffer under a lock; a background thread converts
and writes, so a slow disk costs no answer time. Memory stays bounded: past
``max_buffer_rows`` rows, new rows are dropped and counted rather than blocking a request.
Rows are partitioned by the hour of their own timestamp, so a reader can skip whole hours.

Files appear atomically: on a local filesystem each is written under a hidden temp name and
renamed; object stores (S3, GCS) publish an object only when its upload completes. Readers
skip hidden names. No Ray or MLflow here.
"""

from __future__ import annotations

from serve.inference_log.feedback import FeedbackItem, InvalidFeedback, parse_feedback
from serve.inference_log.moves import AdminMove, consume_move, note_move, pending_moves
from serve.inference_log.reader import LogTail, read_feedback, read_predictions
from serve.inference_log.requests import (
    RetrainRequest,
    consume_request,
    pending_requests,
    request_retrain,
)
from serve.inference_log.schema import FAILED_ROW, LogStats
from serve.inference_log.storage import resolve
from serve.inference_log.writer import InferenceLog, new_writer_id

__all__ = [
    "FAILED_ROW",
    "AdminMove",
    "FeedbackItem",
    "InferenceLog",
    "InvalidFeedback",
    "LogStats",
    "LogTail",
    "RetrainRequest",
    "consume_move",
    "consume_request",
    "new_writer_id",
    "note_move",
    "parse_feedback",
    "pending_moves",
    "pending_requests",
    "read_feedback",
    "read_predictions",
    "request_retrain",
    "resolve",
]
