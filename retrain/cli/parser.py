"""The command line's grammar: one subcommand each, with its options and help."""

from __future__ import annotations

import argparse

from retrain.cli.project import (
    _cmd_backtest,
    _cmd_demo,
    _cmd_history,
    _cmd_init,
    _cmd_monitor,
    _cmd_readmit,
    _cmd_request,
    _cmd_run,
    _cmd_status,
    _cmd_validate,
    _cmd_watch,
)
from retrain.cli.serving import _cmd_rollout, _cmd_serve


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("retrain")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "(not installed)"


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 1-65535, got {text!r}")
    return port


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="retrain", description="Keep production models good as data changes, on Ray."
    )
    parser.add_argument("--version", action="version", version=f"retrain {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _cycle_commands(sub)
    _watch_commands(sub)
    _serving_commands(sub)
    return parser


def _cycle_commands(sub) -> None:
    """init, validate, run, serve, status, history"""
    p = sub.add_parser("init", help="write a commented example config")
    p.add_argument("path", nargs="?", default="retrain.yaml")
    p.add_argument("--name", default="my-project", help="project name")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p.set_defaults(func=_cmd_init)

    p = sub.add_parser("validate", help="check a config and the data it points at")
    p.add_argument("--config", required=True)
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("run", help="run one retraining cycle")
    p.add_argument("--config", required=True)
    p.add_argument("--quiet", action="store_true", help="print only the decision")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--resume", action="store_true",
                   help="continue the newest cycle if it did not finish (its driver died), "
                        "from the stage it reached; finished trials are not run again")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("serve", help="serve the champion over HTTP with Ray Serve")
    p.add_argument("--config", required=True)
    p.add_argument("--detach", action="store_true",
                   help="deploy and return (the app lives on in the Ray cluster)")
    p.add_argument("--write-config", metavar="FILE",
                   help="write a `serve deploy` config of the app instead of deploying it")
    p.add_argument("--host", help="listen on this address (default: serving.host)")
    p.add_argument("--port", type=_port, help="listen on this port (default: serving.port)")
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("status", help="show the champion and the last decisions")
    p.add_argument("--config", required=True)
    p.add_argument("--limit", type=int, default=10)
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser("history", help="the ledger: decisions, alias moves, rollbacks")
    p.add_argument("--config", required=True)
    p.add_argument("--limit", type=int, default=50, help="newest N events")
    p.add_argument("--at", help="which version served at this time (ISO or unix seconds)")
    p.add_argument("--alias", default="champion")
    p.set_defaults(func=_cmd_history)


def _watch_commands(sub) -> None:
    """monitor, watch, request, readmit, backtest"""
    p = sub.add_parser("monitor", help="live drift and live metric of the champion, now")
    p.add_argument("--config", required=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_monitor)

    p = sub.add_parser("watch", help="check the triggers and start cycles, until stopped")
    p.add_argument("--config", required=True)
    p.add_argument("--once", action="store_true", help="check once and exit")
    p.add_argument("--max-checks", type=int, default=None, help="exit after N checks")
    p.set_defaults(func=_cmd_watch)

    p = sub.add_parser("request", help="ask `retrain watch` for a cycle (on demand)")
    p.add_argument("--config", required=True)
    p.add_argument("--reason", default="", help="recorded with the request")
    p.set_defaults(func=_cmd_request)

    p = sub.add_parser("readmit", help="release a quarantined partition as it is")
    p.add_argument("partition", help="the partition value, e.g. 7 for month=7")
    p.add_argument("--config", required=True)
    p.add_argument("--reason", required=True, help="why it may be trained on (recorded)")
    p.set_defaults(func=_cmd_readmit)

    p = sub.add_parser("backtest", help="replay the partitions: never / every period / "
                       "the configured triggers")
    p.add_argument("--config", required=True)
    p.add_argument("--initial", type=int, default=2,
                   help="partitions the first model trains on")
    p.add_argument("--period-days", type=float, default=30.0,
                   help="time between partitions, for the schedule, cooldown and cap")
    p.add_argument("--mode", choices=["fit", "cycle"], default="fit",
                   help="fit: one fixed-parameter fit per retraining (fast, no Ray); cycle: "
                        "the real cycle (search, refit, decision) on a local Ray cluster")
    p.add_argument("--trials", type=int, default=None,
                   help="cycle mode: trials per cycle (default: search.num_samples)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_backtest)


def _serving_commands(sub) -> None:
    """rollout, demo"""
    p = sub.add_parser("rollout", help="traffic between versions: status, start, step, "
                       "promote, rollback, traffic, reconcile")
    p.add_argument("action", choices=["status", "start", "step", "promote", "rollback",
                                      "traffic", "reconcile"])
    p.add_argument("version", nargs="?", help="start/promote: the version")
    p.add_argument("weights", nargs="*", help="traffic: VERSION=WEIGHT ... (summing to 1)")
    p.add_argument("--config", required=True)
    p.add_argument("--url", help="the Serve app (default: from the config's serving section)")
    p.add_argument("--shadow", help="traffic: a version that gets mirrored requests")
    p.add_argument("--reason", default="manual", help="recorded in the ledger")
    p.add_argument("--no-wait", action="store_true", help="start: return after starting")
    p.add_argument("--poll-s", type=float, default=2.0)
    p.add_argument("--timeout-s", type=float, default=None,
                   help="start: roll back if not completed within this time")
    p.set_defaults(func=_cmd_rollout)

    p = sub.add_parser("demo", help="the whole loop on NYC flights 2013, locally")
    p.add_argument("--workdir", default="retrain-demo")
    p.add_argument("--port", type=_port, default=8000)
    p.add_argument("--first-months", type=int, default=3,
                   help="months present at the start (the last is the first holdout)")
    p.add_argument("--last-month", type=int, default=12)
    p.add_argument("--trials", type=int, default=4, help="trials per cycle")
    p.add_argument("--rounds", type=int, default=300,
                   help="the most boosting rounds of a trial (trials stop early at their best)")
    p.set_defaults(func=_cmd_demo)
