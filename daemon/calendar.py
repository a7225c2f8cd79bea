"""Business hours of a channel: when its items may run, and when it opens next.

Outside them a channel's items wait as `deferred`: waiting is never failing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True)
class BusinessHours:
    days: frozenset[int]  # 0 is Monday
    opens: time
    closes: time
    timezone: ZoneInfo

    def is_open(self, when: float) -> bool:
        local = datetime.fromtimestamp(when, self.timezone)
        return local.weekday() in self.days and self.opens <= local.time() < self.closes

    def next_open(self, when: float) -> float:
        """The first moment at or after `when` that the channel is open."""
        local = datetime.fromtimestamp(when, self.timezone)
        for offset in range(8):
            day = (local + timedelta(days=offset)).date()
            if day.weekday() not in self.days:
                continue
            opening = datetime.combine(day, self.opens, self.timezone)
            closing = datetime.combine(day, self.closes, self.timezone)
            if local < closing:
                return max(opening, local).timestamp()
        raise ValueError("business hours with no open day")


def parse_days(text: str) -> frozenset[int]:
    """'mon-fri', 'mon,wed,fri' or 'sat-sun' -> weekday numbers; ValueError otherwise."""
    days: set[int] = set()
    for part in text.lower().replace(" ", "").split(","):
        first, _, last = part.partition("-")
        start = DAY_NAMES.index(first[:3])
        end = DAY_NAMES.index(last[:3]) if last else start
        days.update(range(start, end + 1) if start <= end else [*range(start, 7), *range(end + 1)])
    return frozenset(days)


def parse_hours(text: str) -> tuple[time, time]:
    """'09:00-17:00' -> (09:00, 17:00); ValueError if malformed or empty."""
    opens, _, closes = text.replace(" ", "").partition("-")
    start, end = time.fromisoformat(opens), time.fromisoformat(closes)
    if end <= start:
        raise ValueError(text)
    return start, end
