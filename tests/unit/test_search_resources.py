import pytest

from retrain.config import config_from_dict
from retrain.errors import ClusterError, RetrainWarning
from retrain.search import trial_resources
from tests.synthetic import config_dict


def _config(**resources):
    return config_from_dict(config_dict("d", "w", resources=resources))


def test_resources_that_fit_pass_through():
    assert trial_resources(_config(cpus_per_trial=2), {"CPU": 4}) == {"cpu": 2, "gpu": 0}
    assert trial_resources(_config(gpus_per_trial=0.5), {"CPU": 4, "GPU": 1}) == {
        "cpu": 1, "gpu": 0.5}


def test_gpu_on_a_cpu_cluster_falls_back_with_a_warning():
    with pytest.warns(RetrainWarning, match="no GPU: training on CPUs"):
        assert trial_resources(_config(gpus_per_trial=1), {"CPU": 2}) == {"cpu": 1, "gpu": 0}


def test_more_than_the_cluster_has_is_an_error_not_a_hang():
    with pytest.raises(ClusterError, match="cpus_per_trial=8 but the cluster has 2 CPUs"):
        trial_resources(_config(cpus_per_trial=8), {"CPU": 2})
    with pytest.raises(ClusterError, match="use a fraction"):
        trial_resources(_config(gpus_per_trial=2), {"CPU": 8, "GPU": 1})
