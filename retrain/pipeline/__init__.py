"""One retraining cycle, composed from the stage functions: data -> search -> evaluate ->
decide -> registry -> ledger and report. Plain functions and typed values; no state outside
the arguments, except the cycle's stage record.

Resuming. A cycle writes ``<workdir>/cycles/<cycle_id>.json`` (`CycleStage`) once its MLflow
run is open and again after each step with lasting effects: ``started`` (admission judged,
quarantine recorded, the partitions, exclusions and champion fixed), ``searched`` (every
trial finished and logged), ``decided`` (the decision and the challenger's logged model),
``registered`` (a promoted version and the alias move), ``recorded`` (the ledger), ``done``.
``run_cycle(config, resume=True)`` (`retrain run --resume`) continues the newest cycle when
it is not done, in the same MLflow run:

- the search resumes (`retrain.search.run_search`): trials that had finished are read back
  from the first run's experiment and not run again, the rest of the budget runs as a new
  experiment beside it, and a search that had finished is only read back;
- steps with lasting effects are not repeated (quarantine records, trial runs, the logged
  model, the registration and alias move, the ledger entry), and a decision once made is
  kept;
- steps without lasting effects are simply redone, because that is cheaper and safer than
  storing their results: reading the split, judging admission again (pure, on the same
  data), loading the finalists and scoring them on the holdout (deterministic; only the
  measured latencies differ), the report.

A cycle resumes only on the data it started with (same partitions, same content) and only
while the champion it compared against still holds the alias; otherwise resuming would mix
two cycles, and the error says to run a new one. An error inside a cycle (say MLflow was down
after the search) leaves it resumable from the stage it reached.
"""

from __future__ import annotations

from retrain.pipeline.run import run_cycle
from retrain.pipeline.stages import rolls_out
from retrain.pipeline.state import (
    STAGES,
    CycleResult,
    CycleStage,
    cycles_folder,
    read_stages,
    save_stage,
    unfinished_cycle,
)

__all__ = [
    "STAGES",
    "CycleResult",
    "CycleStage",
    "cycles_folder",
    "read_stages",
    "rolls_out",
    "run_cycle",
    "save_stage",
    "unfinished_cycle",
]
