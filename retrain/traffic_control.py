"""The rollout driver: applies each step's traffic split, observes it, advances, records.

The pure state machine is `retrain.rollout` (plan, gates, `Rollout`); this module is its
adapter to the world:

- the split lives in the registry, as the registered model's tag ``retrain.traffic``
  (`TrafficStore`). The Serve replicas poll it with the ``champion`` alias and apply a new
  split only once every version it names is loaded and warmed. No tag: everything to the
  version the alias names. So the registry is the one source of truth, and Serve can never
  serve a version the registry does not know;
- observations come from the inference log: every answered row carries its version, its
  latency and whether it was a shadow copy; failed predictions are rows with an error
  (`observe`, pure);
- every transition is a ``traffic_step`` event in the ledger; completion moves the
  ``champion`` alias (an ``alias_move``); a rollback leaves the alias where it was;
- the rollout's state is saved in ``<workdir>/rollout/state.json`` *before* the registry is
  changed, so a driver that dies between the two re-applies the saved split when it starts
  again (`RolloutDriver.reconcile`).

The smoke step sends a sample batch (real rows of the newest partition) pinned to each
version (header ``x-retrain-version``, admin token) through the live app and judges both on
exactly those rows; to be pinnable the challenger is named in the split with weight 0
(standby: loaded and warmed, never routed or mirrored to).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from retrain.config import Config
from retrain.errors import ConfigError, RetrainError, StateError
from retrain.files import write_json_atomic
from retrain.ledger import EventKind, Ledger, LedgerEvent
from retrain.monitor import live_metric
from retrain.rollout import (
    Observation,
    PredictionSummary,
    Rollout,
    RolloutPlan,
    Stage,
    VersionStats,
    ledger_event,
)
from serve.loader import ROLLOUT_TAG, TRAFFIC_TAG
from serve.traffic import PIN_HEADER, TrafficSplit

if TYPE_CHECKING:
    from retrain.registry import Registry
    from serve.inference_log import LogTail


class TrafficStore:
    """The split as a registered-model tag (MLflow adapter)."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def read(self) -> TrafficSplit | None:
        raw = self.registry.model_tags().get(TRAFFIC_TAG)
        if not raw:
            return None
        try:
            return TrafficSplit.from_dict(json.loads(raw))
        except ValueError as exc:
            raise RetrainError(f"the registry's {TRAFFIC_TAG} tag is unreadable ({exc}); "
                               "`retrain rollout rollback` resets it") from exc

    def write_summary(self, rollout: Rollout) -> None:
        """Where the rollout stands, for the app's GET /admin/rollout and its promote check."""
        summary = {"champion": rollout.champion, "challenger": rollout.challenger,
                   "stage": rollout.stage.value, "step": rollout.step,
                   "steps": [s.name for s in rollout.plan.steps],
                   "split": rollout.split.to_dict(), "reason": rollout.reason[:1000],
                   "started_at": rollout.started_at, "step_started_at": rollout.step_started_at}
        self.registry.set_model_tag(ROLLOUT_TAG, json.dumps(summary))

    def write(self, split: TrafficSplit | None) -> None:
        """Apply ``split``; None removes the tag (all traffic to the champion alias)."""
        if split is None:
            self.registry.delete_model_tag(TRAFFIC_TAG)
            return
        for version in split.deployed:
            self.registry.require_version(version)  # ModelNotFoundError if unknown
        self.registry.set_model_tag(TRAFFIC_TAG, json.dumps(split.to_dict()))


# --------------------------------------------------------------------------------------------
# observation (pure)
# --------------------------------------------------------------------------------------------


