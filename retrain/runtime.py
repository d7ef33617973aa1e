"""Connecting to Ray: an existing cluster when one is named or running, else a local runtime."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading

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
