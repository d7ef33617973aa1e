"""The Ray Serve application of retrain: HTTP inference for registered models.

This package never imports ``retrain``; it talks to the model registry (MLflow) directly and
receives its settings as a plain `ServeSettings` value.
"""

from serve.features import FeatureSpec
from serve.schemas import InvalidInput, parse_invocation
from serve.settings import ServeSettings

__all__ = ["FeatureSpec", "InvalidInput", "ServeSettings", "parse_invocation"]
