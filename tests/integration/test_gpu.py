"""GPU trials: skipped without an NVIDIA GPU; runs where one is present."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml

from tests.synthetic import config_dict, write_partitions


def _gpu_count() -> int:
    if shutil.which("nvidia-smi") is None:
        return 0
    done = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
    return sum(line.startswith("GPU ") for line in done.stdout.splitlines())


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(_gpu_count() == 0, reason="needs an NVIDIA GPU (nvidia-smi finds none)"),
]

SCRIPT = """
import json, sys, ray, retrain
ray.init(address="local", num_cpus=4, num_gpus=1)
result = retrain.run_cycle(retrain.load_config(sys.argv[1]))
print("RESULT " + json.dumps({"gpu": [t.gpu for t in result.search.trials if t.status != "failed"],
                              "verdict": result.decision.verdict.value}))
"""

# single: each trial is one process on half the GPU. data_parallel: each trial drives a Ray
# Train run whose one worker holds half the GPU (one GPU cannot hold two workers of a trial:
# XGBoost's collective refuses two processes on one CUDA device).
OVERRIDES = {
    "single": {"resources": {"gpus_per_trial": 0.5}},
    "data_parallel": {"search": {"data_parallel": {
        "enabled": True, "num_workers": 1, "cpus_per_worker": 0.5, "gpus_per_worker": 0.5,
        "cpus_per_read_task": 0.25}}},
}


@pytest.mark.parametrize("layout", sorted(OVERRIDES))
def test_gpu_trials_train_with_device_cuda(tmp_path, layout):
    write_partitions(tmp_path / "data", [1, 2, 3], rows=5000)
    raw = config_dict(tmp_path / "data", tmp_path / "work", **OVERRIDES[layout])
    path = tmp_path / "retrain.yaml"
    path.write_text(yaml.safe_dump(raw))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(path)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    result = json.loads(line.removeprefix("RESULT "))
    assert result["gpu"] and all(result["gpu"])
    assert result["verdict"] == "promote"
