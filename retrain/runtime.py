"""Connecting to Ray: an existing cluster when one is named or running, else a local runtime."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from retrain.config import RayConfig
from retrain.errors import ClusterError


def ensure_ray(config: RayConfig) -> None:
    """Attach to Ray once per process. Never called at import time.

    Order: an already initialised runtime (a user's ``ray.init(address=...)``, or a Ray job's
    driver) is reused; else ``ray.address`` or ``RAY_ADDRESS``; else a new local runtime with
    ``ray.num_cpus`` CPUs.
    """
    quiet_defaults()
    address = config.address or os.environ.get("RAY_ADDRESS")
    if address and "ray" not in sys.modules:
        # Ray 2.60 clusters authenticate with a token by default, and Ray reads this setting
        # when it is first imported; RAY_AUTH_MODE=disabled in the environment still wins.
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    import ray

    if ray.is_initialized():
        return
    ours = _python_sigterm_handler()
    try:
        if address:
            ray.init(address=address, logging_level=logging.WARNING)
        else:
            ray.init(
                address="local",
                num_cpus=config.num_cpus,
                include_dashboard=False,
                # trial errors come back in the search result; worker chatter stays in logs
                log_to_driver=False,
                logging_level=logging.WARNING,
            )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = address or "a new local runtime"
        raise ClusterError(
            f"cannot start or reach Ray at {where}: {exc}. Check ray.address / RAY_ADDRESS; "
            "on a token-authenticated cluster set RAY_AUTH_MODE=token"
        ) from exc
    finally:
        if ours is not None:
            # ray.init puts its own SIGTERM handling in place (an exit with a native stack
            # dump); a command that stops cleanly on SIGTERM (`retrain serve`, `watch`,
            # `demo`) keeps its own
            signal.signal(signal.SIGTERM, ours)


def _python_sigterm_handler():
    """This process's Python-level SIGTERM handler, when one is set (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    handler = signal.getsignal(signal.SIGTERM)
    return handler if callable(handler) else None


#: the file in the project workdir that takes third-party output kept off the console
THIRD_PARTY_LOG = "third-party.log"


@contextlib.contextmanager
def output_to(path: Path):
    """Standard output and error, of Python and of the process (file descriptors 1 and 2),
    into ``path`` for the block."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    try:
        with open(path, "a", buffering=1) as log:
            for fd in saved:
                os.dup2(log.fileno(), fd)
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                yield
                sys.stdout.flush()
                sys.stderr.flush()
    finally:
        for fd, copy in saved.items():
            os.dup2(copy, fd)
            os.close(copy)


def shutdown_quietly(log_path: Path) -> None:
    """Stop Serve and this process's Ray runtime, with what Ray prints meanwhile (a raylet's
    "graceful_shutdown failed" line, relayed by the driver) going to ``log_path``, not to
    the console. Nothing to do where Ray was never started."""
    if "ray" not in sys.modules:
        return
    import ray

    if not ray.is_initialized():
        return
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with output_to(Path(log_path)):
        try:
            from ray import serve

            serve.shutdown()
        finally:
            ray.shutdown()


def quiet_defaults() -> None:
    """Keep the console to retrain's own lines; the user's environment still wins."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # MLflow announces every registration and Serve every deployment step at INFO.
    for name in ("mlflow", "ray.serve"):
        logging.getLogger(name).setLevel(logging.WARNING)


def lower_priority(by: int) -> None:
    """Lower the calling thread's CPU priority, and so that of every thread it starts later,
    by ``by`` nice levels (not at all where the platform has no ``os.nice``). On Linux a
    nice value is per thread: call this first, before imports start threads of their own
    (OpenBLAS, pyarrow). It cannot be raised back: call it only in a process that does
    nothing else, such as `retrain rollout start`."""
    if by and hasattr(os, "nice"):
        os.nice(by)
