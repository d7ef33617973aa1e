"""The project configuration: one YAML file, validated on load.

This is the only module that reads YAML or environment variables. Everything downstream takes
the frozen `Config` object. Relative paths are resolved against the directory of the YAML file,
so a project folder can be moved (or uploaded as a Ray job's working dir) as a whole.
"""

from __future__ import annotations

from retrain.config.base import METRIC_DIRECTIONS, TASK_METRICS, DataConfig
from retrain.config.evaluation import EvaluationConfig, GuardrailConfig, SliceConfig
from retrain.config.example import example_yaml
from retrain.config.root import Config, config_from_dict, load_config
from retrain.config.search import DataParallelConfig, ParamRange, SearchConfig
from retrain.config.serving import RayConfig
from retrain.config.watch import ScheduleTrigger, TriggersConfig

__all__ = [
    "METRIC_DIRECTIONS",
    "TASK_METRICS",
    "Config",
    "DataConfig",
    "DataParallelConfig",
    "EvaluationConfig",
    "GuardrailConfig",
    "ParamRange",
    "RayConfig",
    "ScheduleTrigger",
    "SearchConfig",
    "SliceConfig",
    "TriggersConfig",
    "config_from_dict",
    "example_yaml",
    "load_config",
]
