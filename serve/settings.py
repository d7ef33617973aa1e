"""What the Serve application needs to know, as one plain value (built by ``retrain``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True, kw_only=True)
class ServeSettings:
    tracking_uri: str
    model_name: str
    #: the registry alias whose version is served
    alias: str = "champion"
    app_name: str = "retrain"
    route_prefix: str = "/"
    host: str = "127.0.0.1"
    port: int = 8000
    num_replicas: int = 1
    cpus_per_replica: float = 1.0
    poll_interval_s: float = 2.0
    max_body_bytes: int = 8 * 1024 * 1024
    max_rows: int = 10_000
    access_log: bool = False
    #: root of the inference log (local folder or pyarrow URI): predictions, late labels and
    #: on-demand retrain requests; None turns all three off
    inference_log_path: str | None = None
    #: False: no prediction or label is written (retrain requests still are)
    log_predictions: bool = True
    #: a replica writes a Parquet file when this many rows are buffered, or ...
    flush_rows: int = 5000
    #: ... when the oldest buffered row is this old
    flush_interval_s: float = 5.0
    #: rows beyond this (a stalled store) are dropped and counted, never waited for
    max_buffer_rows: int = 100_000
    #: bearer token of POST /feedback and /admin/*; None: those endpoints answer 403.
    #: Kept out of repr so it never lands in a log line.
    admin_token: str | None = field(default=None, repr=False)
    #: the environment variable the token was read from, named in the 403 message
    admin_token_env: str = "RETRAIN_ADMIN_TOKEN"

    def to_dict(self) -> dict:
        return asdict(self)
