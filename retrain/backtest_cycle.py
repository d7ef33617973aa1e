"""`retrain backtest --mode cycle`: replay the partitions through the product's own cycle.

Where `retrain.backtest` (``--mode fit``) fits one fixed-parameter model per retraining, this
replays what `retrain run` and `retrain watch` would have done: each retraining is a real
`retrain.pipeline.run_cycle` (admission, the search with its trial budget, refit, evaluation,
the decision, the registry) on the partitions that had arrived by then, on the connected (or a
new local) Ray cluster, with a temporary MLflow store and ledger per policy. It costs a search
per cycle; it measures the served model, not a proxy of it.

Timeline, per policy: the first cycle runs on the first ``initial`` partitions (the last of
them its holdout), once: every policy starts from that model. Then each arriving partition
is first *served*: the policy's champion (the version its ``champion`` alias points at) is
scored on it, its labels standing for the feedback that arrives later. Then the policy
decides whether to run a cycle on every partition so far (the arrived one as the holdout):
``never`` does not, ``every`` does, ``triggers`` asks `retrain.triggers.evaluate` with what
the monitor would have seen (the partition's drift against the champion's reference sketch,
the champion's metric on it, and the opportunity estimate, `retrain.opportunity`). Nothing
retrains after the last partition.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from retrain.backtest import POLICIES, BacktestResult, Period
from retrain.config import Config
from retrain.data import (
    Partition,
    feature_names,
    list_partitions,
    open_dataset,
    read_partition,
    target_values,
)
from retrain.drift import compare
from retrain.errors import DataError
from retrain.evaluate import score
from retrain.triggers import MonitorSignals, TriggerInputs, TriggerState, evaluate


@dataclass
class _Policy:
    """One policy's own project: a staged data folder, a workdir, its registry."""

    name: str
    config: Config
    cycles: int = 0
    seconds: float = 0.0


def _stage(partition: Partition, source: Path, column: str, target: Path) -> None:
    """Copy one partition's files into a policy's data folder (the cycle hashes and reads
    them as they arrive; the original dataset is never written)."""
    folder = target / f"{column}={partition.value}"
    folder.mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(partition.files):
        shutil.copyfile(path, folder / f"part-{i}{Path(path).suffix or '.parquet'}")


def _policy_config(config: Config, root: Path, name: str, trials: int | None) -> Config:
    data = config.data.model_copy(update={"path": root / name / "data"})
    project = config.project.model_copy(update={"workdir": root / name / "work",
                                                "ledger": None})
    search = config.search if trials is None else config.search.model_copy(
        update={"num_samples": trials, "storage_path": None})
    mlflow = config.mlflow.model_copy(update={"tracking_uri": None, "artifact_location": None})
    return config.model_copy(update={"data": data, "project": project, "search": search,
                                     "mlflow": mlflow})


