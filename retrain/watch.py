"""`retrain watch`: the long-running controller that checks the triggers and starts cycles.

Each check ("tick"):

1. the monitor looks at live traffic (`retrain.monitor.check`): input drift against the
   champion's reference, the live metric from the labels sent to ``/feedback``;
2. on-demand requests waiting in the inference log's inbox (``POST /admin/retrain``,
   `retrain watch --request`) are read;
3. the triggers are evaluated (`retrain.triggers.evaluate`, pure) and the evaluation is
   recorded in the ledger with its inputs and outcome;
4. when one fired, the cycle runs (`retrain.pipeline.run_cycle`) and its start, end and
   verdict are recorded too.

With ``rollout.enabled``, a promoted version does not take the champion alias in the cycle:
the controller starts its rollout (`retrain.traffic_control.RolloutDriver`) and advances it
one step per check (smoke, shadow, canary steps, each gated), and starts no other cycle
while it runs. On start it reconciles the registry's traffic split with the saved rollout.

Restart safety. The trigger state (debounce counts, cycle starts for the cap and cooldown,
the schedule slot handled) lives in ``<workdir>/watch/state.json``, written atomically after
every change. A cycle's start is persisted *before* the cycle runs, so a controller that dies
mid-cycle and restarts finds that start: the cooldown and the cap count it, it is recorded
as interrupted, and no second cycle starts for the same reason. Only one controller runs per
project (`retrain.locks.controller_lock`, released by the kernel when the process dies) and
only one cycle (`retrain.locks.cycle_lock`, taken by `run_cycle` itself).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from retrain.config import Config
from retrain.errors import RetrainError
from retrain.files import write_json_atomic
from retrain.ledger import EventKind, Ledger, LedgerEvent
from retrain.locks import controller_lock
from retrain.monitor import MonitorReport
from retrain.triggers import (
    DemandRequest,
    Evaluation,
    MonitorSignals,
    TriggerInputs,
    TriggerState,
    evaluate,
)

if TYPE_CHECKING:
    from retrain.registry import Registry
    from retrain.traffic_control import RolloutDriver


@dataclass(frozen=True)
class Tick:
    """What one check saw and did."""

    evaluation: Evaluation
    monitor: MonitorReport
    #: the cycle's outcome when one ran: {"cycle_id", "verdict", "model_version", ...}
    cycle: dict[str, Any] | None = None
    #: the rollout in progress (or just finished) after this check, when rollouts are on
    rollout: Any = None

    def summary(self) -> str:
        when = self.evaluation.at.strftime("%Y-%m-%d %H:%M:%S")
        line = f"[{when}] {self.evaluation.reason}"
        if self.cycle is not None:
            outcome = self.cycle.get("error") or (
                f"{self.cycle['verdict']}"
                + (f" -> v{self.cycle['model_version']}" if self.cycle.get("model_version")
                   else ""))
            line += f"\n  cycle {self.cycle.get('cycle_id') or ''}: {outcome}"
        return line




class Controller:
    """Checks the triggers and starts cycles; use as a context manager (it holds the lock).

    ``monitor`` and ``run`` default to the real monitor and cycle; tests of the loop's logic
    may pass others (the integration tests use the real ones).
    """

    def __init__(self, config: Config, *, monitor: Callable[[Config], MonitorReport] | None = None,
                 run: Callable[[Config], Any] | None = None,
                 clock: Callable[[], float] = time.time,
                 echo: Callable[[str], None] | None = None) -> None:
        self.config = config
        self._monitor = monitor
        self._run = run
        self._clock = clock
        self._echo = echo or (lambda line: None)
        self.dir = config.watch_dir
        self.state_path = self.dir / "state.json"
        self.ledger = Ledger(config.ledger_path)
        self._lock: AbstractContextManager | None = None
        self.state = TriggerState()
        self._running: dict[str, Any] | None = None
        self._registry: Registry | None = None
        self._driver: RolloutDriver | None = None

    # -- lifecycle ----------------------------------------------------------------------------
    def __enter__(self) -> Controller:
        lock = self._lock = controller_lock(self.config.project.workdir)
        lock.__enter__()
        try:
            self._load()
            if self.config.rollout.enabled:
                self._echo(f"rollout: {self.driver().reconcile()}")
        except BaseException:
            lock.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.__exit__(*exc_info)

    def _load(self) -> None:
        if not self.state_path.exists():
            return
        try:
            raw = json.loads(self.state_path.read_text())
        except (OSError, ValueError) as exc:
            raise RetrainError(
                f"cannot read the controller state {self.state_path}: {exc}; fix or delete it "
                "(deleting forgets the cooldown, the cap and the debounce counts)"
            ) from exc
        self.state = TriggerState.from_dict(raw.get("triggers", {}))
        running = raw.get("running")
        if running:
            # We hold the controller lock, so whoever started this cycle is gone: it never
            # finished. Its start stays in the state (cooldown, cap); it is not run again.
            self._record_cycle("interrupted", running,
                               ["the controller stopped while this cycle ran; it was not "
                                "restarted (its start still counts for cooldown and cap)"])
            self._echo(f"cycle {running.get('cycle')} started {running.get('started_at')} "
                       "was interrupted by a controller restart; not re-run")
            self._save(running=None)

    def _save(self, *, running: dict[str, Any] | None) -> None:
        self._running = running
        write_json_atomic(self.state_path, {"triggers": self.state.to_dict(), "running": running})

    def driver(self):
        """The rollout driver (rollouts on only); created on first use."""
        if self._driver is None:
            from retrain.traffic_control import RolloutDriver

            self._driver = RolloutDriver(self.config, clock=self._clock, echo=self._echo)
        return self._driver

    def _advance_rollout(self):
        """Step the rollout in progress, if any; None when there is none."""
        if not self.config.rollout.enabled:
            return None
        driver = self.driver()
        if driver.active() is None:
            moved = driver.record_outside_moves()
            if moved:
                self._echo(moved)
            return None
        try:
            return driver.step()
        except RetrainError as exc:
            self._echo(f"rollout step failed: {exc}; retrying at the next check")
            return driver.active()

    # -- one check ----------------------------------------------------------------------------
    def _monitor_report(self) -> MonitorReport:
        if self._monitor is not None:
            return self._monitor(self.config)
        from retrain.monitor import check
        from retrain.registry import MlflowRegistry

        self._registry = self._registry or MlflowRegistry.from_config(self.config)
        return check(self.config, registry=self._registry, now=self._clock())

    def _record_admin_moves(self) -> None:
        """Copy the moves the Serve app's admin endpoints noted into the ledger, each at its
        own time, before anything reads the ledger; then consume the notes."""
        from retrain.operations import record_admin_moves
        from serve.inference_log import consume_move, pending_moves

        path = self.config.inference_log_path
        moves = pending_moves(path)
        for event in record_admin_moves(self.ledger, self.config.model_name, moves):
            self._echo(f"recorded an admin move: {event.reasons[0]}")
        for move in moves:
            consume_move(path, move.id)

    def _demands(self) -> tuple[DemandRequest, ...]:
        from serve.inference_log import pending_requests

        return tuple(DemandRequest(id=r.id, reason=r.reason, source=r.requested_by or "http")
                     for r in pending_requests(self.config.inference_log_path))

    def tick(self) -> Tick:
        """Check once; run a cycle when a trigger fires. Cycle errors are recorded, not raised."""
        now = datetime.fromtimestamp(self._clock(), tz=timezone.utc)
        self._record_admin_moves()
        rollout = self._advance_rollout()
        report = self._monitor_report()
        drift = report.drift
        signals = MonitorSignals(
            drift_detected=report.drift_detected,
            drifted_features=tuple(drift.drifted) if drift else (),
            drift_summary=drift.summary().splitlines()[0] if drift else "; ".join(report.notes),
            rows=report.rows,
            live_metric=report.live.value,
            labelled=report.live.labelled,
            drifted_share=drift.drifted_share if drift else None,
            opportunity=report.opportunity,
        )
        inputs = TriggerInputs(now=now, metric=self.config.task.primary_metric,
                               champion_metric=report.live.evaluated, monitor=signals,
                               demands=self._demands())
        evaluation = evaluate(self.config.triggers, self.state, inputs)
        self.state = evaluation.state
        self.ledger.append(LedgerEvent(
            kind=EventKind.TRIGGER, model_name=self.config.model_name, at=now.timestamp(),
            version=report.champion, reasons=(evaluation.reason,),
            details={"outcome": str(evaluation.fired or evaluation.suppressed_by or "none"),
                     "evaluation": evaluation.to_dict(), "monitor": report.to_dict()},
        ))
        self._save(running=None)
        cycle = None
        if evaluation.fired is not None and rollout is not None and not rollout.done:
            self._echo(f"{evaluation.fired} fired, but the rollout of v{rollout.challenger} is "
                       "in progress: no cycle until it completes or rolls back")
        elif evaluation.fired is not None:
            cycle = self._start_cycle(evaluation, now)
            version = cycle.get("model_version")
            if (version and cycle.get("verdict") == "promote" and self.config.rollout.enabled
                    and self.driver().active() is None):
                from retrain.registry import CHAMPION

                if self.driver().registry.alias_version(CHAMPION) != version:
                    rollout = self.driver().start(version)
        tick = Tick(evaluation, report, cycle, rollout)
        self._echo(tick.summary())
        return tick

    def _start_cycle(self, evaluation: Evaluation, now: datetime) -> dict[str, Any]:
        from serve.inference_log import consume_request

        self.state = self.state.started(now)
        running = {"cycle": f"watch-{int(now.timestamp())}", "pid": os.getpid(),
                   "started_at": now.isoformat(), "trigger": str(evaluation.fired),
                   "reason": evaluation.reason}
        self._save(running=running)  # persisted before the cycle: a crash cannot repeat it
        for request_id in evaluation.demand_ids:
            consume_request(self.config.inference_log_path, request_id)
        self._record_cycle("started", running, [evaluation.reason])
        try:
            result = self._run_cycle()
            outcome = {
                "cycle_id": result.cycle_id, "run_id": result.run_id,
                "verdict": result.decision.verdict.value,
                "model_version": result.model_version,
                "reasons": list(result.decision.reasons),
            }
            self._record_cycle("finished", {**running, **outcome},
                               [f"{outcome['verdict']}: " + "; ".join(outcome["reasons"][:1])],
                               run_id=result.run_id, version=result.model_version)
        except RetrainError as exc:
            outcome = {"error": f"{type(exc).__name__}: {exc}"}
            self._record_cycle("failed", {**running, **outcome}, [outcome["error"]])
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM (`retrain watch` raises it for both)
            self._record_cycle("interrupted", running, ["the controller was stopped"])
            raise
        finally:
            self._save(running=None)
        return outcome

    def _run_cycle(self):
        if self._run is not None:
            return self._run(self.config)
        from retrain.pipeline import run_cycle

        return run_cycle(self.config, echo=self._echo)

    def _record_cycle(self, outcome: str, details: dict[str, Any], reasons: list[str], *,
                      run_id: str | None = None, version: str | None = None) -> None:
        self.ledger.append(LedgerEvent(
            kind=EventKind.CYCLE, model_name=self.config.model_name, at=self._clock(),
            version=version, run_id=run_id, reasons=tuple(reasons),
            details={"outcome": outcome, **details},
        ))

    # -- the loop -----------------------------------------------------------------------------
    def run(self, *, max_ticks: int | None = None, stop: threading.Event | None = None) -> int:
        """Check every ``triggers.check_interval_s`` until ``stop`` is set or ``max_ticks``
        checks ran; returns the number of cycles started. A monitor error (the registry
        briefly unreachable, say) is reported and retried at the next check."""
        stop = stop or threading.Event()
        ticks = cycles = 0
        while not stop.is_set() and (max_ticks is None or ticks < max_ticks):
            started = time.monotonic()
            try:
                cycles += self.tick().cycle is not None
            except RetrainError as exc:
                self._echo(f"check failed: {exc}; retrying in "
                           f"{self.config.triggers.check_interval_s:g}s")
            ticks += 1
            if max_ticks is not None and ticks >= max_ticks:
                break
            stop.wait(max(0.0, self.config.triggers.check_interval_s
                          - (time.monotonic() - started)))
        return cycles
