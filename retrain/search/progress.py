"""What the driver says while a search runs: progress lines, and a watchdog for trials the cluster
can never place.
"""

from __future__ import annotations

import time

from retrain.candidates import FAMILY_KEY, XGBOOST
from retrain.errors import ClusterError
from retrain.search.records import _error_text
from retrain.trial_report import SCORE_KEY, UNPLACED


def _say(line: str) -> None:
    print(line, flush=True)


def _progress_callback(num_samples: int, start: int = 0):
    """Prints a line per finished trial; ``start``: trials finished before a resume."""
    # Tune pickles callbacks with the experiment state, so this one holds no user callable.
    from ray import tune

    class Progress(tune.Callback):
        done = start

        def _line(self, trial, what: str) -> None:
            self.done += 1
            score = trial.last_result.get(SCORE_KEY)
            shown = f"{score:.4f}" if isinstance(score, float) else "-"
            family = trial.config.get(FAMILY_KEY, XGBOOST)
            _say(f"  trial {self.done}/{num_samples} {what}: {family} score={shown} "
                 f"rounds={trial.last_result.get('round', 0)}")

        def on_trial_complete(self, iteration, trials, trial, **info) -> None:
            self._line(trial, "done")

        def on_trial_error(self, iteration, trials, trial, **info) -> None:
            self._line(trial, "FAILED")

    return Progress()


def _placement_watchdog(timeout_s: float):
    """A Tune callback that fails the search with `ClusterError` when trials have waited
    for resources ``timeout_s`` seconds with none running: a trial that cannot be placed
    (other work holds the CPUs, a stopped trial's workers were not released, no node has
    what it asks for) would otherwise keep the search waiting for ever. The error names
    what the trials ask for and what the cluster has free; `run_search` raises it."""
    from ray import tune

    class Placement(tune.Callback):
        def __init__(self) -> None:
            #: since when trials have waited with none running (monotonic seconds)
            self.since: float | None = None
            self.problem: str | None = None

        def on_step_end(self, iteration, trials, **info) -> None:
            waiting = [t for t in trials if t.status == "PENDING"]
            if not waiting or any(t.status == "RUNNING" for t in trials):
                self.since = None
                return
            now = time.monotonic()
            if self.since is None:
                self.since = now
            elif now - self.since >= timeout_s:
                self.problem = _unplaceable(waiting, timeout_s)
                raise ClusterError(self.problem)

        def _unplaced(self, trial) -> None:
            # a data-parallel trial whose Train workers could not be placed: the next trial
            # (or a retry) would wait as long again
            found = [line for line in _error_text(trial).splitlines() if UNPLACED in line]
            if found:
                self.problem = found[-1].split("ClusterError: ", 1)[-1].strip()
                raise ClusterError(self.problem)

        def on_trial_recover(self, iteration, trials, trial, **info) -> None:
            self._unplaced(trial)

        def on_trial_error(self, iteration, trials, trial, **info) -> None:
            self._unplaced(trial)

    return Placement()


def _unplaceable(waiting, timeout_s: float) -> str:
    """Why a search stopped waiting: what its trials ask for and what the cluster has."""
    import ray

    def shown(resources: dict[str, float]) -> str:
        return ", ".join(f"{k} {v:g}" for k, v in sorted(resources.items())
                         if not k.startswith(("node:", "memory", "object_store_memory"))
                         and v) or "nothing"

    asked = {shown(t.placement_group_factory.required_resources) for t in waiting}
    return (
        f"no trial could be placed for {timeout_s:g} s (resources.placement_timeout_s): "
        f"{len(waiting)} waiting, none running; each asks for {' or '.join(sorted(asked))}, "
        f"and the cluster has {shown(ray.available_resources())} free of "
        f"{shown(ray.cluster_resources())}. Other work holds the rest, or no node has what "
        "a trial asks for: lower resources.cpus_per_trial (or gpus_per_trial, or "
        "search.data_parallel's workers), free or add nodes, or raise "
        "resources.placement_timeout_s"
    )
