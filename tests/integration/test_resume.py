"""Resuming after the driver dies, on a real Ray cluster and a real SQLite MLflow store.

A cycle runs in a driver subprocess connected to the session's cluster. Once the Tune
experiment state it saves records finished trials (and some are still to run), the test kills
the driver (SIGKILL, by its pid) and resumes the cycle with ``retrain run --resume`` in this
process. The finished trials must not run again (their result logs stay byte for byte the
same; a trial that had reached its final checkpoint reports no earlier round again), every
trial appears once, and the cycle reaches a decision in the MLflow run it started with.

The pure parts (the stage record, the checks before resuming, a trial's history across a
restart) are tested first, without Ray.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from retrain.cli import main
from retrain.errors import DataError, RegistryError
from retrain.pipeline import CycleStage, read_stages, save_stage, unfinished_cycle
from retrain.pipeline.state import _check_resumable
from retrain.search.resume import _last_run
from retrain.trial_report import METRICS_FILE, RECORDS_DIR
from tests.synthetic import config_dict, write_partitions

# --- pure -------------------------------------------------------------------------------------


def _stage(cycle_id: str, stage: str, started_at: float) -> CycleStage:
    return CycleStage(cycle_id=cycle_id, stage=stage, run_id=f"run-{cycle_id}",
                      champion_version="3", partitions={"1": "aa", "2": "bb"},
                      excluded=("0",), judged=("2",), started_at=started_at)


def test_the_stage_record_round_trips_and_only_the_newest_unfinished_cycle_resumes(tmp_path):
    assert unfinished_cycle(tmp_path / "none") is None
    save_stage(tmp_path, _stage("a", "done", 1.0))
    save_stage(tmp_path, _stage("b", "searched", 2.0))
    stages = read_stages(tmp_path)
    assert [s.cycle_id for s in stages] == ["a", "b"]
    assert stages[1] == replace(_stage("b", "searched", 2.0), updated_at=stages[1].updated_at)
    assert unfinished_cycle(tmp_path).cycle_id == "b"
    assert stages[1].reached("started") and stages[1].reached("searched")
    assert not stages[1].reached("decided")
    # a newer finished cycle means the older unfinished one is history, not work to resume
    save_stage(tmp_path, _stage("c", "done", 3.0))
    assert unfinished_cycle(tmp_path) is None
    # written whole: nothing but the records is left in the folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.json", "c.json"]


def test_a_kept_decision_comes_back_as_it_was_recorded(tmp_path):
    from retrain.decide import Check, Decision, Verdict

    decision = Decision(Verdict.KEEP, ("no evidence",), "auc", 0.81, 0.8,
                        (Check("superiority", False, "lower bound -0.01", hard=False),))
    stage = save_stage(tmp_path, replace(_stage("a", "decided", 1.0),
                                         decision=decision.to_dict()))
    assert read_stages(tmp_path)[0].kept_decision() == decision == stage.kept_decision()


class _Partition:
    def __init__(self, value: str, digest: str) -> None:
        self.value, self.digest = value, digest


def test_resuming_on_other_data_or_after_the_champion_moved_is_refused():
    stage = _stage("a", "searched", 1.0)
    same = [_Partition("1", "aa"), _Partition("2", "bb")]
    _check_resumable(stage, same, "3")
    with pytest.raises(DataError, match=r"added \['3'\], removed \[\], changed \['2'\]"):
        _check_resumable(stage, [_Partition("1", "aa"), _Partition("2", "cc"),
                                 _Partition("3", "dd")], "3")
    with pytest.raises(RegistryError, match="points at version 4 but the cycle compared "
                                            "against 3"):
        _check_resumable(stage, same, "4")
    # after its own promotion the alias names the cycle's version, and it may still finish
    _check_resumable(replace(stage, stage="registered", model_version="4"), same, "4")


def test_a_trial_history_keeps_only_its_last_run():
    run = [{"round": r, "score": r / 100} for r in (10, 20, 30)]
    assert _last_run(run) == tuple(run)
    # restarted from scratch after a resume: the first run's rounds go
    assert _last_run([*run[:2], *run]) == tuple(run)
    # restored from its final checkpoint: the final round is reported once more
    assert _last_run([*run, dict(run[-1], score=0.3)]) == (*run[:2], dict(run[-1], score=0.3))


def test_finished_trials_are_told_to_tpe_with_the_distributions_it_would_have_used():
    import optuna

    from retrain.candidates import FamilySpace, families, family_distributions
    from retrain.config import config_from_dict
    from retrain.search import TrialResult
    from retrain.search.resume import _told_storage

    config = config_from_dict(config_dict("data", "work"))
    active = families(config.search)
    space = FamilySpace(active)
    xgb = active[0]
    dists = family_distributions(xgb)
    assert dists, "the default XGBoost family searches some parameters"
    params = {k.split("/", 1)[1]: d.low if hasattr(d, "low") else d.choices[0]
              for k, d in dists.items()}
    told = (
        TrialResult("a", params, "completed", 0.8, 100, 1.0,
                    history=({"round": 50, "score": 0.7}, {"round": 100, "score": 0.8}),
                    family=xgb.name),
        TrialResult("b", params, "stopped", 0.6, 50, 1.0,
                    history=({"round": 50, "score": 0.6},), family=xgb.name),
        TrialResult("c", params, "failed", None, 0, 0.0, error="boom", family=xgb.name),
        # a family this search does not run: left out, not an error
        TrialResult("d", {}, "completed", 0.9, 1, 1.0, family="no_such_family"),
    )
    assert _told_storage(space, (), "max") is None
    storage = _told_storage(space, told, "max")
    study = optuna.load_study(study_name="optuna", storage=storage)
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE,
                                         optuna.trial.TrialState.PRUNED,
                                         optuna.trial.TrialState.FAIL]
    assert trials[0].value == 0.8 and trials[0].intermediate_values == {50: 0.7, 100: 0.8}
    assert trials[0].distributions == dists
    assert trials[0].params == {k: params[k.split("/", 1)[1]] for k in dists}


def test_a_search_reads_back_the_records_its_trials_left_as_they_finished(tmp_path):
    """`RECORDS_DIR` without Tune's experiment state (a driver that died before Tune first
    saved it): a whole final is completed, a driver record is stopped or failed, and a
    final cut short or a file still being written is not a finished trial."""
    from retrain.search import save_final
    from retrain.search.resume import _earlier_experiments, _finished_trials

    experiment = tmp_path / "tune" / "search"
    records = experiment / RECORDS_DIR
    config = {"family": "xgboost", "max_depth": 3}
    reports = [{"round": 10, "valid_score": 0.7, "trial_id": "t"},
               {"round": 20, "valid_score": 0.8, "trial_id": "t"}]
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    (checkpoint / "model.ubj").write_bytes(b"x" * 100)
    final = {**reports[-1], "final": 1, "best_round": 20, "trial_id": "done",
             "config": config, "reports": reports, "files": {"model.ubj": 100}}
    (checkpoint / METRICS_FILE).write_text(json.dumps(final))
    save_final(str(records), "done", checkpoint)
    save_final(str(records), "cut", checkpoint)
    (records / "cut" / "model.ubj").write_bytes(b"x" * 10)  # cut short by a crash
    for trial_id, status, error in (("asha", "terminated", None),
                                    ("boom", "error", "ValueError: boom")):
        (records / f"{trial_id}.json").write_text(json.dumps(
            {"trial_id": trial_id, "status": status, "error": error, "config": config,
             "reports": reports[:1]}))
    (records / "late.json.partial-0a1b2c3d").write_text("{")  # still being written

    assert _earlier_experiments(str(tmp_path / "tune"), "search") == [str(experiment)]
    found = {t.trial_id: t for t in _finished_trials(str(experiment), {"xgboost": 20})}
    assert set(found) == {"done", "asha", "boom"}
    assert found["done"].status == "completed" and found["done"].score == 0.8
    assert found["done"].checkpoint is not None
    assert [h["round"] for h in found["done"].history] == [10, 20]
    assert found["asha"].status == "stopped" and found["asha"].rounds == 10
    assert found["boom"].status == "failed" and found["boom"].error == "ValueError: boom"
    assert not list(records.glob("*/*.partial-*"))


# --- a dead driver, on a real cluster ----------------------------------------------------------

TRIALS, ROUNDS, EVERY = 8, 200, 25

DRIVER = """
import sys
import ray
from retrain import load_config, run_cycle
ray.init(address=sys.argv[2], logging_level="WARNING")
run_cycle(load_config(sys.argv[1]))
"""


def _whole_final(folder: Path) -> bool:
    """Whether a trial folder holds its final checkpoint, every file at the size recorded."""
    for metrics in folder.glob(f"checkpoint_*/{METRICS_FILE}"):
        try:
            record = json.loads(metrics.read_text())
            sizes, _ = record["files"], record["config"]
        except (json.JSONDecodeError, KeyError):
            continue
        if all((metrics.parent / n).exists() and (metrics.parent / n).stat().st_size == size
               for n, size in sizes.items()):
            return True
    return False


def _trial_folders(experiment: Path) -> dict[str, dict]:
    """trial folder -> its result log (bytes) and whether it holds a whole final checkpoint."""
    return {folder.name: {"log": (folder / "result.json").read_bytes()
                          if (folder / "result.json").exists() else b"",
                          "final": _whole_final(folder)}
            for folder in experiment.glob("_trial_*")}


def _kill_driver_when(tmp_path: Path, config: Path, ray_cluster: dict, ready, *, what: str,
                      interval: float, timeout_s: float = 300) -> Path:
    """Run a cycle in a driver subprocess on the session's cluster and kill it (SIGKILL, by its
    pid) as soon as ``ready(experiment folder)`` holds; the experiment folder is returned.
    Fails when the driver ends first, or (``what``) when nothing is ready within the time."""
    cycles, tune_root = tmp_path / "work" / "cycles", tmp_path / "work" / "tune"
    log = (tmp_path / "driver.log").open("w")
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, str(config), ray_cluster["address"]],
                              env=ray_cluster["env"], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            assert driver.poll() is None, \
                f"the driver ended before it was killed:\n{(tmp_path / 'driver.log').read_text()}"
            assert time.monotonic() < deadline, f"{what} within {timeout_s:g} s"
            stages = read_stages(cycles)
            if stages:
                experiment = tune_root / f"synthetic-{stages[0].cycle_id}"
                if ready(experiment):
                    break
            time.sleep(interval)
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
        log.close()
    return experiment


def _rounds(log: bytes) -> list[int]:
    return [json.loads(line)["round"] for line in log.decode().splitlines() if line.strip()]


@pytest.mark.ray
@pytest.mark.slow
def test_a_search_whose_driver_died_resumes_without_running_finished_trials_again(
    ray_cluster, tmp_path, capsys
):
    write_partitions(tmp_path / "data", [1, 2, 3], rows=30000, seed=5)
    raw = config_dict(tmp_path / "data", tmp_path / "work",
                      search={"num_samples": TRIALS, "num_boost_round": ROUNDS,
                              "report_every": EVERY, "early_stopping": False,
                              "early_stopping_rounds": None},
                      resources={"cpus_per_trial": 0.9})
    path = tmp_path / "retrain.yaml"
    path.write_text(yaml.safe_dump(raw))
    cycles, tune_root = tmp_path / "work" / "cycles", tmp_path / "work" / "tune"
    experiment = _kill_driver_when(
        tmp_path, path, ray_cluster,
        lambda e: sum(f["final"] for f in _trial_folders(e).values()) >= 2,
        what="no two trials finished", interval=0.1)
    # what the dead driver left (a trial may have finished between the check and the kill)
    before = _trial_folders(experiment)
    finished = {name for name, f in before.items() if f["final"]}
    cycle = read_stages(cycles)[0]
    assert cycle.stage == "started"  # it died inside the search
    assert 2 <= len(finished) < TRIALS, "every trial had finished before the kill"

    assert main(["run", "--config", str(path), "--resume", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    shown = {t: (len(_rounds(f["log"])), f["final"]) for t, f in before.items()}
    print(f"killed with {len(finished)} of {TRIALS} trials finished; (reports, final): {shown}")

    # the same cycle, continued from its stage, reached a decision
    assert out["cycle_id"] == cycle.cycle_id and out["resumed_from"] == "started"
    assert out["run_id"] == cycle.run_id
    assert out["decision"]["verdict"] == "promote"
    assert out["trials"]["completed"] == TRIALS
    final = read_stages(cycles)
    assert len(final) == 1 and final[0].stage == "done" and final[0].attempts == 2

    # the finished trials were not run again: their folders are as the dead driver left them,
    # and the resumed run (a new experiment beside the first) ran only the rest of the budget
    after = _trial_folders(experiment)
    for name in finished:
        assert after[name] == before[name], name
    resumed = _trial_folders(tune_root / f"synthetic-{cycle.cycle_id}.resume1")
    assert len(resumed) == TRIALS - len(finished)
    for name, folder in resumed.items():
        assert folder["final"] and _rounds(folder["log"])[-1] == ROUNDS, name

    # one MLflow run for the cycle, finished, with one child run per trial
    uri = f"sqlite:///{tmp_path / 'work' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    run = client.get_run(cycle.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["retrain.resumed_from"] == "started"
    children = client.search_runs(
        [run.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{cycle.run_id}'")
    assert len(children) == TRIALS
    cycle_runs = client.search_runs(
        [run.info.experiment_id], filter_string=f"tags.`retrain.cycle_id` = '{cycle.cycle_id}'")
    assert [r.info.run_id for r in cycle_runs] == [cycle.run_id]
    assert str(client.get_model_version_by_alias("synthetic", "champion").version) == "1"


# --- finished trials are durable the moment they finish -----------------------------------


def _recorded(experiment: Path) -> tuple[set[str], set[str]]:
    """The trials a search's own records (`RECORDS_DIR`) say finished: those with a whole
    final model, and those whose end (stopped by ASHA, or failed) the driver wrote."""
    records = experiment / RECORDS_DIR
    finals = {m.parent.name for m in records.glob(f"*/{METRICS_FILE}")
              if _whole_record(m.parent)}
    ended = {p.stem for p in records.glob("*.json")}
    return finals, ended - finals


def _whole_record(folder: Path) -> bool:
    try:
        sizes = json.loads((folder / METRICS_FILE).read_text())["files"]
    except (OSError, json.JSONDecodeError, KeyError):
        return False
    return all((folder / n).exists() and (folder / n).stat().st_size == s
               for n, s in sizes.items())


def _tune_knows(experiment: Path) -> set[str]:
    """The trials Tune's saved experiment state (on storage) records as ended."""
    from ray.tune import ExperimentAnalysis

    try:
        trials = ExperimentAnalysis(str(experiment)).trials
    except Exception:  # no state saved yet
        return set()
    return {t.trial_id for t in trials if t.status in ("TERMINATED", "ERROR")}


