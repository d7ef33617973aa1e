"""`retrain` command line: init, validate, run, serve, status, history, monitor, watch,
request, readmit, backtest, rollout, demo.

Errors of the `RetrainError` tree print their message (which says how to fix the problem) and
exit with the error's code; anything else is a bug and keeps its traceback. The commands that
run until stopped (`serve`, `watch`, `demo`) stop on Ctrl-C and on SIGTERM alike: what they
started is stopped, one line says so, and they exit with 130 or 143.
"""

from __future__ import annotations

from retrain.cli.main import main
from retrain.cli.parser import build_parser

__all__ = [
    "build_parser",
    "main",
]
