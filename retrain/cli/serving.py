"""The commands on what is served: serve, and rollout (status, start, step, promote, rollback,
traffic, reconcile).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from retrain.errors import StateError, UsageError


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


def _rollout_line(rollout) -> str:
    split = " ".join(f"v{v}={w:.0%}" for v, w in rollout.split.weights.items())
    shadow = f" shadow v{rollout.split.shadow}" if rollout.split.shadow else ""
    return (f"rollout of v{rollout.challenger} over v{rollout.champion}: {rollout.stage} "
            f"(step {rollout.step + 1}/{len(rollout.plan.steps)}), traffic {split}{shadow}; "
            f"{rollout.reason}")


def _cmd_rollout(args: argparse.Namespace) -> int:
    from retrain.config import load_config
    from retrain.runtime import lower_priority

    config = load_config(args.config)
    if args.action == "start" and not args.no_wait:
        # this process only drives the rollout: it yields the CPU to serving, from before
        # the imports below (numpy, pyarrow and MLflow start threads and cost seconds of CPU)
        lower_priority(config.rollout.driver_nice)
    from retrain.operations import move_champion
    from retrain.traffic_control import RolloutDriver

    driver = RolloutDriver(config, url=args.url, echo=print)
    action = args.action
    if action == "status":
        return _rollout_status(driver)
    if action in ("start", "promote") and not args.version:
        raise UsageError(f"rollout {action} needs a VERSION, e.g. `retrain rollout {action} 4`")
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
    elif action == "rollback" and driver.active() is not None:
        print(_rollout_line(driver.roll_back(f"operator: {args.reason}")))
    elif action in ("rollback", "reconcile"):
        print(driver.reconcile())
    elif action == "promote":
        if driver.active() is not None:
            raise StateError("a rollout is in progress; roll it back first, or let it finish")
        before = move_champion(driver.registry, driver.ledger, config.model_name, args.version,
                               reasons=(f"operator: {args.reason}",))
        driver.store.write(None)  # no split: all traffic to the alias, as the move says
        print(f"champion: v{before} -> v{args.version} (all traffic, no gates)")
    else:
        _rollout_traffic(args, config, driver)
    return 0


def _rollout_status(driver) -> int:
    from retrain.registry import CHAMPION

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


def _rollout_traffic(args: argparse.Namespace, config, driver) -> None:
    """A manual split, e.g. ``3=0.9 4=0.1 [--shadow 5]``."""
    from retrain.operations import set_traffic
    from serve.traffic import TrafficSplit

    if driver.active() is not None:
        raise StateError("a rollout is in progress and owns the split; roll it back first")
    weights = {}
    for item in ([args.version] if args.version else []) + args.weights:
        version, _, weight = item.partition("=")
        try:
            weights[version] = float(weight)
        except ValueError:
            raise UsageError(f"traffic {item!r}: expected VERSION=WEIGHT, e.g. 3=0.9") from None
    try:
        split = TrafficSplit(weights, shadow=args.shadow, sticky_key=config.rollout.sticky_key)
    except ValueError as exc:
        raise UsageError(f"traffic: {exc}") from None
    set_traffic(driver.store, driver.ledger, config.model_name, split,
                reasons=(f"operator: {args.reason}",), details={"split": split.to_dict()})
    print(f"registry split: {json.dumps(split.to_dict())}")