@pytest.mark.ray
@pytest.mark.slow
def test_trials_asha_stopped_just_before_the_driver_died_are_not_run_again(
    ray_cluster, tmp_path, capsys
):
    """The adversarial pass's case: ASHA on, the driver killed a moment after Tune stopped a
    trial. Tune's own record of that (its experiment state, params.json, result.json) is
    written on the driver in Ray's session folder and reaches storage only at its next sync;
    the search's own record is on storage as Tune stops the trial."""
    trials = 8
    write_partitions(tmp_path / "data", [1, 2, 3], rows=20000, seed=5)
    raw = config_dict(tmp_path / "data", tmp_path / "work",
                      search={"num_samples": trials, "num_boost_round": 120,
                              "report_every": 10, "early_stopping": True,
                              "early_stopping_rounds": None,
                              "asha": {"grace_period": 1, "reduction_factor": 2}},
                      resources={"cpus_per_trial": 0.9})
    path = tmp_path / "retrain.yaml"
    path.write_text(yaml.safe_dump(raw))
    cycles, tune_root = tmp_path / "work" / "cycles", tmp_path / "work" / "tune"
    experiment = _kill_driver_when(tmp_path, path, ray_cluster, lambda e: _recorded(e)[1],
                                   what="ASHA stopped no trial", interval=0.05)
    # what the dead driver left: the records are final now (a trial may have ended between
    # the check and the kill, and counts then too)
    finals, stopped = _recorded(experiment)
    finished = finals | stopped
    unknown = finished - _tune_knows(experiment)
    cycle = read_stages(cycles)[0]
    assert cycle.stage == "started"
    assert stopped and len(finished) < trials

    assert main(["run", "--config", str(path), "--resume", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    print(f"killed with {len(finals)} completed and {len(stopped)} stopped trials recorded; "
          f"Tune's saved state knew {len(finished - unknown)} of them")
    assert out["cycle_id"] == cycle.cycle_id and out["resumed_from"] == "started"
    assert sum(out["trials"].values()) == trials
    assert out["trials"]["stopped"] >= len(stopped)
    # only the budget the records did not account for ran again, as a new experiment
    resumed = tune_root / f"synthetic-{cycle.cycle_id}.resume1"
    assert len(list(resumed.glob("_trial_*"))) == trials - len(finished)
    # one trial run each: the recorded trials (by their first-run ids) and the rest
    uri = f"sqlite:///{tmp_path / 'work' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    children = client.search_runs(
        [client.get_run(cycle.run_id).info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{cycle.run_id}'")
    names = [c.info.run_name.removeprefix("trial-") for c in children]
    assert len(names) == len(set(names)) == trials
    assert finished <= set(names)
    assert {c.info.run_name.removeprefix("trial-") for c in children
            if c.data.tags["retrain.trial_status"] == "stopped"} >= stopped


# --- registration is idempotent ------------------------------------------------------------

#: a driver that dies (SIGKILL, by its own pid) the moment MLflow has created the version,
#: before `register` returns and the cycle records the version
DIES_AFTER_REGISTERING = """
import os
import signal
import sys

import ray
from mlflow import MlflowClient

from retrain import load_config, run_cycle

create = MlflowClient._create_model_version


def create_then_die(self, *args, **kwargs):
    version = create(self, *args, **kwargs)
    print(f"Created version {version.version}; the driver dies now", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


MlflowClient._create_model_version = create_then_die
ray.init(address=sys.argv[2], logging_level="WARNING")
run_cycle(load_config(sys.argv[1]))
"""


@pytest.mark.ray
@pytest.mark.slow
def test_a_driver_killed_right_after_registering_resumes_to_the_same_version(
    ray_cluster, tmp_path, capsys
):
    write_partitions(tmp_path / "data", [1, 2, 3], rows=3000, seed=5)
    raw = config_dict(tmp_path / "data", tmp_path / "work",
                      search={"num_samples": 2, "num_boost_round": 20, "report_every": 10})
    path = tmp_path / "retrain.yaml"
    path.write_text(yaml.safe_dump(raw))
    cycles = tmp_path / "work" / "cycles"
    done = subprocess.run(
        [sys.executable, "-c", DIES_AFTER_REGISTERING, str(path), ray_cluster["address"]],
        env=ray_cluster["env"], capture_output=True, text=True, timeout=400)
    assert done.returncode == -signal.SIGKILL, done.stdout + done.stderr
    assert "Created version 1; the driver dies now" in done.stdout
    cycle = read_stages(cycles)[0]
    # it died between MLflow's version and the cycle's record of it
    assert cycle.stage == "decided" and cycle.model_version is None

    uri = f"sqlite:///{tmp_path / 'work' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert [str(v.version) for v in client.search_model_versions("name = 'synthetic'")] == ["1"]

    assert main(["run", "--config", str(path), "--resume", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["cycle_id"] == cycle.cycle_id and out["resumed_from"] == "decided"
    versions = client.search_model_versions("name = 'synthetic'")
    assert [str(v.version) for v in versions] == ["1"]
    assert versions[0].run_id == cycle.run_id
    assert versions[0].tags["retrain.run_id"] == cycle.run_id
    assert str(client.get_model_version_by_alias("synthetic", "champion").version) == "1"
    final = read_stages(cycles)[0]
    assert final.stage == "done" and final.model_version == "1"
