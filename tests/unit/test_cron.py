from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retrain.config import ScheduleTrigger, config_from_dict
from retrain.cron import CronSchedule
from retrain.errors import ConfigError

UTC = timezone.utc
MINUTE = timedelta(minutes=1)


def at(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


def test_fields_lists_ranges_steps_and_names():
    c = CronSchedule.parse("0,30 */6 1-5 jan,Jul-AUG mon-fri/2")
    assert c.minutes == (0, 30)
    assert c.hours == (0, 6, 12, 18)
    assert c.days == (1, 2, 3, 4, 5)
    assert c.months == (1, 7, 8)
    assert c.weekdays == (1, 3, 5)  # mon, wed, fri
    assert not c.days_star and not c.weekdays_star


def test_step_from_a_value_runs_to_the_end_and_seven_is_sunday():
    c = CronSchedule.parse("5/20 10-20/5 * * 7")
    assert c.minutes == (5, 25, 45)
    assert c.hours == (10, 15, 20)
    assert c.weekdays == (0,) and c.weekdays_star is False and c.days_star is True


def test_shorthands():
    assert CronSchedule.parse("@daily").next_after(at(2026, 3, 7, 12)) == at(2026, 3, 8)
    assert CronSchedule.parse("@weekly").next_after(at(2026, 3, 7, 12)) == at(2026, 3, 8)  # Sun
    assert CronSchedule.parse("@YEARLY").last_at_or_before(at(2026, 3, 7)) == at(2026, 1, 1)


@pytest.mark.parametrize(("text", "field", "words"), [
    ("61 * * * *", "minute", "out of range 0-59"),
    ("* 24 * * *", "hour", "out of range 0-23"),
    ("* * 0 * *", "day-of-month", "out of range 1-31"),
    ("* * * 13 *", "month", "out of range 1-12"),
    ("* * * * 8", "day-of-week", "out of range 0-7"),
    ("* * * foo *", "month", "not a number or a name"),
    ("*/0 * * * *", "minute", "step '0'"),
    ("* 5-1 * * *", "hour", "runs backwards"),
    ("1,,2 * * * *", "minute", "empty list item"),
    ("* * 30 feb *", "day-of-month", "never runs"),
    ("* * 31 4,6,9,11 *", "day-of-month", "never runs"),
])
def test_a_bad_field_is_named(text, field, words):
    with pytest.raises(ValueError, match=f"{field} field") as info:
        CronSchedule.parse(text)
    assert words in str(info.value) and repr(text) in str(info.value)


@pytest.mark.parametrize("text", ["", "* * * *", "* * * * * *", "@often"])
def test_wrong_number_of_fields(text):
    with pytest.raises(ValueError, match="expected 5 fields"):
        CronSchedule.parse(text)


def test_february_30th_with_a_weekday_is_possible_through_the_weekday():
    # both restricted: either matches, so Mondays in February still run
    c = CronSchedule.parse("0 0 30 2 mon")
    assert c.next_after(at(2026, 1, 1)) == at(2026, 2, 2)


def test_next_and_last_around_a_weekly_slot():
    c = CronSchedule.parse("0 3 * * 1")  # Mondays 03:00
    assert c.next_after(at(2026, 3, 7, 12, 34, 56)) == at(2026, 3, 9, 3)
    assert c.last_at_or_before(at(2026, 3, 7, 12, 34, 56)) == at(2026, 3, 2, 3)
    slot = at(2026, 3, 9, 3)
    assert c.next_after(slot) == at(2026, 3, 16, 3)  # strictly after
    assert c.last_at_or_before(slot) == slot  # at counts
    assert c.last_at_or_before(slot + timedelta(seconds=59)) == slot
    assert c.last_at_or_before(slot - timedelta(microseconds=1)) == at(2026, 3, 2, 3)


def test_rollover_of_hour_day_month_and_year():
    every = CronSchedule.parse("*/15 * * * *")
    assert every.next_after(at(2025, 12, 31, 23, 50)) == at(2026, 1, 1)
    assert every.last_at_or_before(at(2026, 1, 1, 0, 14)) == at(2026, 1, 1)
    assert every.last_at_or_before(at(2025, 12, 31, 23, 59, 59)) == at(2025, 12, 31, 23, 45)
    half_past = CronSchedule.parse("30 * * * *")
    assert half_past.last_at_or_before(at(2026, 3, 1, 0, 10)) == at(2026, 2, 28, 23, 30)
    assert half_past.last_at_or_before(at(2026, 3, 2, 0, 10)) == at(2026, 3, 1, 23, 30)
    assert half_past.next_after(at(2026, 2, 28, 23, 40)) == at(2026, 3, 1, 0, 30)
    assert half_past.next_after(at(2026, 3, 1, 23, 40)) == at(2026, 3, 2, 0, 30)
    month_end = CronSchedule.parse("0 0 31 * *")
    assert month_end.next_after(at(2026, 4, 1)) == at(2026, 5, 31)  # April has 30 days
    assert month_end.last_at_or_before(at(2026, 3, 30)) == at(2026, 1, 31)


def test_leap_day_is_found_years_away():
    leap = CronSchedule.parse("0 12 29 feb *")
    assert leap.next_after(at(2026, 3, 1)) == at(2028, 2, 29, 12)
    assert leap.last_at_or_before(at(2026, 3, 1)) == at(2024, 2, 29, 12)
    assert leap.next_after(at(2097, 1, 1)) == at(2104, 2, 29, 12)  # 2100 is no leap year


def test_day_of_month_or_day_of_week_when_both_restricted():
    either = CronSchedule.parse("0 0 1 * mon")  # the 1st, and every Monday
    # March 2026: the 1st is a Sunday, the 2nd a Monday
    assert either.next_after(at(2026, 2, 28)) == at(2026, 3, 1)
    assert either.next_after(at(2026, 3, 1)) == at(2026, 3, 2)
    assert either.matches(at(2026, 3, 9)) and either.matches(at(2026, 4, 1))  # Mon / Wed 1st
    both = CronSchedule.parse("0 0 */2 * mon")  # a star field: both must match
    assert both.next_after(at(2026, 3, 1)) == at(2026, 3, 9)  # the 2nd is even, the 9th odd
    assert not both.matches(at(2026, 3, 2))


def test_times_are_utc_and_naive_times_are_refused():
    c = CronSchedule.parse("0 3 * * *")
    plus_two = timezone(timedelta(hours=2))
    # 04:30 at +02:00 is 02:30 UTC: the 03:00 UTC slot is still ahead
    assert c.next_after(datetime(2026, 3, 7, 4, 30, tzinfo=plus_two)) == at(2026, 3, 7, 3)
    with pytest.raises(ValueError, match="timezone-aware"):
        c.next_after(datetime(2026, 3, 7))


# --- properties: both searches agree with `matches` and with each other ----------------------

def _field(low: int, high: int):
    value = st.integers(low, high)
    item = st.one_of(
        st.just("*"),
        value.map(str),
        st.tuples(value, value).map(lambda p: f"{min(p)}-{max(p)}"),
        st.tuples(st.sampled_from(["*", str(low)]), st.integers(1, 20)).map(
            lambda p: f"{p[0]}/{p[1]}"),
    )
    return st.lists(item, min_size=1, max_size=3).map(",".join)


def _possible(text: str) -> CronSchedule | None:
    try:
        return CronSchedule.parse(text)
    except ValueError:
        return None  # e.g. "* * 31 2 *": never runs


EXPRESSIONS = st.tuples(
    _field(0, 59), _field(0, 23), _field(1, 31), _field(1, 12), _field(0, 7)
).map(" ".join).map(_possible).filter(lambda c: c is not None)
TIMES = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2090, 12, 31),
                     timezones=st.just(UTC))


