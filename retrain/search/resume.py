"""Reading back an earlier run of the same experiment: finished trials from their records, told to
Optuna so the search goes on where it stopped.

When ``<storage_path>/<name>`` already holds a Tune experiment (a driver died
mid-search, or a cycle resumes after its search), the trials it finished are read back
from their folders and only the rest of the budget runs, as a new experiment
``<name>.resume<k>``. Finished means: a final checkpoint with its result
(`METRICS_FILE`), which a trial writes itself, so a trial that finished a moment before
the driver died counts even when Tune's saved experiment state (written every few
seconds) still calls it running; or stopped early (ASHA) or failed, as that state
records. Trials that were running are not continued: their samples are handed out
again. TPE starts the new experiment knowing every finished trial's parameters and
score. (We read folders instead of ``Tuner.restore`` because a restored experiment
knows only what its last saved state knew, and would train again a trial that had
finished after it.)
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from retrain.candidates import (
    FAMILY_ATTR,
    FamilySpace,
    default_params,
    family_distributions,
    trial_family,
)
from retrain.search.records import _last_line, storage_fs
from retrain.search.results import Status, TrialResult
from retrain.trial_report import (
    AT_KEY,
    BEST_ROUND_KEY,
    CONFIG_KEY,
    ERROR_KEY,
    FINAL_KEY,
    FIT_KEY,
    MANIFEST_KEY,
    METRICS_FILE,
    RECORDS_DIR,
    REPORTS_KEY,
    SCORE_KEY,
    STATUS_KEY,
    TRAINED_KEY,
)


def _earlier_experiments(storage: str, name: str) -> list[str]:
    """This search's experiments already on storage: ``name``, then its resumes in order."""
    import pyarrow.fs as pafs
    from ray import tune

    found = []
    for k in range(1000):
        path = f"{storage.rstrip('/')}/{name}" + (f".resume{k}" if k else "")
        fs, base = storage_fs(path)
        # a driver that died before Tune first saved the experiment may have left records
        if not tune.Tuner.can_restore(path) and fs.get_file_info(
                f"{base}/{RECORDS_DIR}").type != pafs.FileType.Directory:
            break
        found.append(path)
    return found


def _finished_trials(path: str, rounds: dict[str, int]) -> list[TrialResult]:
    """The trials of the experiment at ``path`` (a local folder or any URI pyarrow reads)
    that finished (see `run_search`), by trial id: those with a whole final record (the
    trial's own copy in `RECORDS_DIR`, or the one in its Tune checkpoint), then those whose
    end the driver recorded in `RECORDS_DIR`, then those Tune's saved state says ended."""
    import pyarrow.fs as pafs
    from ray.tune import Checkpoint

    fs, base = storage_fs(path)
    saved = _saved_statuses(path)
    finals: dict[str, TrialResult] = {}
    ended: dict[str, TrialResult] = {}

    def final(folder: str, record: dict[str, Any]) -> None:
        trial_id = str(record.get("trial_id") or folder.rsplit("/", 1)[-1])
        finals.setdefault(trial_id, _result_of(
            record[CONFIG_KEY], record, record.get(REPORTS_KEY, [record]),
            Checkpoint(folder, filesystem=fs), None, rounds, trial_id=trial_id))

    def whole_finals(files: list[str]) -> list[tuple[str, dict[str, Any]]]:
        # only a trial's last round saves a checkpoint, with its record beside the model
        found = [(f.rsplit("/", 1)[0], (_json_lines(_read(fs, f)) or [{}])[0])
                 for f in sorted(files) if f.endswith(f"/{METRICS_FILE}")]
        return [(c, r) for c, r in found
                if CONFIG_KEY in r and _whole(fs, c, r.get(MANIFEST_KEY))]

    selector = pafs.FileSelector(f"{base}/{RECORDS_DIR}", allow_not_found=True, recursive=True)
    mine = [i for i in fs.get_file_info(selector) if i.type == pafs.FileType.File]
    for folder, record in whole_finals([i.path for i in mine]):
        final(folder, record)
    ended.update(_ended_in_records(fs, [i.path for i in mine], rounds))

    for folder in sorted(i.path for i in fs.get_file_info(pafs.FileSelector(base))
                         if i.type == pafs.FileType.Directory):
        if folder.rsplit("/", 1)[-1] == RECORDS_DIR:
            continue
        files = [i.path for i in fs.get_file_info(pafs.FileSelector(folder, recursive=True))
                 if i.type == pafs.FileType.File]
        whole = whole_finals(files)
        status = saved.get(folder.rsplit("/", 1)[-1])
        if whole:
            final(*whole[-1])
        elif status in ("TERMINATED", "ERROR") and f"{folder}/params.json" in files:
            # stopped early by ASHA, or failed: Tune's saved state says so, and its files
            # were written by then
            reports = _json_lines(_read(fs, f"{folder}/result.json"))
            error = _last_line(_read(fs, f"{folder}/error.txt")) if status == "ERROR" else None
            last = reports[-1] if reports else {}
            trial_id = str(last.get("trial_id") or folder.rsplit("/", 1)[-1])
            ended.setdefault(trial_id, _result_of(
                json.loads(_read(fs, f"{folder}/params.json")), last, reports, None, error,
                rounds, trial_id=trial_id))
        # else it was running: its sample runs again
    return [*(finals[t] for t in sorted(finals)),
            *(ended[t] for t in sorted(ended) if t not in finals)]


