"""A search whose trials cannot be placed fails within its stated time, on a real cluster.

The session's cluster has 2 CPUs, and an actor holds some of them (other work on the
cluster). Holding 1, a search asking 1.5 CPUs per trial can start no trial; holding 1.5, a
data-parallel search whose worker asks 1 CPU starts its trials (0.25 CPU each) but never
their Ray Train workers (Train itself would retry starting them for ever). With
``resources.placement_timeout_s: 5`` each must fail with `ClusterError` naming what it asks
for and what the cluster has free, not wait for ever, and leave nothing holding CPUs behind.
"""

from __future__ import annotations

import time

import pytest

from retrain.config import config_from_dict
from retrain.data import load_split
from retrain.errors import ClusterError
from retrain.search import TrainData, run_search
from tests.conftest import wait_until
from tests.synthetic import config_dict, write_partitions

pytestmark = [pytest.mark.ray, pytest.mark.slow]

TIMEOUT_S = 5


def _failed_search_while_held(cpus: float, search):
    """Run ``search`` while an actor holds ``cpus`` CPUs (other work on the cluster); it must
    raise `ClusterError`. Returns the raised error's info, the seconds it took, and the CPUs
    free before the actor took its share (an earlier test's Serve app may hold some): what
    must be free again after the failed search."""
    import ray

    @ray.remote(num_cpus=cpus)
    class Holder:
        def ready(self) -> bool:
            return True

    free = ray.available_resources().get("CPU")
    holder = Holder.remote()
    try:
        ray.get(holder.ready.remote(), timeout=120)
        start = time.monotonic()
        with pytest.raises(ClusterError) as raised:
            search()
        took = time.monotonic() - start
    finally:
        ray.kill(holder)
    return raised, took, free


def test_a_search_that_cannot_place_a_trial_says_so_within_its_timeout(ray_cluster, tmp_path):
    import ray

    write_partitions(tmp_path / "data", [1, 2], rows=500, seed=3)
    config = config_from_dict(config_dict(
        tmp_path / "data", tmp_path / "work", search={"num_samples": 2},
        resources={"cpus_per_trial": 1.5, "placement_timeout_s": TIMEOUT_S}))
    split = load_split(config.data, config.task.type)
    data = TrainData(split.x_train, split.y_train, split.x_valid, split.y_valid)

    raised, took, free = _failed_search_while_held(
        1, lambda: run_search(config, data, name="unplaceable"))
    # the failed search left no trial waiting to take the CPUs once they are free
    wait_until(lambda: ray.available_resources().get("CPU") == free, timeout=60)
    message = str(raised.value)
    print(f"failed after {took:.1f} s: {message}")
    assert f"no trial could be placed for {TIMEOUT_S} s (resources.placement_timeout_s)" \
        in message
    assert "each asks for CPU 1.5" in message and "free of CPU 2" in message
    # the stated time, plus Tune's start on a loaded machine
    assert TIMEOUT_S <= took < TIMEOUT_S + 90


def test_a_data_parallel_trial_whose_workers_cannot_be_placed_says_so(ray_cluster, tmp_path):
    import ray

    write_partitions(tmp_path / "data", [1, 2], rows=500, seed=3)
    config = config_from_dict(config_dict(
        tmp_path / "data", tmp_path / "work",
        search={"num_samples": 2, "max_failures": 0,
                "data_parallel": {"enabled": True, "num_workers": 1, "cpus_per_worker": 1,
                                  "cpus_per_read_task": 0.25}},
        resources={"placement_timeout_s": TIMEOUT_S}))
    split = load_split(config.data, config.task.type, holdout_share=1.0)
    data = TrainData(split.x_train, split.y_train, split.x_valid, split.y_valid)

    raised, took, free = _failed_search_while_held(
        1.5, lambda: run_search(config, data, name="unplaced-workers", split=split))
    # no placement group of the trial's workers is left pending, to take the CPUs once free
    wait_until(lambda: not _held_groups(), timeout=30)
    wait_until(lambda: ray.available_resources().get("CPU") == free, timeout=60)
    message = str(raised.value)
    print(f"failed after {took:.1f} s: {message}")
    assert f"Ray Train workers were not placed within {TIMEOUT_S} s" in message
    assert "1 workers (CPU 1 each)" in message
    # the stated time, plus the start of Tune, the trial and its Train run on a loaded box
    assert TIMEOUT_S <= took < TIMEOUT_S + 120


def _held_groups() -> list[dict]:
    import ray

    return [g for g in ray.util.placement_group_table().values()
            if g["state"] in ("PENDING", "CREATED", "RESCHEDULING")]
