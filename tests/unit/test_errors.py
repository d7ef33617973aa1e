"""The exception tree: an invalid value passed in code is both a RetrainError and a ValueError."""

from __future__ import annotations

import pytest

import retrain
from retrain.cron import CronSchedule
from retrain.errors import ConfigError, InvalidValueError, RetrainError


def test_an_invalid_value_is_a_retrain_error_and_a_value_error_with_the_config_exit_code():
    assert issubclass(InvalidValueError, RetrainError) and issubclass(InvalidValueError, ValueError)
    assert InvalidValueError.exit_code == ConfigError.exit_code == 2
    assert retrain.InvalidValueError is InvalidValueError
    # raised by the pure core: callers catching either kind keep working
    with pytest.raises(RetrainError) as raised:
        CronSchedule.parse("61 * * * *")
    assert isinstance(raised.value, ValueError) and "61" in str(raised.value)
