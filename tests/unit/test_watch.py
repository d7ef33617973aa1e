"""The controller's loop logic, with a stand-in monitor and cycle (pure seams).

The real monitor, cycle, Serve app and HTTP inbox run in tests/integration/test_watch_e2e.py.
"""

import json
import subprocess
import sys
import textwrap
from dataclasses import dataclass

import pytest

from retrain.config import config_from_dict
from retrain.decide import Verdict
from retrain.errors import BusyError, DataError
from retrain.ledger import EventKind, Ledger
from retrain.monitor import LiveMetric, MonitorReport
from retrain.watch import Controller
from serve.inference_log import pending_requests, request_retrain
from tests.synthetic import config_dict


def _config(tmp_path, **triggers):
    raw = config_dict(tmp_path / "data", tmp_path / "work",
                      triggers={"cooldown_s": 600, "debounce": 2,
                                "drift": {"defer_to_labels": False}, **triggers})
    return config_from_dict(raw)


def _report(drifted: bool | None = False, live: float | None = None, labelled: int = 0):
    return MonitorReport(at=0.0, champion="1", rows=1000, drift=None,
                         live=LiveMetric("auc", live, labelled, 0.8),
                         notes=() if drifted is None else (f"drifted={drifted}",))


class Clock:
    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@dataclass(frozen=True)
class FakeDecision:
    verdict: Verdict = Verdict.KEEP
    reasons: tuple = ("no better",)


@dataclass
class FakeResult:
    cycle_id: str = "c1"
    run_id: str = "r1"
    decision: FakeDecision = FakeDecision()
    model_version: str | None = None


def test_a_request_in_the_inbox_starts_one_cycle_and_is_consumed(tmp_path):
    config = _config(tmp_path)
    runs = []
    request_retrain(config.inference_log_path, reason="new labels", requested_by="ops")
    with Controller(config, monitor=lambda c: _report(), run=lambda c: runs.append(1)
                    or FakeResult(), clock=Clock()) as controller:
        first = controller.tick()
        second = controller.tick()
    assert str(first.evaluation.fired) == "on_demand" and first.cycle["verdict"] == "keep"
    assert second.evaluation.fired is None and runs == [1]
    assert pending_requests(config.inference_log_path) == []
    events = Ledger(config.ledger_path).events(model_name="synthetic")
    kinds = [(e.kind, e.details["outcome"]) for e in events]
    assert kinds == [(EventKind.TRIGGER, "on_demand"), (EventKind.CYCLE, "started"),
                     (EventKind.CYCLE, "finished"), (EventKind.TRIGGER, "none")]
    # the evaluation is recorded with its inputs
    assert events[0].details["evaluation"]["inputs"]["demands"][0]["reason"] == "new labels"


def test_each_tick_copies_the_admin_moves_noted_since_into_the_ledger_first(tmp_path):
    from serve.inference_log import note_move, pending_moves

    config = _config(tmp_path)
    made = note_move(config.inference_log_path, "promote", made_by="http 10.1.2.3",
                     request_id="req-7", version="4", previous="3", alias="champion")
    with Controller(config, monitor=lambda c: _report(), run=lambda c: FakeResult(),
                    clock=Clock()) as controller:
        controller.tick()
        controller.tick()
    assert pending_moves(config.inference_log_path) == []
    ledger = Ledger(config.ledger_path)
    [move] = ledger.events(model_name="synthetic", kinds=[EventKind.ALIAS_MOVE])
    assert (move.version, move.previous_version, move.at) == ("4", "3", made.made_at)
    assert move.details["request_id"] == "req-7"
    # recorded before the tick's trigger event, at the time the move was made
    assert ledger.events(model_name="synthetic")[0].seq == move.seq


