import pytest

from retrain.backtest import POLICIES, backtest, fixed_params
from retrain.config import ParamRange, config_from_dict
from retrain.errors import DataError
from tests.synthetic import config_dict, write_partitions


def _config(tmp_path, **triggers):
    raw = config_dict(tmp_path / "data", tmp_path / "work",
                      triggers={"debounce": 1, "cooldown_s": 0,
                                "performance": {"tolerance": 0.02, "min_samples": 100},
                                **triggers},
                      monitor={"min_rows": 200})
    return config_from_dict(raw)


def test_fixed_params_take_the_middle_of_each_range():
    space = {"max_depth": ParamRange(type="int", low=3, high=9),
             "eta": ParamRange(type="float", low=0.01, high=1.0, log=True), "lambda": 2.0}
    assert fixed_params(space) == {"max_depth": 6, "eta": pytest.approx(0.1), "lambda": 2.0}


def test_after_a_concept_shift_the_triggers_retrain_and_beat_never_at_a_fraction_of_every(
        tmp_path):
    # periods 1-3 stable, then the boundary moves (and keeps moving) from period 4 on
    write_partitions(tmp_path / "data", range(1, 9), rows=1500,
                     shift={p: 0.5 * (p - 3) for p in range(4, 9)})
    result = backtest(_config(tmp_path), initial=2)
    assert [p.partition for p in result.periods] == ["3", "4", "5", "6", "7", "8"]
    assert set(result.cycles) == set(POLICIES)
    assert result.cycles["never"] == 0 and result.cycles["every"] == 5  # none after the last
    assert 1 <= result.cycles["triggers"] < result.cycles["every"]
    # the stable period fires nothing; the shifted ones make a trigger that watches the
    # labels (performance, opportunity) or the inputs (drift) fire, the first shift at once
    assert not result.periods[0].retrained["triggers"]
    assert result.periods[1].retrained["triggers"]
    fired = [p for p in result.periods if p.retrained["triggers"]]
    assert all(any(f"{kind} fired" in p.trigger_reason
                   for kind in ("performance", "opportunity", "drift")) for p in fired)
    assert result.mean("triggers") > result.mean("never")
    assert result.mean("every") > result.mean("never")
    table = result.table()
    assert "cycles" in table and "triggers retrained:" in table


def test_a_schedule_retrains_every_n_periods(tmp_path):
    write_partitions(tmp_path / "data", range(1, 9), rows=400)
    config = _config(tmp_path, schedule={"interval_s": 2 * 86_400},
                     performance={"enabled": False}, drift={"enabled": False})
    result = backtest(config, initial=2, period_s=86_400)
    # armed on the first check, then due every second period; never after the last
    assert [p.retrained["triggers"] for p in result.periods] == [
        False, False, True, False, True, False]


def test_too_few_partitions_is_a_clear_error(tmp_path):
    write_partitions(tmp_path / "data", [1, 2], rows=300)
    with pytest.raises(DataError, match="needs at least 3"):
        backtest(_config(tmp_path), initial=2)
