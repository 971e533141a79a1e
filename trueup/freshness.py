"""How old a source's data is, and whether that is within its SLA (config/trueup.yaml `freshness`).

A file-drop system's data is as old as its newest complete drop (the export's stamp); a live system
(SQL, REST) is read as it is, so its data is as old as the moment trueup read it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone


def data_as_of(client, entity: str, extracted_at: datetime) -> datetime:
    """When the data trueup read (or would read) from `client` was produced."""
    fn = getattr(client, "data_as_of", None)
    return fn(entity) if fn else extracted_at


@dataclass(frozen=True)
class Freshness:
    system: str
    entity: str
    data_as_of: datetime
    age_hours: float
    max_age_hours: float

    @property
    def fresh(self) -> bool:
        return self.age_hours <= self.max_age_hours

    def describe(self) -> str:
        verdict = "within" if self.fresh else "OLDER than"
        return (f"{self.system}.{self.entity}: newest data is from {self.data_as_of:%Y-%m-%d %H:%M} UTC, "
                f"{self.age_hours:.1f} h old, {verdict} its SLA of {self.max_age_hours:g} h")


def judge(system: str, entity: str, as_of: datetime, max_age_hours: float,
          now: datetime | None = None) -> Freshness:
    now = now or datetime.now(timezone.utc)
    if as_of.tzinfo is None:  # the state store hands back naive UTC
        as_of = as_of.replace(tzinfo=timezone.utc)
    return Freshness(system, entity, as_of, (now - as_of).total_seconds() / 3600.0, max_age_hours)