def version_stats(rows: pd.DataFrame, version: str, *, shadow: bool,
                  labels: pd.DataFrame | None = None, task: str = "classification",
                  metric: str = "auc") -> VersionStats:
    """One version's requests, errors, p99 latency and predictions in ``rows`` (log rows of
    one step): its shadow copies when it is the shadow, its live answers otherwise."""
    mine = rows[(rows["model_version"] == version) & (rows["shadow"].astype(bool) == shadow)]
    if mine.empty:
        return VersionStats()
    failed = mine["error"].notna()
    per_request = mine.drop_duplicates("request_id")
    latency = per_request["latency_ms"].to_numpy(dtype=np.float64)
    latency = latency[np.isfinite(latency)]
    good = mine[~failed]
    live = (live_metric(task, metric, good, labels, version=version)
            if labels is not None and not labels.empty else None)
    return VersionStats(
        requests=int(per_request["request_id"].nunique()),
        errors=int(mine.loc[failed, "request_id"].nunique()),
        latency_p99_ms=float(np.quantile(latency, 0.99)) if latency.size else None,
        predictions=PredictionSummary.of(good["prediction"].to_numpy(dtype=np.float64))
        if len(good) else None,
        live_metric=None if live is None else live.value,
        labelled=0 if live is None else live.labelled,
    )


def observe(rollout: Rollout, rows: pd.DataFrame, *, since: float,
            labels: pd.DataFrame | None = None, task: str = "classification",
            metric: str = "auc", healthy: dict[str, bool] | None = None) -> Observation:
    """The current step's `Observation` from its inference-log rows."""
    split = rollout.split
    stats = {}
    for version in (rollout.champion, rollout.challenger):
        as_shadow = split.shadow == version
        s = version_stats(rows, version, shadow=as_shadow, labels=labels, task=task,
                          metric=metric)
        if healthy is not None and version in healthy:
            s = replace(s, healthy=healthy[version])
        stats[version] = s
    return Observation(stats[rollout.champion], stats[rollout.challenger], since=since)


# --------------------------------------------------------------------------------------------
# the driver
# --------------------------------------------------------------------------------------------




