"""Whether trials train data-parallel, and with what: the pure decision from the config and the row
count, and the settings it yields.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from retrain.errors import ClusterError, ConfigError, RetrainWarning

if TYPE_CHECKING:

    from retrain.config import DataParallelConfig


def cpus_needed(section: DataParallelConfig, *, trial_cpus: float = 0.0) -> float:
    """CPUs one data-parallel trial holds at once: its workers, one read task, the trial."""
    return section.num_workers * section.cpus_per_worker + section.cpus_per_read_task \
        + trial_cpus


def use_data_parallel(
    section: DataParallelConfig, n_rows: int,
    cluster: Mapping[str, float] | Callable[[], Mapping[str, float]], *,
    trial_cpus: float = 0.0,
) -> tuple[bool, str]:
    """Whether XGBoost trials train data-parallel, and why, for ``n_rows`` training rows on a
    cluster with ``cluster`` resources (`ray.cluster_resources()`, or a function that reads
    them, called only when the answer depends on the cluster); ``trial_cpus`` is what the
    trial itself (the Train driver) reserves.

    ``enabled: true`` on a cluster that cannot hold one trial's workers raises
    `ClusterError` (a search would wait forever); ``auto`` then trains in one process.
    """
    enabled = section.enabled
    if enabled is False:
        return False, "search.data_parallel.enabled is false"
    if enabled == "auto" and n_rows < section.min_rows:
        return False, (f"{n_rows} training rows, fewer than "
                       f"search.data_parallel.min_rows={section.min_rows}")
    if callable(cluster):
        cluster = cluster()
    need, have = cpus_needed(section, trial_cpus=trial_cpus), float(cluster.get("CPU", 0))
    fits = need <= have
    shape = (f"{section.num_workers} workers x {section.cpus_per_worker:g} CPU + "
             f"{section.cpus_per_read_task:g} for a read task + {trial_cpus:g} for the trial "
             f"= {need:g} CPUs, the cluster has {have:g}")
    if enabled is True:
        if not fits:
            raise ClusterError(
                f"search.data_parallel needs {shape}; lower search.data_parallel.num_workers "
                "or cpus_per_worker, or add nodes"
            )
        return True, f"search.data_parallel.enabled is true ({section.num_workers} workers)"
    if not fits:
        return False, (f"{n_rows} training rows reach search.data_parallel.min_rows="
                       f"{section.min_rows}, but one trial would need {shape}: training in "
                       "one process")
    return True, (f"{n_rows} training rows reach search.data_parallel.min_rows="
                  f"{section.min_rows} ({section.num_workers} workers)")


@dataclass(frozen=True)
class DataParallelSettings:
    """How one data-parallel trial runs: its Ray Train workers and Ray Data reads."""

    num_workers: int
    cpus_per_worker: float
    gpus_per_worker: float = 0.0
    cpus_per_read_task: float = 0.25

    def __post_init__(self) -> None:
        if self.num_workers < 1 or self.cpus_per_worker <= 0 or self.cpus_per_read_task <= 0 \
                or self.gpus_per_worker < 0:
            raise ConfigError(f"data-parallel settings must be positive, but got {self}")
        if self.num_workers > 1 and 0 < self.gpus_per_worker < 1:
            raise ConfigError(
                f"{self.num_workers} workers cannot share GPUs (XGBoost's collective refuses "
                f"two processes on one CUDA device), but got gpus_per_worker="
                f"{self.gpus_per_worker:g}; use 1 or more, or 0"
            )

    @property
    def nthread(self) -> int:
        """XGBoost threads per worker: its CPUs, at least one."""
        return max(1, round(self.cpus_per_worker))

    @classmethod
    def of(cls, section: DataParallelConfig, cluster: Mapping[str, float]) -> DataParallelSettings:
        """From the config section; GPUs asked for on a cluster without any fall back to CPU
        with a warning (as `retrain.search.trial_resources` does for trials)."""
        gpus = section.gpus_per_worker
        have = float(cluster.get("GPU", 0))
        if gpus > 0 and have == 0:
            warnings.warn(
                f"search.data_parallel.gpus_per_worker={gpus:g} but the cluster has no GPU: "
                "data-parallel workers train on CPUs", RetrainWarning, stacklevel=2,
            )
            gpus = 0.0
        elif gpus * section.num_workers > have:
            raise ClusterError(
                f"search.data_parallel asks for {section.num_workers} workers x {gpus:g} GPU "
                f"but the cluster has {have:g} GPUs; use fewer workers or add GPU nodes"
            )
        return cls(num_workers=section.num_workers, cpus_per_worker=section.cpus_per_worker,
                   gpus_per_worker=gpus, cpus_per_read_task=section.cpus_per_read_task)
