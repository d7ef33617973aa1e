"""Where models live and how they reach callers: MLflow, Ray, the Serve app's limits, and the
rollout's smoke, shadow, canary and gates.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from retrain.config.base import _Section
from retrain.errors import InvalidValueError
from retrain.rollout.limits import GateLimits


class MlflowConfig(_Section):
    #: any MLflow tracking URI; default: a SQLite file in the workdir
    tracking_uri: str | None = None
    #: default: <workdir>/mlartifacts (used only when the experiment is created)
    artifact_location: str | None = None
    experiment: str | None = None
    model_name: str | None = None


class ServingConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    app_name: str = Field(default="retrain", min_length=1)
    route_prefix: str = "/"
    num_replicas: int = Field(default=1, ge=1)
    #: CPUs Ray reserves per model replica (light models answer fine on a fraction)
    cpus_per_replica: float = Field(default=1.0, gt=0)
    #: how often each replica checks the registry for a new champion
    poll_interval_s: float = Field(default=2.0, gt=0)
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    #: a request body must arrive whole within this many seconds (else 408)
    body_timeout_s: float = Field(default=10.0, gt=0)
    max_rows: int = Field(default=10_000, ge=1)
    #: columns one request may name, and values (rows x columns) it may hold
    max_columns: int = Field(default=1024, ge=1)
    max_cells: int = Field(default=1_000_000, ge=1)
    #: false: a row in which every feature is missing or null is refused (400)
    allow_all_missing_rows: bool = False
    #: Serve's per-request access log (off by default: it costs throughput)
    access_log: bool = False
    #: the environment variable holding the bearer token of /feedback and /admin/* (read
    #: where `retrain serve` runs; without it those endpoints answer 403)
    admin_token_env: str = Field(default="RETRAIN_ADMIN_TOKEN", min_length=1)
    #: requests one replica holds at once (Serve's max_ongoing_requests); an upload still
    #: arriving holds one too, so keep it well above the slow clients you expect
    max_ongoing_requests: int = Field(default=256, ge=1)
    #: each model version predicts in its own pool of this many threads per replica ...
    version_threads: int = Field(default=2, ge=1)
    #: ... with at most this many requests waiting for it (more: 503) ...
    version_queue: int = Field(default=64, ge=0)
    #: ... each for at most this long (longer: 504, counted as that version's error)
    version_timeout_s: float = Field(default=10.0, gt=0)
    #: shadow copies in flight per replica; more are dropped (and counted), never waited for
    shadow_max_pending: int = Field(default=64, ge=1)
    #: > 1: requests to one version that queue while its threads are busy are predicted
    #: together, up to this many (a lone request never waits for a batch); 0: off
    batch_max_size: int = Field(default=32, ge=0)
    #: how long a thread waits for a queued batch that is not full to fill; 0: not at all
    batch_wait_s: float = Field(default=0.0, ge=0)


class InferenceLogConfig(_Section):
    """Every prediction the Serve app answers, written to partitioned Parquet for the monitor."""

    enabled: bool = True
    #: a folder (or any pyarrow URI, e.g. s3://bucket/log) that the replicas and the
    #: controller both reach; default: <workdir>/inference
    path: str | None = None
    #: a replica writes a Parquet file when this many rows are buffered, or ...
    flush_rows: int = Field(default=5000, ge=1)
    #: ... when the oldest buffered row is this old
    flush_interval_s: float = Field(default=5.0, gt=0)
    #: memory bound: rows beyond this (a stalled disk) are dropped and counted in /health
    max_buffer_rows: int = Field(default=100_000, ge=1)


class SmokeConfig(_Section):
    """Before any live request: health, then a sample batch sent to champion and challenger."""

    enabled: bool = True
    #: requests of the sample batch (recent inputs), sent to both versions alike
    requests: int = Field(default=50, ge=1)


class ShadowConfig(_Section):
    """Live requests mirrored to the challenger; its answers are compared, never served."""

    enabled: bool = True
    duration_s: float = Field(default=300.0, ge=0)
    min_requests: int = Field(default=500, ge=1)


class CanaryStep(_Section):
    #: the challenger's share of live traffic, in percent
    percent: float = Field(gt=0, le=100)
    #: empty: the canary section's bake_s / min_requests
    bake_s: float | None = Field(default=None, ge=0)
    min_requests: int | None = Field(default=None, ge=1)


class CanaryConfig(_Section):
    #: the challenger's percent of live traffic, step by step, ending at 100; an entry is a
    #: number or {percent, bake_s, min_requests}
    steps: tuple[CanaryStep, ...] = tuple(CanaryStep(percent=p) for p in (5, 25, 50, 100))
    #: each step lasts at least this long ...
    bake_s: float = Field(default=300.0, ge=0)
    #: ... and until the challenger answered this many requests
    min_requests: int = Field(default=500, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _numbers_are_percents(cls, raw: Any) -> Any:
        steps = raw.get("steps") if isinstance(raw, dict) else None
        if isinstance(steps, (list, tuple)):
            raw = {**raw, "steps": [
                {"percent": s} if isinstance(s, (int, float)) and not isinstance(s, bool) else s
                for s in steps
            ]}
        return raw

    @model_validator(mode="after")
    def _rising_to_full(self) -> CanaryConfig:
        percents = [s.percent for s in self.steps]
        if not percents or percents[-1] != 100:
            raise InvalidValueError(f"steps must end at 100 (full traffic), but got {percents}; "
                                    "add 100 as the last step")
        if percents != sorted(set(percents)):
            raise InvalidValueError(f"steps must rise strictly, but got {percents}")
        return self


class RolloutConfig(_Section):
    """How a promoted version reaches live traffic: smoke, shadow, canary steps, gates."""

    #: false: a promoted version takes all traffic at once (the alias moves in the cycle);
    #: true: the cycle registers it under the ``challenger`` alias and `retrain watch` (or
    #: `retrain rollout start`) walks it through the steps below; the ``champion`` alias
    #: moves only when the last step passes
    enabled: bool = False
    #: a request header (or body field) whose value keeps one caller on one version
    sticky_key: str | None = Field(default=None, pattern=r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
    smoke: SmokeConfig = SmokeConfig()
    shadow: ShadowConfig = ShadowConfig()
    canary: CanaryConfig = CanaryConfig()
    #: checked at every step against the champion on the same traffic (`GateLimits`)
    gates: GateLimits = GateLimits()
    #: the old version retires this long after the last step (in-flight requests drain)
    drain_s: float = Field(default=30.0, ge=0)
    #: `retrain rollout start` lowers its own CPU priority by this much (``os.nice``) before it
    #: imports anything heavy, so on a node it shares with the replicas its start-up, reads of
    #: the inference log and gate checks yield to serving. Ray runs its workers (replicas,
    #: Serve's proxy) at nice 15 (``RAY_worker_niceness``): only 16-19 puts the driver below
    #: them. 0 keeps the priority
    driver_nice: int = Field(default=19, ge=0, le=19)


class RayConfig(_Section):
    #: Ray cluster address; empty: RAY_ADDRESS, a local cluster started by ``ray start``, or a
    #: new local runtime
    address: str | None = None
    #: CPUs of a new local runtime (ignored when connecting to a cluster)
    num_cpus: int | None = Field(default=None, ge=1)
