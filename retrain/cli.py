"""`retrain` command line: init, validate, run, serve, status, history, monitor, watch,
request, readmit, backtest, rollout, demo.

Errors of the `RetrainError` tree print their message (which says how to fix the problem) and
exit with the error's code; anything else is a bug and keeps its traceback. The commands that
run until stopped (`serve`, `watch`, `demo`) stop on Ctrl-C and on SIGTERM alike: what they
started is stopped, one line says so, and they exit with 130 or 143.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

from retrain.errors import ConfigError, RetrainError


def _cmd_init(args: argparse.Namespace) -> int:
    from retrain.config import example_yaml

    path = Path(args.path)
    if path.exists() and not args.force:
        raise ConfigError(f"{path} exists; pass --force to overwrite it")
    path.write_text(example_yaml(args.name))
    print(f"wrote {path}; edit data.path, data.partition_column and data.target, then run "
          f"`retrain validate --config {path}`")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from retrain.config import load_config
    from retrain.data import list_partitions, load_split
    from retrain.preflight import check

    config = load_config(args.config)
    check(config)  # writable paths, known URI schemes, reachable servers: fail in seconds
    partitions = list_partitions(config.data)
    split = load_split(config.data, config.task.type, partitions=partitions)
    lineage = split.lineage()
    print(f"config ok: project {config.project.name!r}, task {config.task.type} "
          f"({config.task.primary_metric})")
    print(f"data ok: train partitions {lineage['data.train_partitions']} "
          f"({lineage['data.train_rows']} rows), holdout {lineage['data.holdout_partitions']} "
          f"({lineage['data.holdout_rows']} rows), features {list(split.spec.names)}")
    from retrain.suspects import suspects_in

    for suspect in suspects_in(config, list(split.train_partitions)):
        print(f"warning: {suspect.message()}")
    for p in partitions:
        if p.problem:
            print(f"warning: partition {config.data.partition_column}={p.value} is left out: "
                  f"{p.problem}; a cycle quarantines it until its files are replaced")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from retrain.config import load_config
    from retrain.pipeline import run_cycle

    config = load_config(args.config)
    result = run_cycle(config, echo=None if args.quiet or args.json else print,
                       resume=args.resume)
    if args.json:
        print(json.dumps({
            "cycle_id": result.cycle_id,
            "run_id": result.run_id,
            "resumed_from": result.resumed_from,
            "decision": result.decision.to_dict(),
            "model_version": result.model_version,
            "champion_version": result.champion_version,
            "trials": {s: result.search.count(s) for s in ("completed", "stopped", "failed")},
            "lineage": result.lineage,
            "wall_seconds": round(result.wall_seconds, 2),
        }, indent=2))
    else:
        print(result.decision.summary())
        print(f"champion: version {result.champion_version}; cycle run {result.run_id} "
              f"({result.wall_seconds:.1f}s)")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from retrain.config import load_config
    from retrain.serving import check_port_free, start_serving

    config = load_config(args.config)
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    if overrides:
        config = config.model_copy(
            update={"serving": config.serving.model_copy(update=overrides)})
    if args.write_config:
        import yaml

        from retrain.serving import serve_config

        Path(args.write_config).write_text(yaml.safe_dump(serve_config(config), sort_keys=False))
        print(f"wrote {args.write_config}; deploy it with `serve deploy {args.write_config}` "
              f"(set {config.serving.admin_token_env} where the app is built)")
        return 0
    local = _starts_local_ray(config)
    if local:  # Serve binds the port on this machine: say so now, not in a Ray traceback
        host, port = config.serving.host, config.serving.port
        check_port_free(host, port, fix=f"pass a free one with --port (or --host), or change "
                                        f"serving.port in {args.config}")
    try:
        url = start_serving(config)
        print(f"serving {config.model_name}@champion at {url}/invocations (health: "
              f"{url}/health)", flush=True)
        if args.detach:
            return 0
        print("Ctrl-C or SIGTERM stops it", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:  # Ctrl-C, SIGTERM (also while starting): stop what we started
        if local:
            from retrain.runtime import THIRD_PARTY_LOG, shutdown_quietly

            shutdown_quietly(config.project.workdir / THIRD_PARTY_LOG)
        else:  # a cluster's Serve may hold other apps: only ours goes
            from ray import serve

            serve.delete(config.serving.app_name)
        print(f"stopped serving on {config.serving.host}:{config.serving.port}",
              file=sys.stderr, flush=True)
        raise


def _starts_local_ray(config) -> bool:
    """Whether `ensure_ray` will start a local runtime (not attach to a cluster)."""
    if config.ray.address or os.environ.get("RAY_ADDRESS"):
        return False
    if "ray" in sys.modules:
        import ray

        return not ray.is_initialized()
    return True


def _cmd_status(args: argparse.Namespace) -> int:
    from retrain.config import load_config
    from retrain.registry import CHAMPION, MlflowRegistry

    config = load_config(args.config)
    registry = MlflowRegistry.from_config(config)
    champion = registry.alias_version(CHAMPION)
    print(f"model {config.model_name!r} at {config.tracking_uri}")
    print(f"champion: {'version ' + champion if champion else 'none yet'}")
    cycles = registry.recent_cycles(args.limit)
    if not cycles:
        print("no cycles yet: run `retrain run --config ...`")
        return 0
    print(f"last {len(cycles)} cycle(s), newest first:")
    for c in cycles:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(c.started))
        version = f" -> v{c.model_version}" if c.model_version else ""
        print(f"  {when}  {c.status:<8} {(c.verdict or '-'):<7}{version:<6} "
              f"holdout={c.holdout or '-'}  challenger={c.challenger_score or '-'} "
              f"champion={c.champion_score or '-'}")
        if c.reasons:
            print(f"      {c.reasons}")
    return 0


def _parse_time(text: str) -> float:
    from datetime import datetime, timezone

    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            f"--at {text!r} is neither unix seconds nor an ISO time like 2026-11-27T14:30:00"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def _cmd_history(args: argparse.Namespace) -> int:
    from retrain.config import load_config
    from retrain.ledger import Ledger, format_events

    config = load_config(args.config)
    ledger = Ledger(config.ledger_path)
    if args.at is not None:
        at = _parse_time(args.at)
        served = ledger.served_at(config.model_name, at, alias=args.alias)
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))
        if served is None:
            print(f"at {when} alias {args.alias!r} of {config.model_name!r} pointed at nothing")
            return 0
        since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(served.since))
        print(f"at {when} {config.model_name}@{args.alias} was version {served.version} "
              f"(since {since}, {served.because.kind.value})")
        why = served.decision.reasons if served.decision else served.because.reasons
        for reason in why:
            print(f"  because: {reason}")
        return 0
    print(format_events(ledger.events(model_name=config.model_name, limit=args.limit)))
    return 0


def _cmd_monitor(args: argparse.Namespace) -> int:
    from retrain.config import load_config
    from retrain.monitor import check

    report = check(load_config(args.config))
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    print(report.summary())  # one line per drifted feature, the live metric on its own
    return 0


def _cmd_watch(args: argparse.Namespace) -> int:
    from retrain.config import load_config
    from retrain.watch import Controller

    config = load_config(args.config)
    t = config.triggers
    print(f"watching {config.model_name!r}: every {t.check_interval_s:g}s; inference log "
          f"{config.inference_log_path}; ledger {config.ledger_path} (Ctrl-C stops)",
          flush=True)
    local = _starts_local_ray(config)
    try:
        with Controller(config, echo=lambda line: print(line, flush=True)) as controller:
            cycles = controller.run(max_ticks=1 if args.once else args.max_checks)
    finally:
        if local:  # the Ray runtime its cycles started, if any: stopped, quietly
            from retrain.runtime import THIRD_PARTY_LOG, shutdown_quietly

            shutdown_quietly(config.project.workdir / THIRD_PARTY_LOG)
    print(f"stopped after starting {cycles} cycle(s)")
    return 0


def _cmd_request(args: argparse.Namespace) -> int:
    from retrain.config import load_config
    from serve.inference_log import request_retrain

    config = load_config(args.config)
    request = request_retrain(config.inference_log_path, reason=args.reason,
                              requested_by="cli")
    print(f"requested a cycle ({request.id}); `retrain watch` starts it at its next check "
          "(the cap on cycles per period still applies)")
    return 0


def _cmd_readmit(args: argparse.Namespace) -> int:
    from retrain.config import load_config
    from retrain.quarantine import readmit

    config = load_config(args.config)
    entry = readmit(config, args.partition, reason=args.reason)
    print(f"released {config.data.partition_column}={args.partition} (content "
          f"{entry['digest'][:12]}): the next cycle trains on it as it is; recorded in the "
          "ledger")
    return 0


def _cmd_backtest(args: argparse.Namespace) -> int:
    from retrain.backtest import backtest
    from retrain.config import load_config

    config = load_config(args.config)
    if args.mode == "cycle":
        from retrain.backtest_cycle import backtest_cycles

        result = backtest_cycles(config, initial=args.initial,
                                 period_s=args.period_days * 86_400, trials=args.trials,
                                 echo=None if args.json else print)
    else:
        result = backtest(config, initial=args.initial, period_s=args.period_days * 86_400)
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.table())
    return 0


def _rollout_line(rollout) -> str:
    split = " ".join(f"v{v}={w:.0%}" for v, w in rollout.split.weights.items())
    shadow = f" shadow v{rollout.split.shadow}" if rollout.split.shadow else ""
    return (f"rollout of v{rollout.challenger} over v{rollout.champion}: {rollout.stage} "
            f"(step {rollout.step + 1}/{len(rollout.plan.steps)}), traffic {split}{shadow}; "
            f"{rollout.reason}")


def _cmd_rollout(args: argparse.Namespace) -> int:
    from retrain.config import load_config
    from retrain.ledger import EventKind, LedgerEvent
    from retrain.registry import CHAMPION
    from retrain.traffic_control import RolloutDriver
    from serve.traffic import TrafficSplit

    config = load_config(args.config)
    driver = RolloutDriver(config, url=args.url, echo=print)
    action = args.action
    if action == "status":
        rollout = driver.load()
        print(f"champion: v{driver.registry.alias_version(CHAMPION)}")
        split = driver.store.read()
        print("registry split: " + ("none (all traffic to the champion)" if split is None
                                     else json.dumps(split.to_dict())))
        print(_rollout_line(rollout) if rollout else "no rollout yet")
        if rollout is not None:
            for gate in rollout.gates:
                print(f"  {gate.name}: {gate.status} - {gate.reason}")
        return 0
    if action in ("start", "promote") and not args.version:
        raise ConfigError(f"rollout {action} needs a VERSION, e.g. `retrain rollout {action} 4`")
    if action == "start":
        rollout = driver.start(args.version)
        print(_rollout_line(rollout))
        if args.no_wait:
            return 0
        rollout = driver.run(poll_s=args.poll_s, timeout_s=args.timeout_s)
        print(_rollout_line(rollout))
        return 0 if rollout.stage.value == "completed" else 1
    if action == "step":
        print(_rollout_line(driver.step()))
        return 0
    if action == "rollback":
        if driver.active() is not None:
            print(_rollout_line(driver.roll_back(f"operator: {args.reason}")))
            return 0
        print(driver.reconcile())
        return 0
    if action == "reconcile":
        print(driver.reconcile())
        return 0
    if action == "promote":
        if driver.active() is not None:
            raise ConfigError("a rollout is in progress; roll it back first, or let it finish")
        before = driver.registry.alias_version(CHAMPION)
        driver.registry.require_version(args.version)
        driver.registry.set_alias(CHAMPION, args.version)
        driver.store.write(None)
        driver.ledger.append(LedgerEvent(
            kind=EventKind.ALIAS_MOVE if before is None or int(args.version) > int(before)
            else EventKind.ROLLBACK,
            model_name=config.model_name, alias=CHAMPION, version=args.version,
            previous_version=before, reasons=(f"operator: {args.reason}",)))
        print(f"champion: v{before} -> v{args.version} (all traffic, no gates)")
        return 0
    # traffic: a manual split, e.g. 3=0.9 4=0.1 [--shadow 5]
    if driver.active() is not None:
        raise ConfigError("a rollout is in progress and owns the split; roll it back first")
    weights = {}
    for item in ([args.version] if args.version else []) + args.weights:
        version, _, weight = item.partition("=")
        try:
            weights[version] = float(weight)
        except ValueError:
            raise ConfigError(f"traffic {item!r}: expected VERSION=WEIGHT, e.g. 3=0.9") from None
    try:
        split = TrafficSplit(weights, shadow=args.shadow, sticky_key=config.rollout.sticky_key)
    except ValueError as exc:
        raise ConfigError(f"traffic: {exc}") from None
    driver.store.write(split)
    driver.ledger.append(LedgerEvent(
        kind=EventKind.TRAFFIC_STEP, model_name=config.model_name,
        traffic={v: w for v, w in split.weights.items() if w > 0},
        reasons=(f"operator: {args.reason}",), details={"split": split.to_dict()}))
    print(f"registry split: {json.dumps(split.to_dict())}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from retrain.demo import run_demo

    run_demo(
        Path(args.workdir), port=args.port, first_months=args.first_months,
        last_month=args.last_month, trials=args.trials, rounds=args.rounds,
    )
    return 0


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
    return parser


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


if __name__ == "__main__":
    sys.exit(main())
