"""Business hours of a channel: when its items may run, and when it opens next.

A channel is open inside its windows on its days, and closed on its public holidays.
A window belongs to the day it opens on: `22:00-06:00` on `mon-fri` opens Monday to
Friday evenings and closes the next mornings (Saturday's included). A holiday closes the
channel from its midnight to the next, in the channel's time zone, whatever window covers it.
Times are the channel zone's wall-clock times, so a window keeps them across a DST change; a
time the clocks skip counts as if they had not (01:30 on London's spring night is 02:30 BST),
and a time they repeat is its first occurrence.

Outside them a channel's items wait as `deferred`: waiting is never failing.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
FULL_DAY_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
DAY_MINUTES = 24 * 60
# Holidays can close a channel for days on end; past a year and a bit, nothing will open.
SEARCH_DAYS = 400
_CLOCK = re.compile(r"^(\d{1,2}):(\d{2})$")


@dataclass(frozen=True)
class Window:
    """Opening and closing as minutes after midnight; closing at or before opening is overnight."""

    opens: int  # 0 .. 1439
    closes: int  # 1 .. 1440 (24:00); at or before `opens`: on the next day

    @property
    def overnight(self) -> bool:
        return self.closes <= self.opens


@dataclass(frozen=True)
class BusinessHours:
    days: frozenset[int]  # the days a window may open on; 0 is Monday
    windows: tuple[Window, ...]
    timezone: ZoneInfo
    # Whether a local date is a public holiday (all day closed); None: no holidays.
    is_holiday: Callable[[date], bool] | None = field(default=None, compare=False)

    def is_open(self, when: float) -> bool:
        today = datetime.fromtimestamp(when, self.timezone).date()
        yesterday = today - timedelta(days=1)  # its overnight windows may still be open
        return any(start <= when < end for start, end in self._open_spans(yesterday, today))

    def next_open(self, when: float) -> float:
        """The first moment at or after `when` that the channel is open."""
        day = datetime.fromtimestamp(when, self.timezone).date() - timedelta(days=1)
        best: float | None = None
        for _ in range(SEARCH_DAYS):
            for start, end in self._open_spans(day, day):
                if end > when:
                    candidate = max(start, when)
                    best = candidate if best is None else min(best, candidate)
            day += timedelta(days=1)
            # Spans of later days start at their own midnight or after: none can be earlier.
            if best is not None and best <= self._midnight(day):
                return best
        raise ValueError("these business hours never open")

    def _open_spans(self, first: date, last: date) -> Iterator[tuple[float, float]]:
        """The open stretches (UNIX times) of the windows opening from `first` to `last`."""
        day = first
        while day <= last:
            if day.weekday() in self.days:
                for window in self.windows:
                    yield from self._without_holidays(*self._span(day, window))
            day += timedelta(days=1)

    def _span(self, day: date, window: Window) -> tuple[float, float]:
        closing_day = day + timedelta(days=1) if window.overnight else day
        return self._at(day, window.opens), self._at(closing_day, window.closes)

    def _without_holidays(self, start: float, end: float) -> Iterator[tuple[float, float]]:
        """The span cut at each local midnight it crosses, less the holidays' parts."""
        if self.is_holiday is None:
            yield start, end
            return
        day = datetime.fromtimestamp(start, self.timezone).date()
        while start < end:
            following = day + timedelta(days=1)
            piece_end = min(end, self._midnight(following))
            if not self.is_holiday(day):
                yield start, piece_end
            start, day = piece_end, following

    def _at(self, day: date, minutes: int) -> float:
        """UNIX time of `minutes` after local midnight of `day` (1440 is the next midnight)."""
        if minutes == DAY_MINUTES:
            return self._midnight(day + timedelta(days=1))
        clock = time(minutes // 60, minutes % 60)
        return datetime.combine(day, clock, self.timezone).timestamp()

    def _midnight(self, day: date) -> float:
        return datetime.combine(day, time(0), self.timezone).timestamp()


def parse_days(text: str) -> frozenset[int]:
    """'mon-fri', 'mon,wed,fri', 'sat-sun' or 'fri-mon' -> weekday numbers.

    A ValueError says which part is no day.
    """
    days: set[int] = set()
    for part in text.lower().replace(" ", "").split(","):
        first, dash, last = part.partition("-")
        start = _day_number(first)
        end = _day_number(last) if dash else start
        days.update(range(start, end + 1) if start <= end else [*range(start, 7), *range(end + 1)])
    return frozenset(days)


def _day_number(name: str) -> int:
    for names in (DAY_NAMES, FULL_DAY_NAMES):
        if name in names:
            return names.index(name)
    raise ValueError(f"'{name}' is no day of the week")


def parse_hours(text: str) -> tuple[Window, ...]:
    """'09:00-17:00', '22:00-06:00', '09:00-12:00,13:00-17:00' or '00:00-24:00' -> windows.

    A ValueError says which part is wrong.
    """
    return tuple(_window(part.strip()) for part in text.split(","))


def _window(text: str) -> Window:
    opens, dash, closes = text.replace(" ", "").partition("-")
    if not dash:
        raise ValueError(f"'{text}' is no window: write opening-closing")
    window = Window(_minutes(opens, closing=False), _minutes(closes, closing=True))
    if window.opens == window.closes:
        raise ValueError(f"'{text}' opens and closes at the same time (all day is 00:00-24:00)")
    return window


def _minutes(text: str, closing: bool) -> int:
    match = _CLOCK.match(text)
    hours, minutes = (int(match.group(1)), int(match.group(2))) if match else (-1, -1)
    if closing and (hours, minutes) == (24, 0):
        return DAY_MINUTES
    if not (0 <= hours <= 23 and 0 <= minutes <= 59):
        raise ValueError(f"'{text}' is no time of day (HH:MM, 00:00 to 23:59)")
    return hours * 60 + minutes
