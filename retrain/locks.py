"""Exclusive, crash-safe locks on the project's workdir (one cycle, one controller at a time).

`fcntl.flock` locks belong to the open file: the kernel drops them when the process dies, so a
crashed cycle or controller never leaves a stale lock behind, and a restart can take it at once.
The file keeps the holder's pid and host for the message another process gets. Works where the
workdir is a local disk; on NFS, flock is emulated with POSIX locks (Linux >= 2.6.12).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from retrain.errors import BusyError


@contextmanager
def exclusive(path: str | os.PathLike[str], what: str) -> Iterator[None]:
    """Hold the lock at ``path`` for the block; `BusyError` naming the holder if it is taken."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")  # noqa: SIM115 - the lock lives as long as this handle
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise BusyError(
                f"{what} is already running for this project (lock {path}, held by {holder}); "
                "wait for it to finish, or stop that process first"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "since": time.time()}))
        handle.flush()
        yield
    finally:
        handle.close()  # closing drops the lock


def cycle_lock(workdir: str | os.PathLike[str]):
    """Held by every cycle: `retrain run`, `retrain watch` and the Python API alike."""
    return exclusive(Path(workdir) / "locks" / "cycle.lock", "a retraining cycle")


def controller_lock(workdir: str | os.PathLike[str]):
    return exclusive(Path(workdir) / "locks" / "watch.lock", "`retrain watch`")
