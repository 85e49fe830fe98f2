"""Time as a dependency: SystemClock in production, a settable clock in tests."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


def to_millis(moment: datetime) -> datetime:
    """Truncate to milliseconds: BSON dates and Parse's ISO strings carry no finer precision."""
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def iso_millis(moment: datetime) -> str:
    """`Date.prototype.toISOString()`: `YYYY-MM-DDTHH:MM:SS.mmmZ`."""
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"
