from pathlib import Path

import pytest
import yaml

from retrain.config import Config, config_from_dict, example_yaml, load_config
from retrain.errors import ConfigError

MINIMAL = {
    "project": {"name": "p"},
    "data": {"path": "data", "partition_column": "month", "target": "y"},
    "task": {"type": "classification"},
}


def _problems(raw) -> tuple[str, ...]:
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw, base_dir="/base")
    return info.value.problems


def test_minimal_config_gets_defaults_and_absolute_paths():
    config = config_from_dict(MINIMAL, base_dir="/base")
    assert config.data.path == Path("/base/data")
    assert config.project.workdir == Path("/base/.retrain")
    assert config.tracking_uri == "sqlite:////base/.retrain/mlflow.db"
    assert config.task.primary_metric == "auc" and config.task.greater_is_better
    assert config.model_name == "p" and config.experiment_name == "p"
    assert "max_depth" in config.search.space


def test_regression_default_metric_is_rmse_and_lower_is_better():
    config = config_from_dict({**MINIMAL, "task": {"type": "regression"}})
    assert config.task.primary_metric == "rmse"
    assert not config.task.greater_is_better


def test_unknown_key_suggests_the_close_one():
    raw = {**MINIMAL, "search": {"num_sample": 3}}
    problems = _problems(raw)
    assert problems == ("search.num_sample: unknown key; did you mean 'num_samples'?",)


def test_every_problem_is_listed_with_field_and_value():
    raw = {
        "project": {"name": "p"},
        "data": {"path": "d", "partition_column": "m"},
        "task": {"type": "clustering"},
        "search": {"num_samples": 0},
    }
    problems = _problems(raw)
    assert any(p.startswith("data.target: required but missing") for p in problems)
    assert any(p.startswith("task.type:") and "'clustering'" in p for p in problems)
    assert any(p.startswith("search.num_samples:") and "(got 0)" in p for p in problems)


def test_unknown_keys_get_a_suggestion_at_every_nesting_level():
    raw = {**MINIMAL,
           "search": {"space": {"eta": {"type": "float", "low": 0.1, "hihg": 0.3}},
                      "families": {"xgboost": {"enabeld": True}}},
           "evaluation": {"guardrails": {"max_size_ratoi": 3.0, "hihg": 1},
                          "slices": [{"column": "origin", "tolerence": 0.01}]},
           "serving": {"potr": 8001}}
    problems = set(_problems(raw))
    assert {
        "search.space.eta.hihg: unknown key; did you mean 'high'?",  # a mapping of sections
        "search.families.xgboost.enabeld: unknown key; did you mean 'enabled'?",
        "evaluation.guardrails.max_size_ratoi: unknown key; did you mean 'max_size_ratio'?",
        "evaluation.slices.0.tolerence: unknown key; did you mean 'tolerance'?",  # a list
        "serving.potr: unknown key; did you mean 'port'?",
    } <= problems
    # nothing close: the keys that are known there
    (far,) = [p for p in problems if p.startswith("evaluation.guardrails.hihg")]
    assert far.startswith("evaluation.guardrails.hihg: unknown key; remove it (known here: ")
    assert "max_size_ratio" in far and "max_latency_ms" in far


def test_metric_must_fit_the_task():
    raw = {**MINIMAL, "task": {"type": "regression", "metric": "auc"}}
    (problem,) = _problems(raw)
    assert problem == ("task.metric: metric 'auc' does not fit task type 'regression'; use one "
                       "of ['rmse', 'mae']")


def test_param_range_is_checked():
    raw = {**MINIMAL, "search": {"space": {"eta": {"type": "float", "low": 0.5, "high": 0.1}}}}
    (problem,) = _problems(raw)
    assert problem.startswith("search.space.eta")
    assert "'low' must be below 'high'" in problem


def test_fixed_values_in_the_space_are_kept():
    raw = {**MINIMAL, "search": {"space": {"max_depth": 4, "grow_policy": "lossguide"}}}
    config = config_from_dict(raw)
    assert config.search.space == {"max_depth": 4, "grow_policy": "lossguide"}


def test_target_listed_as_feature_is_rejected():
    raw = {**MINIMAL, "data": {**MINIMAL["data"], "features": ["a", "y"]}}
    (problem,) = _problems(raw)
    assert "['y']" in problem


def test_not_a_mapping():
    with pytest.raises(ConfigError, match="expected a mapping"):
        config_from_dict(["a"])


def test_load_config_missing_file_says_how_to_create_one(tmp_path):
    with pytest.raises(ConfigError, match="retrain init"):
        load_config(tmp_path / "nope.yaml")


def test_load_config_bad_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("project: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_example_yaml_is_a_valid_config(tmp_path):
    path = tmp_path / "retrain.yaml"
    path.write_text(example_yaml("demo-project"))
    config = load_config(path)
    assert isinstance(config, Config)
    assert config.project.name == "demo-project"
    assert config.data.path == tmp_path / "data"
    assert yaml.safe_load(example_yaml())["search"]["space"]["eta"]["log"] is True


def test_config_is_frozen():
    config = config_from_dict(MINIMAL)
    with pytest.raises(Exception, match="frozen"):
        config.project.name = "other"
