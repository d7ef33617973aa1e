"""Five-field cron expressions, in UTC: ``minute hour day-of-month month day-of-week``.

`CronSchedule.parse("0 3 * * 1")` validates an expression; `next_after(t)` and
`last_at_or_before(t)` find the slots around a time. Pure standard library, no I/O.

Supported, as in classic (Vixie) cron:

- ``*``, single values, lists ``0,30``, ranges ``1-5``, steps ``*/15``, ``10-50/20`` and
  ``5/15`` (from 5 to the field's maximum, every 15);
- month names ``jan``..``dec`` and day names ``sun``..``sat`` (any case) wherever a number may
  stand; day of week 0 and 7 both mean Sunday;
- the shorthands ``@yearly`` (``@annually``), ``@monthly``, ``@weekly``, ``@daily``
  (``@midnight``) and ``@hourly``;
- the day rule: when both day-of-month and day-of-week are restricted (neither field starts
  with ``*``), a day matches when EITHER matches; otherwise both must match. So
  ``0 0 1 * mon`` runs on the 1st and on every Monday, while ``0 0 */2 * mon`` runs on
  Mondays with an odd day of the month.

Times are minutes: seconds are ignored. Searches skip whole months, days and hours that cannot
match, so even a yearly slot is found in a few dozen steps.
"""

from __future__ import annotations

import calendar
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import lru_cache

from retrain.errors import InvalidValueError

__all__ = ["CronSchedule", "parse_cached"]


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: tuple[str, ...] = ()  # names[i] stands for low + i


_FIELDS: tuple[_Field, ...] = (
    _Field("minute", 0, 59),
    _Field("hour", 0, 23),
    _Field("day-of-month", 1, 31),
    _Field("month", 1, 12, ("jan", "feb", "mar", "apr", "may", "jun",
                            "jul", "aug", "sep", "oct", "nov", "dec")),
    # 7 is Sunday as well; it is folded onto 0 after parsing
    _Field("day-of-week", 0, 7, ("sun", "mon", "tue", "wed", "thu", "fri", "sat", "sun")),
)

_SHORTHANDS: dict[str, str] = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

#: the Gregorian calendar repeats every 400 years: a slot not found within that never comes
_SEARCH_YEARS = 401
_MAX_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)  # per month, in a leap year


def _value(text: str, field: _Field, expression: str) -> int:
    lowered = text.lower()
    if lowered in field.names:
        return field.low + field.names.index(lowered)
    if not (text.isascii() and text.isdigit()):
        hint = f" or a name ({', '.join(field.names[:7])}, ...)" if field.names else ""
        raise InvalidValueError(
            f"cron {expression!r}: {field.name} field: {text!r} is not a number{hint}"
        )
    number = int(text)
    if not field.low <= number <= field.high:
        raise InvalidValueError(
            f"cron {expression!r}: {field.name} field: {number} is out of range "
            f"{field.low}-{field.high}"
        )
    return number


def _parse_field(text: str, field: _Field, expression: str) -> frozenset[int]:
    values: set[int] = set()
    for item in text.split(","):
        if not item:
            raise InvalidValueError(
                f"cron {expression!r}: {field.name} field {text!r} has an empty list item"
            )
        base, slash, step_text = item.partition("/")
        step = 1
        if slash:
            if not (step_text.isascii() and step_text.isdigit()) or int(step_text) == 0:
                raise InvalidValueError(
                    f"cron {expression!r}: {field.name} field: step {step_text!r} must be a "
                    f"whole number of at least 1"
                )
            step = int(step_text)
        if base == "*":
            low, high = field.low, field.high
        elif "-" in base:
            first, _, last = base.partition("-")
            low, high = _value(first, field, expression), _value(last, field, expression)
            if low > high:
                raise InvalidValueError(
                    f"cron {expression!r}: {field.name} field: range {base!r} runs backwards; "
                    f"write it low-high"
                )
        else:
            low = _value(base, field, expression)
            # classic cron: "5/15" means 5-max/15; a plain "5" is just 5
            high = field.high if slash else low
        values.update(range(low, high + 1, step))
    return frozenset(values)


def _utc_minute(t: datetime) -> datetime:
    """``t`` in UTC, seconds dropped, as a naive datetime (the search works on plain fields)."""
    if t.tzinfo is None or t.utcoffset() is None:
        raise InvalidValueError(
            f"cron times are in UTC: pass a timezone-aware datetime (e.g. "
            f"datetime.now(timezone.utc)), but got the naive {t.isoformat()}"
        )
    return t.astimezone(timezone.utc).replace(tzinfo=None, second=0, microsecond=0)


def _after(values: tuple[int, ...], current: int) -> int | None:
    i = bisect_right(values, current)
    return values[i] if i < len(values) else None


def _before(values: tuple[int, ...], current: int) -> int | None:
    i = bisect_left(values, current)
    return values[i - 1] if i > 0 else None