def backtest_cycles(config: Config, *, initial: int = 2, period_s: float = 30 * 86_400.0,
                    trials: int | None = None, policies: tuple[str, ...] = POLICIES,
                    echo=None, workdir: str | None = None) -> BacktestResult:
    """Replay the partitions through real cycles under each policy (see the module doc).

    ``trials`` overrides ``search.num_samples`` (the trial budget per cycle); ``workdir``
    keeps the policies' projects there (default: a temporary folder, removed after)."""
    from retrain.registry import CHAMPION, MlflowRegistry
    from retrain.runtime import ensure_ray

    say = echo or (lambda line: None)
    partitions = list_partitions(config.data)
    _check_args(config, partitions, initial, policies)
    ensure_ray(config.ray)
    names = feature_names(config.data, open_dataset(config.data).schema.names)
    columns = (*names, config.data.target)
    root = Path(workdir or tempfile.mkdtemp(prefix="retrain-backtest-"))
    column, source = config.data.partition_column, Path(config.data.path)
    metric = config.task.primary_metric
    try:
        # "never" serves the first model of "every": the same first cycle, run once
        runs = {p: _Policy(p, _policy_config(config, root, p, trials))
                for p in policies if p != "never"}
        _first_cycles(runs, partitions[:initial], source, column, say)
        registries = {p: MlflowRegistry.from_config(r.config) for p, r in runs.items()}
        never_from = "every" if "every" in runs else next(iter(runs), None)
        first_version = {p: registries[p].alias_version(CHAMPION) for p in runs}
        state = TriggerState()
        clock = datetime(2000, 1, 1, tzinfo=timezone.utc)
        periods = []
        for t in range(initial, len(partitions)):
            partition = partitions[t]
            frame = read_partition(config.data, partition, columns)
            y = target_values(config.data, config.task.type, frame[config.data.target])
            models = {name: _served(name, registries, first_version, never_from)
                      for name in policies}
            metrics = {name: _score(metric, y, frame, *models[name]) for name in policies}
            last, reason = t == len(partitions) - 1, ""
            retrained = dict.fromkeys(policies, False)
            if "triggers" in runs and not last:
                registry, version = models["triggers"]
                now = clock + timedelta(seconds=period_s * (t - initial + 1))
                evaluation = evaluate(config.triggers, state, _inputs(
                    config, registry, version, frame, y, names, metrics["triggers"], now))
                state, reason = evaluation.state, evaluation.reason
                if evaluation.fired is not None:
                    state = state.started(now)
                    retrained["triggers"] = True
            if "every" in runs and not last:
                retrained["every"] = True
            _retrain(runs, retrained, partition, source, column, say)
            periods.append(Period(partition.value, len(frame), metrics, retrained, reason))
            say(f"{partition.value}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        cycles = {p: runs[p].cycles if p in runs else 0 for p in policies}
        seconds = {p: runs[p].seconds if p in runs else 0.0 for p in policies}
        return BacktestResult(metric, tuple(p.value for p in partitions[:initial]),
                              tuple(periods), cycles, policies=tuple(policies), seconds=seconds)
    finally:
        if workdir is None:
            shutil.rmtree(root, ignore_errors=True)


def _retrain(runs: dict, retrained: dict[str, bool], partition, source: Path, column: str,
             say) -> None:
    """The period's partition arrives in every policy's project; the policies that retrain
    now run a cycle on it."""
    from retrain.pipeline import run_cycle

    for name, run in runs.items():
        _stage(partition, source, column, Path(run.config.data.path))
        if not retrained[name]:
            continue
        began = time.perf_counter()
        result = run_cycle(run.config)
        run.seconds += time.perf_counter() - began
        run.cycles += 1
        say(f"{name}: after {partition.value}: {result.decision.verdict} "
            f"({result.decision.deciding}), serving v{result.champion_version}")


def _check_args(config: Config, partitions: list, initial: int,
                policies: tuple[str, ...]) -> None:
    if initial < 2 or len(partitions) < initial + 1:
        raise DataError(
            f"found {len(partitions)} partition(s) under {config.data.path}; a cycle backtest "
            f"with initial={initial} needs initial >= 2 (a cycle trains on at least one "
            f"partition and judges on the next) and at least {initial + 1} partitions")
    unknown = [p for p in policies if p not in POLICIES]
    if unknown:
        raise DataError(f"unknown policies {unknown}; choose from {list(POLICIES)}")


def _first_cycles(runs: dict, initial: list, source: Path, column: str, say) -> None:
    """One first cycle, its project copied to the other policies: every policy starts from
    the same first model (two searches in parallel could pick two)."""
    from retrain.pipeline import run_cycle

    leader = None
    for policy in runs.values():
        for partition in initial:
            _stage(partition, source, column, Path(policy.config.data.path))
        if leader is None:
            began = time.perf_counter()
            result = run_cycle(policy.config)
            policy.seconds += time.perf_counter() - began
            leader = policy
            say(f"first model v{result.champion_version} on "
                f"{', '.join(p.value for p in initial)}")
        else:
            # the copy's registry reads the leader's model files, which stay until the end
            shutil.copytree(leader.config.project.workdir, policy.config.project.workdir)
            policy.seconds = leader.seconds


def _served(name: str, registries: dict, first_version: dict, never_from: str | None):
    """The registry and version a policy serves now ("never": the first model)."""
    from retrain.registry import CHAMPION

    owner = never_from if name == "never" else name
    version = first_version[owner] if name == "never" \
        else registries[owner].alias_version(CHAMPION)
    return registries[owner], version


def _score(metric: str, y, frame, registry, version: str) -> float:
    model = registry.load(version)
    return float(score(metric, y, model.predict(model.spec.frame(frame))))


def _inputs(config: Config, registry, version: str, frame, y, names, live: float,
            now: datetime) -> TriggerInputs:
    """What `retrain watch` would have seen of this period: drift against the champion's
    reference, its metric on the period's labels, and the opportunity estimate."""
    from retrain.opportunity import estimate_opportunity

    reference = registry.load_reference(version)
    drift = None if reference is None else compare(reference, frame[list(names)],
                                                   policy=config.monitor.policy())
    champion = registry.load(version)
    chance = estimate_opportunity(config, champion, frame, y)
    signals = MonitorSignals(
        drift_detected=None if drift is None or drift.insufficient_data
        else drift.dataset_drifted,
        drifted_features=() if drift is None else tuple(drift.drifted),
        drifted_share=None if drift is None else drift.drifted_share,
        drift_summary="" if drift is None else drift.summary().splitlines()[0],
        rows=len(frame), live_metric=live, labelled=len(frame),
        opportunity=chance)
    return TriggerInputs(now=now, metric=config.task.primary_metric,
                         champion_metric=registry.evaluated_score(version), monitor=signals)