def test_performance_drop_fires_after_debounce_then_cooldown_holds(tmp_path):
    config = _config(tmp_path)
    clock = Clock()
    runs = []
    # borderline (0.025 below 0.80: beyond 2 %, short of twice it): debounced
    with Controller(config, monitor=lambda c: _report(live=0.775, labelled=500),
                    run=lambda c: runs.append(clock.t) or FakeResult(), clock=clock) as ctl:
        assert ctl.tick().evaluation.fired is None  # 1/2 consecutive checks
        clock.t += 60
        assert str(ctl.tick().evaluation.fired) == "performance"
        clock.t += 60
        held = ctl.tick().evaluation
        assert held.fired is None
        clock.t += 60
        held = ctl.tick().evaluation  # debounced again, but within the cooldown
        assert held.fired is None and str(held.suppressed_by) == "cooldown"
    assert len(runs) == 1


def test_a_failing_cycle_is_recorded_and_the_controller_goes_on(tmp_path):
    config = _config(tmp_path)

    def broken(config):
        raise DataError("partition 9 is empty")

    request_retrain(config.inference_log_path)
    with Controller(config, monitor=lambda c: _report(), run=broken, clock=Clock()) as ctl:
        tick = ctl.tick()
    assert "partition 9 is empty" in tick.cycle["error"]
    last = Ledger(config.ledger_path).events(model_name="synthetic")[-1]
    assert last.kind is EventKind.CYCLE and last.details["outcome"] == "failed"
    assert json.loads(ctl.state_path.read_text())["running"] is None


def test_a_cycle_stopped_by_ctrl_c_or_sigterm_is_recorded_and_the_lock_released(tmp_path):
    config = _config(tmp_path)

    def stopped(config):
        raise KeyboardInterrupt  # what `retrain watch` raises on Ctrl-C and on SIGTERM

    request_retrain(config.inference_log_path)
    with pytest.raises(KeyboardInterrupt), \
            Controller(config, monitor=lambda c: _report(), run=stopped, clock=Clock()) as ctl:
        ctl.tick()
    last = Ledger(config.ledger_path).events(model_name="synthetic")[-1]
    assert last.kind is EventKind.CYCLE and last.details["outcome"] == "interrupted"
    assert json.loads(ctl.state_path.read_text())["running"] is None
    with Controller(config, monitor=lambda c: _report(), run=lambda c: FakeResult()):
        pass  # the lock went with the stopped controller


def test_only_one_controller_per_project(tmp_path):
    config = _config(tmp_path)
    with Controller(config, monitor=lambda c: _report(), run=lambda c: FakeResult()), \
            pytest.raises(BusyError, match="retrain watch"):
        Controller(config).__enter__()


def test_a_controller_killed_mid_cycle_does_not_start_it_again_on_restart(tmp_path):
    config = _config(tmp_path)
    request_retrain(config.inference_log_path, reason="now")
    script = textwrap.dedent(f"""
        import time
        from retrain.config import config_from_dict
        from retrain.monitor import LiveMetric, MonitorReport
        from retrain.watch import Controller
        from tests.synthetic import config_dict

        config = config_from_dict(config_dict({str(tmp_path / 'data')!r},
            {str(tmp_path / 'work')!r}, triggers={{"cooldown_s": 600, "debounce": 2}}))
        report = MonitorReport(0.0, "1", 1000, None, LiveMetric("auc", 0.5, 900, 0.8))

        def hang(config):
            print("cycle running", flush=True)
            time.sleep(120)

        with Controller(config, monitor=lambda c: report, run=hang) as ctl:
            ctl.tick()
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "cycle running"
    finally:
        child.kill()  # SIGKILL: no finally block, no atexit: a crash
        child.wait()
    saved = json.loads((tmp_path / "work" / "watch" / "state.json").read_text())
    assert saved["running"]["trigger"] == "on_demand"

    runs = []
    # the performance drop still holds on restart: the cooldown from the lost start stops it
    with Controller(config, monitor=lambda c: _report(live=0.5, labelled=900),
                    run=lambda c: runs.append(1) or FakeResult()) as ctl:
        ticks = [ctl.tick() for _ in range(3)]
    assert runs == [] and all(t.evaluation.fired is None for t in ticks)
    assert str(ticks[-1].evaluation.suppressed_by) == "cooldown"
    outcomes = [e.details["outcome"] for e in Ledger(config.ledger_path).events(
        model_name="synthetic", kinds=[EventKind.CYCLE])]
    assert outcomes == ["started", "interrupted"]
