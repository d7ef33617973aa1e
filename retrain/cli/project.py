"""The commands on a project's data, cycles and history: init, validate, run, status, history,
monitor, watch, request, readmit, backtest, demo.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from retrain.cli.serving import _starts_local_ray
from retrain.errors import UsageError


def _cmd_init(args: argparse.Namespace) -> int:
    from retrain.config import example_yaml

    path = Path(args.path)
    if path.exists() and not args.force:
        raise UsageError(f"{path} exists; pass --force to overwrite it")
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
        raise UsageError(
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


def _cmd_demo(args: argparse.Namespace) -> int:
    from retrain.demo import run_demo

    run_demo(
        Path(args.workdir), port=args.port, first_months=args.first_months,
        last_month=args.last_month, trials=args.trials, rounds=args.rounds,
    )
    return 0
