"""`main`: parse, run the command, turn a `RetrainError` into its message and exit code, and stop
long-running commands on Ctrl-C and SIGTERM alike.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

from retrain.cli.parser import build_parser
from retrain.errors import RetrainError


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C: a long-running command stops the same way either way."""


_STOPPED_BY: list[str] = []  # the signal names received, for the closing line


def _raise_terminated(signum, frame) -> None:
    _STOPPED_BY.append("SIGTERM")
    raise Terminated()


#: commands that run until stopped; SIGTERM stops them like Ctrl-C
LONG_RUNNING = ("serve", "watch", "demo")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # a console tool: no MLflow download progress bars between its lines (unless asked for)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    previous = None
    if args.command in LONG_RUNNING and threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        return args.func(args)
    except RetrainError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        # a library on the way (Ray Tune) may re-raise a plain KeyboardInterrupt
        terminated = isinstance(exc, Terminated) or bool(_STOPPED_BY)
        print(f"retrain {args.command}: stopped ({'SIGTERM' if terminated else 'Ctrl-C'})",
              file=sys.stderr)
        return 128 + (signal.SIGTERM if terminated else signal.SIGINT)
    finally:
        _STOPPED_BY.clear()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
