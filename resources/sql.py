"""SQL systems (an ERP database): any SQLAlchemy URL."""

from __future__ import annotations

import dagster as dg
from pydantic import PrivateAttr

from trueup.config import Config
from trueup.systems.sql import SqlSystem


class SqlSystemResource(dg.ConfigurableResource):
    """A system reached through SQL. `url` is secret when it carries a password: give it as
    `EnvVar("TRUEUP_ERP_URL")`; it is never logged or put in metadata."""

    system: str
    url: str
    in_flight: int = 2  # write batches at once
    _client: SqlSystem | None = PrivateAttr(default=None)

    def client(self, config: Config) -> SqlSystem:
        if self._client is None:
            self._client = SqlSystem(self.system, self.url, config.systems.systems[self.system],
                                     in_flight=self.in_flight)
        return self._client

    def after_writeback(self) -> None:
        """Nothing to do: the database applied the writes itself."""

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._client is not None:
            self._client.engine.dispose()