def _saved_statuses(path: str) -> dict[str, str]:
    """Each trial's status in Tune's saved experiment state, by trial folder name; empty when
    there is no state to read.

    A driver that died before Tune first saved the experiment left no state at all; one that
    died while Tune copied the state to storage left it cut short (an empty file). Both are
    read as no state: the trials' own records (`RECORDS_DIR`, final checkpoints) still say
    which finished, and a trial only the lost state knew had ended runs again.
    """
    from ray import tune
    from ray.tune import ExperimentAnalysis

    if not tune.Tuner.can_restore(path):
        return {}
    try:
        trials = ExperimentAnalysis(path).trials
    except (ValueError, KeyError, TypeError):  # json.JSONDecodeError is a ValueError
        return {}
    # a trial saved while pending has no folder (and no path) yet
    return {t.relative_logdir: t.status for t in trials if t.relative_logdir}


def _ended_in_records(fs, paths: list[str], rounds: dict[str, int]) -> dict[str, TrialResult]:
    """The trials whose end (stopped or failed) the driver recorded in `RECORDS_DIR`."""
    ended: dict[str, TrialResult] = {}
    for path in paths:
        if path.rsplit("/", 2)[-2] != RECORDS_DIR or not path.endswith(".json"):
            continue  # a final folder's file, or a file still being written
        record = (_json_lines(_read(fs, path)) or [{}])[0]
        if CONFIG_KEY not in record or STATUS_KEY not in record:
            continue
        reports = record.get(REPORTS_KEY) or []
        error = (record.get(ERROR_KEY) or "the trial failed (no error saved)") \
            if record[STATUS_KEY] == "error" else None
        trial_id = str(record.get("trial_id"))
        ended[trial_id] = _result_of(record[CONFIG_KEY], reports[-1] if reports else {},
                                     reports, None, error, rounds, trial_id=trial_id)
    return ended


def _whole(fs, folder: str, sizes: dict[str, int] | None) -> bool:
    """Whether a checkpoint folder holds every file its manifest names, at full size."""
    import pyarrow.fs as pafs

    if not sizes:
        return False
    infos = fs.get_file_info([f"{folder}/{name}" for name in sizes])
    return all(i.type == pafs.FileType.File and i.size == size
               for i, size in zip(infos, sizes.values(), strict=True))


def _read(fs, path: str) -> str:
    """A small text file, or "" when it is not there."""
    import pyarrow as pa

    try:
        with fs.open_input_stream(path) as stream:
            return stream.read().decode()
    except (FileNotFoundError, pa.ArrowIOError):
        return ""


def _json_lines(text: str) -> list[dict[str, Any]]:
    """A trial's reports from Tune's result log; a line cut short by a crash is left out."""
    reports = []
    for line in text.splitlines():
        try:
            reports.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return reports


