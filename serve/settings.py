"""What the Serve application needs to know, as one plain value (built by ``retrain``)."""

from __future__ import annotations

import hashlib
import hmac
import os
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
    #: a request body must arrive whole within this many seconds (else 408): a slow or
    #: stalled upload holds one of the replica's max_ongoing_requests slots until then
    body_timeout_s: float = 10.0
    max_rows: int = 10_000
    #: columns one request may name, and values (rows x columns) it may hold; checked
    #: before any frame is built
    max_columns: int = 1024
    max_cells: int = 1_000_000
    #: False: a row in which every feature is missing or null is refused with a 400
    allow_all_missing_rows: bool = False
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
    #: Only a salted hash of it leaves the constructor (``admin_token_hash``; this field is
    #: None afterwards): the settings are Serve's deployment arguments, which Ray keeps in
    #: its internal store, where a token in plain text would be readable by anyone who can
    #: read that store.
    admin_token: str | None = field(default=None, repr=False)
    #: ``sha256$<salt hex>$<digest hex>`` of the token; set from ``admin_token``
    admin_token_hash: str | None = None
    #: the environment variable the token was read from, named in the 403 message
    admin_token_env: str = "RETRAIN_ADMIN_TOKEN"
    #: requests one replica holds at once (Serve's ``max_ongoing_requests``). High on
    #: purpose: a request whose body is still arriving holds a slot (until body_timeout_s),
    #: so a low number let 33 stalled uploads starve every caller; the CPU work is bounded
    #: per version instead (version_threads + version_queue, then 503)
    max_ongoing_requests: int = 256
    #: threads per model version in a replica (its own pool: a slow version queues only
    #: its own requests)
    version_threads: int = 2
    #: requests that may wait for a busy version beyond its threads; more get a 503
    version_queue: int = 64
    #: a request waiting longer than this for its version fails with a 504 (its error)
    version_timeout_s: float = 10.0
    #: shadow copies in flight per replica at most; more are dropped and counted
    shadow_max_pending: int = 64
    #: > 1: requests to the same version that queue while its threads are busy are
    #: predicted together, up to this many (`serve.versions.runner`; a lone request never
    #: waits for a batch, so this costs nothing at low load); 0 or 1: off
    batch_max_size: int = 32
    #: how long a thread waits for a queued batch that is not full to fill; 0: not at all
    batch_wait_s: float = 0.0
    #: ``module:function`` that loads one version: ``(tracking_uri, model_name, version) ->
    #: serve.loader.LoadedModel``; the seam for other model stores and for fault injection
    model_loader: str = "serve.loader:load_version"

    def __post_init__(self) -> None:
        if self.admin_token:
            object.__setattr__(self, "admin_token_hash", token_hash(self.admin_token))
        object.__setattr__(self, "admin_token", None)
        for name in ("num_replicas", "max_columns", "max_cells", "max_ongoing_requests",
                     "version_threads", "shadow_max_pending", "max_rows"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, but got {name}={getattr(self, name)}")
        for name in ("version_queue", "batch_max_size"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, but got {name}={getattr(self, name)}")
        for name in ("poll_interval_s", "version_timeout_s", "body_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, but got {name}={getattr(self, name)}")
        if not self.batch_wait_s >= 0:
            raise ValueError(f"batch_wait_s must be >= 0, but got {self.batch_wait_s}")
        module, _, function = self.model_loader.partition(":")
        if not module or not function:
            raise ValueError("model_loader must be 'module:function' (e.g. "
                             f"'serve.loader:load_version'), but got {self.model_loader!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    def token_matches(self, given: str) -> bool:
        """Whether ``given`` is the admin token (False when there is none)."""
        return self.admin_token_hash is not None and token_matches(self.admin_token_hash, given)


def token_hash(token: str, salt: bytes | None = None) -> str:
    """A salted SHA-256 of the token. A fast hash is enough for a high-entropy token (e.g.
    ``openssl rand -hex 32``), and a slow one would let anyone burn the replica's CPU by
    sending wrong tokens."""
    salt = os.urandom(16) if salt is None else salt
    digest = hashlib.sha256(salt + token.encode("utf-8", "surrogatepass")).hexdigest()
    return f"sha256${salt.hex()}${digest}"


def token_matches(stored: str, given: str) -> bool:
    scheme, _, rest = stored.partition("$")
    salt, _, digest = rest.partition("$")
    if scheme != "sha256" or not salt or not digest:
        return False
    try:
        again = token_hash(given, bytes.fromhex(salt))
    except ValueError:  # a hash that was not made by token_hash
        return False
    # compare_digest: the time taken does not reveal how much of a guess was right
    return hmac.compare_digest(again.encode(), stored.encode())
