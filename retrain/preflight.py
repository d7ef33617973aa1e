"""Checks that fail fast on a misconfigured environment, before a cycle spends any time.

An unwritable workdir, a SQLite file in a read-only folder, a misspelt tracking URI scheme, an
unreachable MLflow server or Ray address: each would otherwise surface minutes later (MLflow
retries an unreachable server for about four minutes, Ray waits on an address for longer) as a
vendor traceback. Here each is one line naming the config field and the fix, within seconds.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from retrain.errors import ConfigError

#: tracking URI schemes MLflow's stores accept
TRACKING_SCHEMES = {"", "file", "sqlite", "http", "https", "databricks", "postgresql",
                    "mysql", "mssql", "postgresql+psycopg2", "mysql+pymysql"}
#: seconds a reachability check waits for a TCP connection
CONNECT_TIMEOUT_S = 3.0


def _writable(path: Path) -> bool:
    """Whether ``path`` can be created or written: the nearest existing folder decides."""
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            return False
        probe = probe.parent
    if probe.is_file():
        # a file is in the way of a folder to create; else the file itself is the target
        return probe == path and os.access(probe, os.W_OK) and os.access(probe.parent, os.W_OK)
    return os.access(probe, os.W_OK | os.X_OK)


def _reachable(host: str, port: int) -> str | None:
    """None when a TCP connection opens within the timeout, else why not."""
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            return None
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"


def problems(config) -> list[str]:
    """Everything wrong with the environment the config points at, each with the fix."""
    out = []
    workdir = Path(config.project.workdir)
    if not _writable(workdir):
        out.append(f"project.workdir: {workdir} cannot be created or written by this user; "
                   "point it at a writable folder")
    ledger = Path(config.ledger_path)
    if not _writable(ledger):
        out.append(f"project.ledger: {ledger} cannot be written; point it at a writable file")
    uri = config.tracking_uri
    scheme = urlparse(uri).scheme.lower()
    if scheme not in TRACKING_SCHEMES:
        out.append(f"mlflow.tracking_uri: unknown scheme {scheme!r} in {uri!r}; use sqlite:///"
                   f"path/mlflow.db, http(s)://host:port, file:///path or a database URI")
    elif scheme == "sqlite":
        db = Path(uri.removeprefix("sqlite:///").removeprefix("sqlite://"))
        if not _writable(db):
            out.append(f"mlflow.tracking_uri: the SQLite file {db} cannot be written; point "
                       "it at a writable folder")
    elif scheme in ("http", "https"):
        parsed = urlparse(uri)
        port = parsed.port or (443 if scheme == "https" else 80)
        why = _reachable(parsed.hostname or "", port)
        if why:
            out.append(f"mlflow.tracking_uri: no MLflow server answers at {uri} within "
                       f"{CONNECT_TIMEOUT_S:g} s ({why}); start it or fix the address")
    address = config.ray.address or os.environ.get("RAY_ADDRESS")
    if address and address not in ("auto", "local") and "://" not in address:
        host, _, port = address.rpartition(":")
        if port.isdigit():
            why = _reachable(host or "127.0.0.1", int(port))
            if why:
                out.append(f"ray.address: no Ray cluster answers at {address} within "
                           f"{CONNECT_TIMEOUT_S:g} s ({why}); start it (ray start --head) or "
                           "fix the address (RAY_ADDRESS counts too)")
    return out


def check(config) -> None:
    """Raise `ConfigError` listing every problem at once (see `problems`)."""
    found = problems(config)
    if found:
        listing = "\n".join(f"  - {p}" for p in found)
        raise ConfigError(f"the environment does not fit the config ({len(found)} "
                          f"problem(s)):\n{listing}", problems=tuple(found))