class RolloutDriver:
    """Drives one rollout at a time for a project (see the module docstring)."""

    def __init__(self, config: Config, *, registry: Registry | None = None, url: str | None = None,
                 token: str | None = None, clock: Callable[[], float] = time.time,
                 echo: Callable[[str], None] | None = None) -> None:
        from retrain.registry import MlflowRegistry
        from retrain.serving import base_url

        self.config = config
        self.registry = registry or MlflowRegistry.from_config(config)
        self.store = TrafficStore(self.registry)
        self.ledger = Ledger(config.ledger_path)
        self.url = url or base_url(config)
        self.token = token if token is not None else os.environ.get(
            config.serving.admin_token_env)
        self.clock = clock
        self.echo = echo or (lambda line: None)
        self.state_path = config.rollout_state_path
        #: the smoke step's pinned requests (their log rows are what the step is judged on)
        self._smoke_ids: set[str] = set()
        self._batch: list[dict[str, Any]] | None = None
        #: the inference log's predictions and feedback as read so far: each poll reads only
        #: the files written since (dropped when a rollout ends)
        self._tails: tuple[LogTail, LogTail] | None = None

    # -- state ------------------------------------------------------------------------------
    def load(self) -> Rollout | None:
        if not self.state_path.exists():
            return None
        try:
            return Rollout.from_dict(json.loads(self.state_path.read_text()))
        except (OSError, ValueError) as exc:
            raise RetrainError(f"cannot read the rollout state {self.state_path}: {exc}; "
                               "fix or delete it, then `retrain rollout rollback`") from exc

    def active(self) -> Rollout | None:
        rollout = self.load()
        return rollout if rollout is not None and not rollout.done else None

    def _save(self, rollout: Rollout) -> None:
        write_json_atomic(self.state_path, rollout.to_dict())
        self.store.write_summary(rollout)

    def _applied(self, rollout: Rollout) -> TrafficSplit | None:
        """What the registry should say for this rollout state."""
        if rollout.done:
            return None  # the alias says it all: the tag goes
        if rollout.stage is Stage.SMOKE:
            # standby (weight 0): loaded and warmed so that the smoke test can pin it, but
            # neither routed nor mirrored to
            return TrafficSplit({**rollout.split.weights, rollout.challenger: 0.0},
                                shadow=rollout.split.shadow,
                                sticky_key=rollout.split.sticky_key)
        return rollout.split

    def _record(self, before: Rollout, after: Rollout) -> None:
        for transition in after.history[len(before.history):]:
            self.ledger.append(ledger_event(after, transition,
                                            model_name=self.config.model_name))
            self.echo(f"rollout v{after.challenger}: {transition.reason}")

    def _commit(self, before: Rollout | None, after: Rollout) -> Rollout:
        """Save, then change the registry, then record: a crash in between is reconciled."""
        from retrain.operations import move_champion

        self._save(after)
        if after.stage is Stage.COMPLETED and (before is None or not before.done):
            # the alias first: replicas then route everything to it, and the tag goes
            move_champion(self.registry, self.ledger, self.config.model_name,
                          after.challenger, kind=EventKind.ALIAS_MOVE,
                          previous=after.champion,
                          reasons=(f"rollout completed: {after.reason}",),
                          details={"rollout_started_at": after.started_at})
        self.store.write(self._applied(after))
        if before is not None:
            self._record(before, after)
        if after.done:
            self._tails = None  # a long-lived driver (`retrain watch`) holds no log meanwhile
        return after

    # -- operations ---------------------------------------------------------------------------
    def start(self, challenger: str) -> Rollout:
        from retrain.registry import CHAMPION

        current = self.active()
        if current is not None:
            raise StateError(
                f"a rollout of version {current.challenger} is in progress "
                f"({current.stage}); finish it or `retrain rollout rollback` first")
        champion = self.registry.alias_version(CHAMPION)
        if champion is None:
            raise StateError("there is no champion to roll out against: the first version "
                              "goes straight to the champion alias (`retrain rollout promote`)")
        self.registry.require_version(str(challenger))
        rollout = Rollout.start(RolloutPlan.from_config(self.config), champion=champion,
                                challenger=str(challenger), now=self.clock())
        self._commit(None, rollout)
        self._record(replace(rollout, history=()), rollout)
        return rollout

    def step(self) -> Rollout:
        """Observe the current step and advance it (or roll back, or wait)."""
        rollout = self.active()
        if rollout is None:
            raise StateError("no rollout in progress; start one with `retrain rollout start`")
        applied = self.store.read()
        if applied != self._applied(rollout):
            # POST /admin/rollback, `retrain rollout traffic` or a hand edit changed the split
            # under the rollout: an operator's word, so the rollout stops there
            return self._commit(rollout, rollout.roll_back(
                "operator: the traffic split was changed outside the rollout (found "
                f"{None if applied is None else applied.to_dict()})", self.clock()))
        healthy = self._smoke(rollout) if rollout.stage is Stage.SMOKE else None
        observation = self._observe(rollout, healthy)
        advanced = rollout.advance(observation, self.clock())
        if advanced.history == rollout.history:
            self._save(advanced)  # the latest gates and what it waits for
            return advanced
        return self._commit(rollout, advanced)

    def roll_back(self, reason: str) -> Rollout:
        rollout = self.active()
        if rollout is None:
            raise StateError("no rollout in progress to roll back")
        return self._commit(rollout, rollout.roll_back(reason, self.clock()))

    def run(self, *, poll_s: float = 1.0, timeout_s: float | None = None) -> Rollout:
        """Step until the rollout completes or rolls back."""
        started = self.clock()
        while True:
            rollout = self.step()
            if rollout.done:
                return rollout
            if timeout_s is not None and self.clock() - started > timeout_s:
                return self.roll_back(f"deadline: not done within {timeout_s:g} s "
                                      f"({rollout.reason})")
            time.sleep(poll_s)

    def reconcile(self) -> str:
        """Make the registry agree with the saved rollout state; say what was done."""
        from retrain.operations import set_traffic

        rollout = self.load()
        tag = self.store.read()
        if rollout is None or rollout.done:
            if tag is None:
                return "in agreement: no rollout, no split"
            set_traffic(self.store, self.ledger, self.config.model_name, None,
                        reasons=("reconciled: a split was left without an active rollout; "
                                 "all traffic back to the champion alias",),
                        details={"reconciled": True, "removed": tag.to_dict()})
            return f"removed a stale split {tag.to_dict()}"
        wanted = self._applied(rollout)
        if tag == wanted:
            return f"in agreement: rollout of v{rollout.challenger} at {rollout.stage}"
        self.store.write(wanted)
        return (f"re-applied the split of the rollout of v{rollout.challenger} at "
                f"{rollout.stage}")

    def record_outside_moves(self) -> str | None:
        """An alias move the ledger does not know (POST /admin/promote, the MLflow UI) is
        recorded when seen, so that the ledger keeps answering "which version served when"."""
        from retrain.registry import CHAMPION

        champion = self.registry.alias_version(CHAMPION)
        known = self.ledger.served_at(self.config.model_name, self.clock())
        if champion is None or (known is not None and known.version == champion):
            return None
        self.ledger.append(LedgerEvent(
            kind=EventKind.ALIAS_MOVE, model_name=self.config.model_name, alias=CHAMPION,
            version=champion, previous_version=None if known is None else known.version,
            reasons=("observed: the champion alias was moved outside retrain (admin endpoint "
                     "or the registry directly); recorded when seen",),
            details={"observed": True},
        ))
        return f"recorded an outside move of the champion alias to v{champion}"

    # -- the world --------------------------------------------------------------------------
    def _observe(self, rollout: Rollout, healthy: dict[str, bool] | None) -> Observation:
        from serve.inference_log import LogTail
        from serve.inference_log.schema import FEEDBACK, PREDICTIONS

        if self._tails is None:
            path = self.config.inference_log_path
            self._tails = (LogTail(path, PREDICTIONS), LogTail(path, FEEDBACK))
        since = rollout.step_started_at
        rows = self._tails[0].read(since)
        if rollout.stage is Stage.SMOKE:
            # only the pinned sample batches: both versions on the very same rows
            rows = rows[rows["request_id"].isin(self._smoke_ids)]
        task = self.config.task
        labels = self._tails[1].read(since) if rollout.plan.gates.min_labelled else None
        return observe(rollout, rows, since=since, labels=labels, task=task.type,
                       metric=task.primary_metric, healthy=healthy)

    def _smoke_batch(self, rollout: Rollout) -> list[dict[str, Any]]:
        """Up to 64 real rows of the newest partition (the same for both versions); one
        example row of the champion's features if the data cannot be read here."""
        from retrain.data import list_partitions, read_partition

        spec = self.registry.feature_spec(rollout.champion)
        try:
            newest = list_partitions(self.config.data)[-1]
            rows = read_partition(self.config.data, newest, spec.names)
            rows = rows.sample(min(64, len(rows)), random_state=0)
            return json.loads(rows.to_json(orient="records"))
        except (RetrainError, OSError, ValueError, IndexError):
            return [spec.example()]

    def _pinned(self, http, version: str, sample: dict, *, load_timeout_s: float = 60.0):
        """One pinned request. 409 means a replica has not loaded the version yet (it loads
        and warms it in the background once the split names it): ask again until it has."""
        import httpx

        deadline = time.monotonic() + load_timeout_s
        while True:
            try:
                r = http.post(f"{self.url}/invocations", json=sample, headers={
                    PIN_HEADER: version, "authorization": f"Bearer {self.token}"})
            except httpx.HTTPError:
                return None, {}
            if r.status_code != 409 or time.monotonic() > deadline:
                try:
                    return r, (r.json() if r.status_code == 200 else {})
                except ValueError:
                    return r, {}
            time.sleep(0.25)

    def _smoke(self, rollout: Rollout) -> dict[str, bool]:
        """Pinned sample batches to both versions through the live app; True if all 200."""
        import httpx

        if not self.token:
            raise ConfigError(
                f"the smoke test pins requests to a version, which needs the admin token: set "
                f"{self.config.serving.admin_token_env}")
        if self._batch is None:
            self._batch = self._smoke_batch(rollout)
        sample = {"dataframe_records": self._batch}
        step = rollout.current_step
        need = step.min_requests if step is not None else 1
        healthy = {}
        with httpx.Client(timeout=30) as http:
            for version in (rollout.champion, rollout.challenger):
                ok = True
                for _ in range(need):
                    r, answer = self._pinned(http, version, sample)
                    values = np.asarray(answer.get("predictions", []), dtype=np.float64)
                    if answer.get("request_id"):
                        self._smoke_ids.add(answer["request_id"])
                    if (r is None or r.status_code != 200
                            or answer.get("model_version") != version
                            or not values.size or not np.isfinite(values).all()):
                        ok = False
                        break
                healthy[version] = ok
        return healthy
