"""The exception tree of retrain. Every error the package raises on purpose is one of these.

    RetrainError                  root: catch this to catch everything retrain raises
    ├── ConfigError               the project YAML (or a value passed in code) is invalid
    ├── UsageError                a command was used wrongly (an argument missing or malformed)
    ├── InvalidValueError         a value given to a function, or read back, is invalid (also a
    │                             ValueError)
    ├── DataError                 the dataset is missing, empty, or does not fit the config
    ├── SearchError               the search produced no usable candidate
    ├── RegistryError             the model registry (MLflow) failed or is inconsistent
    │   └── ModelNotFoundError    a model, version or alias that does not exist
    ├── ClusterError              Ray could not be reached or started, or lacks resources
    ├── BusyError                 another process holds the project's cycle or controller lock
    └── StateError                the operation does not fit the current state (e.g. releasing a
                                  partition that is not quarantined)

    RetrainWarning (UserWarning)  it runs, but not as configured

Messages say what was expected, what came, and how to fix it, so that the CLI can print them
as they are. Vendor exceptions (MLflow, Ray, XGBoost) are translated at the adapter that calls
the vendor and chained (`raise ... from exc`) so the original stays visible.
"""

from __future__ import annotations


class RetrainError(Exception):
    """Root of every error raised on purpose by retrain."""

    #: process exit code used by the CLI for this kind of error
    exit_code: int = 1


class ConfigError(RetrainError):
    """The configuration is invalid; the message names the field and the fix."""

    exit_code = 2

    def __init__(self, message: str, *, problems: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.problems = problems


class UsageError(RetrainError):
    """A command (CLI or API call) was used wrongly: an argument is missing, malformed or
    conflicts with another; the message shows the right use. Exit code 2, as argparse's."""

    exit_code = 2


class InvalidValueError(RetrainError, ValueError):
    """A value given to a function (or read back from a record) is invalid; the message says
    which and why. Also a `ValueError`, so code that catches ValueError keeps working (as
    scikit-learn's ``InvalidParameterError``)."""

    exit_code = 2


class DataError(RetrainError):
    """The data cannot be used: missing path, missing columns, empty partitions, bad target."""

    exit_code = 3


class SearchError(RetrainError):
    """The hyperparameter search ended without a usable candidate."""

    exit_code = 4


class RegistryError(RetrainError):
    """The model registry failed or holds something retrain cannot use."""

    exit_code = 5


class ModelNotFoundError(RegistryError):
    """A registered model, version or alias does not exist."""


class RetrainWarning(UserWarning):
    """Something works, but not as configured (a GPU asked for on a CPU-only cluster, say)."""


class ClusterError(RetrainError):
    """Ray could not be reached or started."""

    exit_code = 6


class BusyError(RetrainError):
    """Another process runs a cycle (or `retrain watch`) for this project right now."""

    exit_code = 7


class StateError(RetrainError):
    """The operation does not fit the project's current state; the message says what does."""

    exit_code = 8
