"""`retrain demo` on the real NYC flights data, shortened to one arriving month."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import free_port

pytestmark = pytest.mark.slow


def test_demo_runs_the_loop_on_real_data_with_zero_failed_requests(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    command = [
        sys.executable, "-m", "retrain.cli", "demo", "--workdir", str(tmp_path / "demo"),
        "--port", str(free_port()), "--first-months", "3", "--last-month", "4",
        "--trials", "2", "--rounds", "20",
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    rows = re.findall(
        r"^\s+(\d+)\s+([\d,]+)\s+v(\d+)\s+([\d.]+)\s+([\d.]+)\s+\S+ \[\S+, \S+\]\s+(\w+)\s+v(\d+)",
        out, flags=re.M,
    )
    assert [r[0] for r in rows] == ["4"]
    assert all(r[5] in ("promote", "keep", "reject") for r in rows)
    for _month, nrows, *_ in rows:
        assert int(nrows.replace(",", "")) > 20_000  # a real month of flights
    failed = re.search(r"(\d[\d,]*) requests, (\d+) failed", out)
    assert failed and int(failed.group(1).replace(",", "")) > 0
    assert failed.group(2) == "0"
    # where to look next: the reports, the ledger, MLflow
    reports = tmp_path / "demo" / "reports"
    assert f"{reports}/" in out and any(reports.glob("*.html"))
    assert "retrain history --config" in out
    assert "mlflow ui --backend-store-uri" in out and "curl -s -X POST" in out
    # each month's line says which check decided
    (line,) = [x for x in out.splitlines() if re.match(r"^\s+4\s+[\d,]+\s+v\d", x)]
    assert re.search(r"(interval includes 0|lower bound [-+]\d\.\d{4} [<>]=? [-+]\d\.\d{4}"
                     r"|ratio \d+\.\d\dx > \d|latency|slice|< )", line), line
    # third-party chatter is in the log file whose path the demo printed, not in the output
    log = tmp_path / "demo" / "third-party.log"
    assert str(log) in out and log.stat().st_size > 0
    for chatter in ("Registered model", "(raylet)", "Token authentication", "SIGTERM",
                    "graceful_shutdown", "Traceback"):
        assert chatter not in out + done.stderr, (chatter, out[-2000:], done.stderr[-2000:])
