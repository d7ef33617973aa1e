"""The Serve app's settings come from the project config by name: one field, one default."""

from __future__ import annotations

import dataclasses

from retrain.config import config_from_dict
from retrain.config.serving import InferenceLogConfig, ServingConfig
from retrain.serving import NOT_FROM_SECTIONS, serve_settings
from serve.settings import ServeSettings
from tests.synthetic import config_dict


def test_every_setting_comes_from_one_section_field_of_the_same_name_and_default():
    sections = (ServingConfig, InferenceLogConfig)
    for f in dataclasses.fields(ServeSettings):
        if f.name in NOT_FROM_SECTIONS:
            assert not any(f.name in s.model_fields for s in sections), f.name
            continue
        owners = [s for s in sections if f.name in s.model_fields]
        assert len(owners) == 1, (f.name, owners)
        assert owners[0].model_fields[f.name].default == f.default, f.name


def test_a_project_config_reaches_the_settings_unchanged(tmp_path, monkeypatch):
    monkeypatch.setenv("MY_TOKEN", "s3cret")
    raw = config_dict(tmp_path / "data", tmp_path / "work")
    raw["serving"] = {"port": 9001, "version_threads": 3, "batch_max_size": 8,
                      "admin_token_env": "MY_TOKEN", "allow_all_missing_rows": True}
    raw["inference_log"] = {"enabled": False, "flush_rows": 7}
    config = config_from_dict(raw)
    settings = serve_settings(config)
    assert (settings.port, settings.version_threads, settings.batch_max_size) == (9001, 3, 8)
    assert settings.allow_all_missing_rows and settings.flush_rows == 7
    assert settings.log_predictions is False and settings.admin_token_env == "MY_TOKEN"
    assert settings.token_matches("s3cret") and not settings.token_matches("other")
    assert settings.model_name == config.model_name
    assert settings.tracking_uri == config.tracking_uri
