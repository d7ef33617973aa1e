"""retrain: keep production models good as data changes, on Ray.

Public API::

    import ray, retrain
    ray.init(address="auto")                 # or let retrain start a local runtime
    config = retrain.load_config("retrain.yaml")
    result = retrain.run_cycle(config)       # -> retrain.CycleResult
    print(result.decision.summary())
    ledger = retrain.Ledger(config.ledger_path)  # which version served when, and why
    print(ledger.served_at(config.model_name, at=1795000000.0))
"""

from retrain.config import Config, config_from_dict, example_yaml, load_config
from retrain.decide import Decision, Verdict, decide
from retrain.errors import (
    ClusterError,
    ConfigError,
    DataError,
    ModelNotFoundError,
    RegistryError,
    RetrainError,
    SearchError,
)
from retrain.evaluate import Comparison
from retrain.ledger import EventKind, Ledger, LedgerEvent, ServedAt
from retrain.pipeline import CycleResult, run_cycle
from retrain.search import SearchResult, TrialResult

__all__ = [
    "ClusterError",
    "Comparison",
    "Config",
    "ConfigError",
    "CycleResult",
    "DataError",
    "Decision",
    "EventKind",
    "Ledger",
    "LedgerEvent",
    "ModelNotFoundError",
    "RegistryError",
    "RetrainError",
    "SearchError",
    "SearchResult",
    "ServedAt",
    "TrialResult",
    "Verdict",
    "config_from_dict",
    "decide",
    "example_yaml",
    "load_config",
    "run_cycle",
]
