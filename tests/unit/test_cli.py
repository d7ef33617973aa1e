import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from retrain.cli import main
from tests.synthetic import config_dict, write_partitions

ROOT = str(Path(__file__).resolve().parents[2])


def test_init_writes_a_config_that_validate_accepts(tmp_path, capsys):
    path = tmp_path / "retrain.yaml"
    assert main(["init", str(path), "--name", "flights"]) == 0
    assert "flights" in path.read_text()
    assert main(["init", str(path)]) == 2  # refuses to overwrite
    assert "pass --force" in capsys.readouterr().err
    assert main(["init", str(path), "--force"]) == 0


def test_validate_reports_data_and_features(tmp_path, capsys):
    write_partitions(tmp_path / "data", [1, 2, 3], rows=50)
    path = tmp_path / "retrain.yaml"
    path.write_text(yaml.safe_dump(config_dict("data", "work")))
    assert main(["validate", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "train partitions 1,2 (100 rows), holdout 3 (50 rows)" in out
    assert "['x1', 'x2', 'cat']" in out


def test_errors_print_the_message_and_exit_with_their_code(tmp_path, capsys):
    path = tmp_path / "retrain.yaml"
    path.write_text(yaml.safe_dump(config_dict("missing-data", "work")))
    assert main(["validate", "--config", str(path)]) == 3  # DataError
    assert "data.path" in capsys.readouterr().err
    path.write_text("project: {name: x}\n")
    assert main(["run", "--config", str(path)]) == 2  # ConfigError
    err = capsys.readouterr().err
    assert "data: required but missing" in err and "task: required but missing" in err
    assert main(["run", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "retrain init" in capsys.readouterr().err


def test_backtest_prints_the_three_policies_and_their_cycles(tmp_path, capsys):
    write_partitions(tmp_path / "data", [1, 2, 3, 4], rows=300)
    path = tmp_path / "retrain.yaml"
    path.write_text(yaml.safe_dump(config_dict("data", "work")))
    assert main(["backtest", "--config", str(path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)["summary"]
    assert summary["never"]["cycles"] == 0 and summary["every"]["cycles"] == 1
    assert main(["backtest", "--config", str(path), "--initial", "4"]) == 3
    assert "needs at least 5" in capsys.readouterr().err


def test_request_leaves_an_on_demand_request_for_the_controller(tmp_path, capsys):
    from serve.inference_log import pending_requests

    path = tmp_path / "retrain.yaml"
    path.write_text(yaml.safe_dump(config_dict("data", "work")))
    assert main(["request", "--config", str(path), "--reason", "labels fixed"]) == 0
    (request,) = pending_requests(tmp_path / "work" / "inference")
    assert request.reason == "labels fixed" and request.requested_by == "cli"
    assert request.id in capsys.readouterr().out


def test_serve_writes_a_serve_deploy_config_that_serve_accepts(tmp_path, capsys):
    from ray.serve.schema import ServeDeploySchema

    from serve.app import app_builder

    path = tmp_path / "retrain.yaml"
    path.write_text(yaml.safe_dump(config_dict("data", "work", serving={"port": 8123})))
    out = tmp_path / "serve.yaml"
    assert main(["serve", "--config", str(path), "--write-config", str(out)]) == 0
    assert "serve deploy" in capsys.readouterr().out
    raw = yaml.safe_load(out.read_text())
    ServeDeploySchema.model_validate(raw)
    (app,) = raw["applications"]
    assert app["import_path"] == "serve.app:app_builder" and "admin_token" not in app["args"]
    assert raw["http_options"]["port"] == 8123
    assert app["args"]["inference_log_path"].endswith("work/inference")
    app_builder(app["args"])  # the graph builds from exactly these arguments


def test_version_prints_the_installed_version(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"retrain {version('retrain')}"


def test_serve_host_and_port_override_the_config(tmp_path, capsys):
    path = tmp_path / "retrain.yaml"
    path.write_text(yaml.safe_dump(config_dict("data", "work", serving={"port": 8123})))
    out = tmp_path / "serve.yaml"
    assert main(["serve", "--config", str(path), "--host", "0.0.0.0", "--port", "9123",
                 "--write-config", str(out)]) == 0
    assert yaml.safe_load(out.read_text())["http_options"] == {"host": "0.0.0.0", "port": 9123}
    with pytest.raises(SystemExit):
        main(["serve", "--config", str(path), "--port", "99999"])
    assert "expected a port number 1-65535, got '99999'" in capsys.readouterr().err


def test_serve_on_a_taken_port_fails_before_starting_anything_and_names_port(
        tmp_path, capsys, monkeypatch):
    # a process of its own, as a user runs it: this one may be attached to the session's Ray
    # already (then `serve` would use that cluster's Serve rather than start one)
    path = tmp_path / "retrain.yaml"
    path.write_text(yaml.safe_dump(config_dict("data", "work")))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "retrain.cli", "serve", "--config", str(path), "--port",
             str(port)], capture_output=True, text=True, timeout=120, cwd=ROOT,
            env={**env, "PYTHONPATH": ROOT})
    assert done.returncode == 2, done.stderr
    assert f"cannot serve on 127.0.0.1:{port}" in done.stderr and "--port" in done.stderr
    # before anything started: no Ray runtime came up (its start takes seconds, and says so)
    assert time.monotonic() - started < 60 and "Started a local Ray instance" not in done.stderr


def test_watch_stops_on_sigterm_and_ctrl_c_without_a_traceback(tmp_path):
    write_partitions(tmp_path / "data", [1, 2, 3], rows=50)
    path = tmp_path / "retrain.yaml"
    path.write_text(yaml.safe_dump(config_dict(tmp_path / "data", tmp_path / "work",
                                               triggers={"check_interval_s": 3600})))
    for sig, code, name in ((signal.SIGTERM, 143, "SIGTERM"), (signal.SIGINT, 130, "Ctrl-C")):
        child = subprocess.Popen([sys.executable, "-m", "retrain.cli", "watch", "--config",
                                  str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})
        try:
            first = child.stdout.readline()
            assert first.startswith("watching 'synthetic'"), first + child.stderr.read()
            # the first check's line: the signal lands in the wait between checks, where a
            # controller spends its life. On a loaded box a signal inside the first check
            # (Ray and MLflow starting) twice ended the process by the signal itself (exit -2,
            # no message); not reproduced on a quiet box, cause not found yet
            checked = child.stdout.readline()
            assert checked.strip(), child.stderr.read()
            time.sleep(0.5)
            child.send_signal(sig)
            _, err = child.communicate(timeout=60)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        assert child.returncode == code, err
        assert f"retrain watch: stopped ({name})" in err
        assert "Traceback" not in err and "SIGTERM received" not in err, err
    # the controller's lock went with it: another controller can start
    assert main(["watch", "--config", str(path), "--once"]) == 0
