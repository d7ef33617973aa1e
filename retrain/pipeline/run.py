"""`run_cycle`: one cycle under the cycle lock, new or resumed."""

from __future__ import annotations

import time
from dataclasses import replace

from retrain.config import Config
from retrain.data import list_partitions
from retrain.locks import cycle_lock
from retrain.pipeline.stages import _stages
from retrain.pipeline.start import _admission, _identity, _read_data
from retrain.pipeline.state import (
    CycleResult,
    CycleStage,
    _Cycle,
    _silent,
    cycles_folder,
    read_stage,
    save_stage,
    unfinished_cycle,
)
from retrain.registry import MlflowRegistry
from retrain.runtime import ensure_ray, quiet_defaults


def run_cycle(config: Config, *, echo=None, resume: bool = False) -> CycleResult:
    """Run one cycle on the connected (or a new local) Ray cluster and return what happened.

    Works after ``ray.init(address=...)`` on an existing cluster, inside a Ray job, or on its
    own. Raises a `retrain.errors.RetrainError` with the cause and the fix on failure; the
    serving champion is never touched unless the decision is PROMOTE. One cycle per project
    at a time: a second one (`retrain run` while `retrain watch` runs one) gets `BusyError`.

    ``resume=True`` continues the newest cycle if it did not finish (its driver died, or it
    raised), from the stage it reached (see the module docstring); with none to continue it
    runs a new cycle.
    """
    with cycle_lock(config.project.workdir):
        return _run_cycle(config, echo=echo, resume=resume)


def _run_cycle(config: Config, *, echo=None, resume: bool = False) -> CycleResult:
    from retrain.preflight import check

    start = time.perf_counter()
    say = echo or _silent
    check(config)  # an unwritable store or an unreachable server fails now, not minutes in
    quiet_defaults()
    folder = cycles_folder(config)
    resumed = unfinished_cycle(folder) if resume else None
    registry = MlflowRegistry.from_config(config)
    # listed (and content-hashed) once, for admission and the split alike
    partitions = list_partitions(config.data)
    cycle_id, champion_version = _identity(registry, partitions, resumed, resume, say)
    admission, excluded = _admission(config, registry, champion_version, cycle_id, partitions,
                                     resumed)
    if admission is not None:
        say(admission.summary())
    split, lineage, champion, data_parallel = _read_data(config, registry, partitions,
                                                         excluded, champion_version, say)
    if champion is None and split.holds_training_rows and resumed is None:
        # the first model is where a leak or a row index gets in: say so before training
        from retrain.suspects import suspects_in

        for suspect in suspects_in(config, list(split.train_partitions)):
            say(f"warning: {suspect.message()}")
    ensure_ray(config.ray)
    tags = {**lineage, "retrain.cycle_id": cycle_id}
    opened = registry.cycle_run(f"cycle-{cycle_id}", tags,
                                run_id=None if resumed is None else resumed.run_id)
    with opened as run_id:
        if resumed is None:
            stage = save_stage(folder, CycleStage(
                cycle_id=cycle_id, stage="started", run_id=run_id,
                champion_version=champion_version,
                partitions={p.value: p.digest for p in partitions},
                excluded=tuple(sorted(excluded)),
                judged=() if admission is None else tuple(v.partition
                                                          for v in admission.partitions)))
        else:
            stage = save_stage(folder, replace(resumed, attempts=resumed.attempts + 1,
                                               error=None))
        cycle = _Cycle(config, registry, folder, split, lineage, admission, excluded, run_id,
                       say, start, champion, data_parallel)
        try:
            return _stages(cycle, stage)
        except BaseException as exc:
            save_stage(folder, replace(read_stage(folder, cycle_id),
                                       error=f"{type(exc).__name__}: {exc}"[:2000]))
            raise
