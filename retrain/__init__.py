"""retrain: keep production models good as data changes, on Ray.

Public API::

    import ray, retrain
    ray.init(address="auto")                 # or let retrain start a local runtime
    config = retrain.load_config("retrain.yaml")
    result = retrain.run_cycle(config)       # -> retrain.CycleResult
    print(result.decision.summary())
    ledger = retrain.Ledger(config.ledger_path)  # which version served when, and why
    print(ledger.served_at(config.model_name, at=1795000000.0))

The public names resolve lazily (PEP 562): every Ray trial process imports ``retrain.search``
and so this package first, and an eager import of the whole API (pipeline, evaluator, scipy,
the registry) cost each of them about half a second for names they never use. A name's module
is imported on first access; type checkers read the imports under ``TYPE_CHECKING``.
"""

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from retrain.config import Config, config_from_dict, example_yaml, load_config
    from retrain.decide import Decision, Verdict, decide
    from retrain.errors import (
        BusyError,
        ClusterError,
        ConfigError,
        DataError,
        InvalidValueError,
        ModelNotFoundError,
        RegistryError,
        RetrainError,
        RetrainWarning,
        SearchError,
        StateError,
        UsageError,
    )
    from retrain.evaluate import Comparison
    from retrain.ledger import EventKind, Ledger, LedgerEvent, ServedAt
    from retrain.pipeline import CycleResult, run_cycle
    from retrain.search import SearchResult, TrialResult

# Where each public name lives; keep in step with the TYPE_CHECKING imports and __all__
# (tests/unit/test_lazy_imports.py checks all three agree).
_MODULES: dict[str, tuple[str, ...]] = {
    "retrain.config": ("Config", "config_from_dict", "example_yaml", "load_config"),
    "retrain.decide": ("Decision", "Verdict", "decide"),
    "retrain.errors": ("BusyError", "ClusterError", "ConfigError", "DataError",
                       "InvalidValueError", "ModelNotFoundError", "RegistryError",
                       "RetrainError", "RetrainWarning", "SearchError", "StateError",
                       "UsageError"),
    "retrain.evaluate": ("Comparison",),
    "retrain.ledger": ("EventKind", "Ledger", "LedgerEvent", "ServedAt"),
    "retrain.pipeline": ("CycleResult", "run_cycle"),
    "retrain.search": ("SearchResult", "TrialResult"),
}
_EXPORTS: dict[str, str] = {name: module for module, names in _MODULES.items()
                            for name in names}

__all__ = [
    "BusyError",
    "ClusterError",
    "Comparison",
    "Config",
    "ConfigError",
    "CycleResult",
    "DataError",
    "Decision",
    "EventKind",
    "InvalidValueError",
    "Ledger",
    "LedgerEvent",
    "ModelNotFoundError",
    "RegistryError",
    "RetrainError",
    "RetrainWarning",
    "SearchError",
    "SearchResult",
    "ServedAt",
    "StateError",
    "TrialResult",
    "UsageError",
    "Verdict",
    "config_from_dict",
    "decide",
    "example_yaml",
    "load_config",
    "run_cycle",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(
            f"module 'retrain' has no attribute {name!r}: its public names are listed in "
            f"retrain.__all__; if {name!r} is a submodule, import it first "
            f"(`import retrain.{name}`)"
        )
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """Keeps a public name from being shadowed by the submodule of the same name.

    Importing ``retrain.decide`` binds the package attribute ``decide`` to that submodule; the
    eager package rebound it to the function ``decide`` right after, so ``retrain.decide`` was
    always the function. Lazily, the submodule may be imported first (by the pipeline), and the
    name would then read as the module. Dropping that one binding keeps the old meaning; the
    submodule itself stays in ``sys.modules``, so ``from retrain.decide import ...`` works.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if (isinstance(value, types.ModuleType) and name in _EXPORTS
                and value.__name__ == f"{__name__}.{name}"):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
