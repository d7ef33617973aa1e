"""Misconfiguration fails in seconds, naming the field and the fix (no Ray, no MLflow)."""

from __future__ import annotations

import socket
import time

import pytest

from retrain.config import config_from_dict
from retrain.errors import ConfigError
from retrain.preflight import check, problems
from tests.synthetic import config_dict


def _config(tmp_path, **overrides):
    return config_from_dict(config_dict(tmp_path / "data", tmp_path / "work", **overrides))


def test_a_sound_environment_has_no_problems(tmp_path):
    assert problems(_config(tmp_path)) == []


def test_a_workdir_under_a_file_cannot_be_created(tmp_path):
    (tmp_path / "afile").write_text("x")
    found = problems(_config(tmp_path, project={"name": "p",
                                                "workdir": str(tmp_path / "afile" / "w")}))
    assert any(p.startswith("project.workdir:") for p in found)


def test_an_unknown_tracking_scheme_and_unreachable_servers_fail_within_seconds(tmp_path):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = _config(tmp_path, mlflow={"tracking_uri": f"http://127.0.0.1:{port}"},
                     ray={"address": f"127.0.0.1:{port}"})
    started = time.perf_counter()
    with pytest.raises(ConfigError) as info:
        check(config)
    assert time.perf_counter() - started < 10
    fields = [p.split(":")[0] for p in info.value.problems]
    assert fields == ["mlflow.tracking_uri", "ray.address"]
    assert "no MLflow server answers" in info.value.problems[0]
    bad = _config(tmp_path, mlflow={"tracking_uri": "sqlte:///x.db"})
    (problem,) = problems(bad)
    assert problem.startswith("mlflow.tracking_uri: unknown scheme 'sqlte'")
