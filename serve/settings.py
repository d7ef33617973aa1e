"""What the Serve application needs to know, as one plain value (built by ``retrain``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass


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

    def to_dict(self) -> dict:
        return asdict(self)