def _told_storage(space: FamilySpace, told: tuple[TrialResult, ...], mode: str, *,
                  defaults: bool = False):
    """An in-memory Optuna storage whose study (named as `OptunaSearch` names its own) already
    holds the ``told`` trials; None when there are none and no defaults are asked for. Each
    is replayed through the define-by-run space with its parameters fixed (``enqueue_trial``),
    so it is recorded with the same distributions as a trial TPE suggested.

    ``defaults``: each searched family that no told trial covers gets its default
    configuration enqueued (`retrain.candidates.default_params`), so it is its first trial.
    """
    waiting = [f for f in space.families if f.searched
               and not any(t.family == f.name for t in told)] if defaults else []
    if not told and not waiting:
        return None
    import optuna
    from optuna.trial import TrialState

    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, study_name="optuna",
                                direction="maximize" if mode == "max" else "minimize")
    for family in waiting:
        study.enqueue_trial(default_params(family), user_attrs={FAMILY_ATTR: family.name})
    by_name = {f.name: f for f in space.families}
    for trial in told:
        found = by_name.get(trial.family)
        if found is None:
            continue  # a family this run leaves out
        distributions = family_distributions(found)
        params = {key: trial.params.get(key.split("/", 1)[1]) for key in distributions}
        state = {"completed": TrialState.COMPLETE, "stopped": TrialState.PRUNED}.get(
            trial.status, TrialState.FAIL)
        try:
            study.add_trial(optuna.trial.create_trial(
                params=params, distributions=distributions, state=state,
                user_attrs={FAMILY_ATTR: trial.family},
                value=trial.score if state is TrialState.COMPLETE else None,
                intermediate_values={int(h["round"]): h["score"] for h in trial.history},
            ))
        except ValueError:
            continue  # the space changed since that trial ran: TPE cannot use it
    return storage


def _describe(error: BaseException) -> str:
    """The trial's own exception in one line (Ray wraps it in a RayTaskError with a traceback)."""
    cause = getattr(error, "cause", None) or error
    lines = [line for line in str(cause).splitlines() if line.strip()]
    return f"{type(cause).__name__}: {lines[0] if lines else ''}"[:1000]


def _last_run(reports) -> tuple[dict[str, float], ...]:
    """A trial's reports as one run: a trial Tune retried after a failure appends to the same
    result log, starting again from its first round (or reporting its last round again)."""
    history: list[dict[str, float]] = []
    for report in reports:
        if history and report["round"] < history[-1]["round"]:
            history = []
        elif history and report["round"] == history[-1]["round"]:
            history.pop()
        history.append(report)
    return tuple(history)


def _trial_result(result, rounds_by_family: dict[str, int]) -> TrialResult:
    """A trial as Tune's result grid has it."""
    frame = result.metrics_dataframe
    reports = [] if frame is None else frame.to_dict("records")
    metrics = dict(result.metrics or {})
    return _result_of(
        result.config or {}, metrics, reports, result.checkpoint,
        None if result.error is None else _describe(result.error), rounds_by_family,
        trial_id=str(metrics.get("trial_id") or Path(str(result.path)).name),
    )


def _result_of(config: dict[str, Any], metrics: dict[str, Any], reports: list[dict[str, Any]],
               checkpoint, error: str | None, rounds_by_family: dict[str, int], *,
               trial_id: str) -> TrialResult:
    """A trial from its config, last result, every report, final checkpoint and error."""
    family, params = trial_family(config)
    history = _last_run(
        {"round": int(r["round"]), "score": float(r[SCORE_KEY]),
         **{name: float(r[key]) for name, key in (("trained", TRAINED_KEY), ("at", AT_KEY))
            if _number(r.get(key)) is not None}}
        for r in reports
        if _number(r.get("round")) is not None and _number(r.get(SCORE_KEY)) is not None
    )
    rounds = int(_number(metrics.get("round")) or 0)
    kept = int(_number(metrics.get(BEST_ROUND_KEY)) or rounds)
    if error is not None:
        status: Status = "failed"
    elif checkpoint is not None and (_number(metrics.get(FINAL_KEY))
                                     or rounds >= rounds_by_family.get(family, 1)):
        status = "completed"
    else:
        status = "stopped"
    score, fit = _number(metrics.get(SCORE_KEY)), _number(metrics.get(FIT_KEY))
    return TrialResult(
        trial_id=trial_id,
        params=params,
        status=status,
        score=score,
        rounds=kept if status == "completed" else rounds,
        # Tune's own clock when its log has it, else the trial's (a read-back record)
        train_seconds=float(_number(metrics.get("time_total_s"))
                            or _number(metrics.get(TRAINED_KEY)) or 0.0),
        history=history,
        error=error,
        gpu=bool(_number(metrics.get("gpu")) or 0),
        family=family,
        fit_seconds=fit,
        checkpoint=checkpoint,
    )


def _number(value: Any) -> float | None:
    """A reported number, or None for a missing or NaN one (a frame fills gaps with NaN)."""
    if value is None or isinstance(value, bool | str):
        return None if not isinstance(value, bool) else float(value)
    value = float(value)
    return None if math.isnan(value) else value