@settings(max_examples=60, deadline=None)
@given(EXPRESSIONS, TIMES)
def test_next_and_last_are_neighbouring_slots(cron, t):
    after, before = cron.next_after(t), cron.last_at_or_before(t)
    assert before <= t < after
    assert cron.matches(after) and cron.matches(before)
    # nothing in between: the two searches meet each other exactly
    assert cron.next_after(before) == after
    assert cron.last_at_or_before(after - MINUTE) == before
    # and a brute-force walk over the first two hours agrees
    minute = t.replace(second=0, microsecond=0) + MINUTE
    while minute < min(after, t + timedelta(hours=2)):
        assert not cron.matches(minute), minute
        minute += MINUTE


# --- the config validates the expression -----------------------------------------------------

BASE = {"project": {"name": "p"}, "data": {"path": "d", "partition_column": "m", "target": "y"},
        "task": {"type": "classification"}}


def test_config_reports_a_bad_cron_with_its_field():
    with pytest.raises(ConfigError) as info:
        config_from_dict({**BASE, "triggers": {"schedule": {"cron": "0 25 * * *"}}})
    (problem,) = info.value.problems
    assert problem.startswith("triggers.schedule: cron '0 25 * * *': hour field")


def test_config_refuses_interval_and_cron_together():
    with pytest.raises(ConfigError, match="either interval_s or cron, not both"):
        config_from_dict({**BASE, "triggers": {"schedule": {"cron": "0 3 * * 1",
                                                             "interval_s": 3600}}})
    assert ScheduleTrigger(cron="*/5 * * * *").cron == "*/5 * * * *"
    assert ScheduleTrigger(interval_s=60).interval_s == 60
