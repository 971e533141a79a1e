"""The state store resource: ledger, quarantine, runs and watermarks."""

from __future__ import annotations

import dagster as dg
from pydantic import PrivateAttr

from trueup.state import StateStore


class StateStoreResource(dg.ConfigurableResource):
    """A SQLAlchemy URL for trueup's own state. Pass it as an EnvVar when it holds credentials."""

    url: str
    _store: StateStore | None = PrivateAttr(default=None)

    def store(self) -> StateStore:
        if self._store is None:
            self._store = StateStore(self.url)
        return self._store