@dataclass(frozen=True)
class CronSchedule:
    """A parsed cron expression. Build it with `CronSchedule.parse`."""

    expression: str
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: tuple[int, ...]
    months: tuple[int, ...]
    #: 0 = Sunday .. 6 = Saturday
    weekdays: tuple[int, ...]
    #: the field started with ``*``: it does not restrict on its own (see the module docstring)
    days_star: bool
    weekdays_star: bool

    @classmethod
    def parse(cls, text: str) -> CronSchedule:
        """Parse five cron fields (or a shorthand); `ValueError` names the bad field."""
        if not isinstance(text, str):
            raise InvalidValueError(f"a cron expression must be a string, but got {text!r}")
        expression = text.strip()
        fields = _SHORTHANDS.get(expression.lower(), expression).split()
        if len(fields) != 5:
            raise InvalidValueError(
                f"cron {expression!r}: expected 5 fields 'minute hour day-of-month month "
                f"day-of-week' (e.g. '0 3 * * 1'), but got {len(fields)}"
            )
        minutes, hours, days, months, weekdays = (
            _parse_field(part, spec, expression) for part, spec in zip(fields, _FIELDS, strict=True)
        )
        weekdays = frozenset(d % 7 for d in weekdays)
        schedule = cls(
            expression=expression,
            minutes=tuple(sorted(minutes)),
            hours=tuple(sorted(hours)),
            days=tuple(sorted(days)),
            months=tuple(sorted(months)),
            weekdays=tuple(sorted(weekdays)),
            days_star=fields[2].startswith("*"),
            weekdays_star=fields[4].startswith("*"),
        )
        # Only the day-of-month can make a schedule impossible ("30 2": February 30th), and
        # only when it alone picks the days; catch that here rather than search forever.
        if schedule.weekdays_star and not any(
            schedule.days[0] <= _MAX_DAYS[m - 1] for m in schedule.months
        ):
            raise InvalidValueError(
                f"cron {expression!r}: day-of-month field: no month in "
                f"{fields[3]!r} has day {schedule.days[0]}, so the schedule never runs"
            )
        return schedule

    def _day_matches(self, year: int, month: int, day: int) -> bool:
        in_days = day in self.days
        # datetime.weekday(): Monday = 0; cron: Sunday = 0
        in_weekdays = (calendar.weekday(year, month, day) + 1) % 7 in self.weekdays
        if self.days_star or self.weekdays_star:
            return in_days and in_weekdays
        return in_days or in_weekdays

    def matches(self, t: datetime) -> bool:
        """Whether the minute of ``t`` is a slot of this schedule."""
        m = _utc_minute(t)
        return (m.minute in self.minutes and m.hour in self.hours and m.month in self.months
                and self._day_matches(m.year, m.month, m.day))

    def next_after(self, t: datetime) -> datetime:
        """The first slot strictly after ``t`` (UTC, aware)."""
        start = _utc_minute(t) + timedelta(minutes=1)
        y, mo, d, h, mi = start.year, start.month, start.day, start.hour, start.minute
        last_year = y + _SEARCH_YEARS
        while y <= last_year:
            if mo not in self.months:
                nxt = _after(self.months, mo)
                y, mo = (y, nxt) if nxt is not None else (y + 1, self.months[0])
                d, h, mi = 1, 0, 0
                continue
            if d > calendar.monthrange(y, mo)[1]:
                y, mo = (y, mo + 1) if mo < 12 else (y + 1, 1)
                d, h, mi = 1, 0, 0
                continue
            if not self._day_matches(y, mo, d):
                d, h, mi = d + 1, 0, 0
                continue
            if h not in self.hours:
                nxt = _after(self.hours, h)
                d, h, mi = (d, nxt, 0) if nxt is not None else (d + 1, 0, 0)
                continue
            if mi not in self.minutes:
                nxt = _after(self.minutes, mi)
                if nxt is not None:
                    mi = nxt
                else:
                    d, h, mi = (d, h + 1, 0) if h < 23 else (d + 1, 0, 0)
                continue
            return datetime(y, mo, d, h, mi, tzinfo=timezone.utc)
        raise InvalidValueError(f"cron {self.expression!r} has no slot after {t.isoformat()}")

    def last_at_or_before(self, t: datetime) -> datetime:
        """The latest slot at or before ``t`` (UTC, aware); ``t``'s own minute counts."""
        start = _utc_minute(t)
        y, mo, d, h, mi = start.year, start.month, start.day, start.hour, start.minute
        first_year = y - _SEARCH_YEARS
        while y >= first_year:
            if mo not in self.months:
                prev = _before(self.months, mo)
                y, mo = (y, prev) if prev is not None else (y - 1, self.months[-1])
                d, h, mi = calendar.monthrange(y, mo)[1], 23, 59
                continue
            if d < 1:
                y, mo = (y, mo - 1) if mo > 1 else (y - 1, 12)
                d, h, mi = calendar.monthrange(y, mo)[1], 23, 59
                continue
            if not self._day_matches(y, mo, d):
                d, h, mi = d - 1, 23, 59
                continue
            if h not in self.hours:
                prev = _before(self.hours, h)
                d, h, mi = (d, prev, 59) if prev is not None else (d - 1, 23, 59)
                continue
            if mi not in self.minutes:
                prev = _before(self.minutes, mi)
                if prev is not None:
                    mi = prev
                else:
                    d, h, mi = (d, h - 1, 59) if h > 0 else (d - 1, 23, 59)
                continue
            return datetime(y, mo, d, h, mi, tzinfo=timezone.utc)
        raise InvalidValueError(f"cron {self.expression!r} has no slot before {t.isoformat()}")


@lru_cache(maxsize=64)
def parse_cached(text: str) -> CronSchedule:
    """`CronSchedule.parse`, remembered: callers that re-read the same expression every check."""
    return CronSchedule.parse(text)
