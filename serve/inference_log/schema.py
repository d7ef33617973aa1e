"""The inference log's layout: its three kinds of files, their columns, their limits and the
partition path, shared by writer and readers.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import pandas as pd
import pyarrow as pa

PREDICTIONS = "predictions"
FEEDBACK = "feedback"
REQUESTS = "requests"

TIMESTAMP = pa.timestamp("ms", tz="UTC")
#: the columns of every prediction file; one column per model feature follows them
PREDICTION_COLUMNS = pa.schema(
    [
        ("request_id", pa.string()),
        ("row", pa.int64()),
        ("ts", TIMESTAMP),
        ("model_version", pa.string()),
        ("prediction", pa.float64()),
        # the version's own time for the request (queue in its pool + predict), one value
        # on every row of the request: the rollout's p99 gate reads it
        ("latency_ms", pa.float64()),
        # True: a copy of a live request that the shadow version computed, never served
        ("shadow", pa.bool_()),
        # null when the version answered; "<Type>: message" on its one row (row -1) when it
        # failed on the request
        ("error", pa.string()),
    ]
)
#: what files written before these columns existed read back as
_ADDED_DEFAULTS = {"latency_ms": float("nan"), "shadow": False, "error": None}
#: the ``row`` of the one row logged for a request that a version failed on
FAILED_ROW = -1
FEEDBACK_COLUMNS = pa.schema(
    [("request_id", pa.string()), ("row", pa.int64()), ("label", pa.float64()), ("ts", TIMESTAMP)]
)
#: a feature named like a fixed column is written as ``feature_<name>`` instead
FEATURE_PREFIX = "feature_"

_PARTITION = re.compile(r"/date=(\d{4}-\d{2}-\d{2})/hour=(\d{2})/([^/]+)$")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
MAX_REQUEST_ID_CHARS = 256
MAX_REASON_CHARS = 1000
#: a label's row index within its request: an int64 in the log, and no request has more rows
MAX_ROW = 2**31 - 1
# what a request id may be: printable ASCII, like the x-request-id headers it comes from
_REQUEST_ID_TEXT = re.compile(r"[\x20-\x7e]+")


class _Frames(Protocol):
    """Rows as parsed, which make their frame on demand (`serve.schemas.Rows`)."""

    infers_dtypes: bool

    def __len__(self) -> int: ...

    def column(self, name: str) -> list[Any] | None: ...

    def frame(self) -> pd.DataFrame: ...


class _Spec(Protocol):
    """What the log needs of a model's `serve.features.FeatureSpec`."""

    @property
    def names(self) -> tuple[str, ...]: ...

    @property
    def kinds(self) -> tuple[str, ...]: ...


@dataclass(frozen=True)
class LogStats:
    """What a replica's log has done, for ``/health``."""

    writer_id: str
    predictions_written: int
    feedback_written: int
    files_written: int
    #: rows given up: buffer full, a row that could not be converted, or a failed final write
    rows_dropped: int
    #: rows accepted but not written yet (including a write in progress)
    rows_buffered: int
    last_error: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
