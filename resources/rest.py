"""REST systems (a SaaS CRM): the real client, and the sandbox that serves the demo CRM over
real HTTP on loopback for the length of a step."""

from __future__ import annotations

import secrets
from pathlib import Path

import dagster as dg
from pydantic import PrivateAttr

from trueup.config import Config
from trueup.systems.rest import RestSystem


class RestSystemResource(dg.ConfigurableResource):
    """A system behind a REST API. Give `token` as `EnvVar("TRUEUP_CRM_TOKEN")`."""

    system: str
    base_url: str
    token: str | None = None
    # records per listing page: at the large size the CRM's 5M price book entries took 41 s at
    # 1,000 a page (the demo API's largest) against 44-47 s at 500, trueup's CPU 17 s against 23 s
    page_size: int = 1000
    max_attempts: int = 6
    in_flight: int = 4  # requests at once (reads by id, write batches)
    _client: RestSystem | None = PrivateAttr(default=None)

    def _url_and_token(self) -> tuple[str, str | None]:
        return self.base_url, self.token

    def client(self, config: Config) -> RestSystem:
        if self._client is None:
            url, token = self._url_and_token()
            self._client = RestSystem(self.system, url, config.systems.systems[self.system], token=token,
                                      page_size=self.page_size, max_attempts=self.max_attempts,
                                      in_flight=self.in_flight)
        return self._client

    def after_writeback(self) -> None:
        """Nothing to do: the API applied the writes itself."""

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._client is not None:
            self._client.close()


class CrmSandboxResource(RestSystemResource):
    """The demo CRM: starts the sandbox server in a process of its own on a free loopback port
    when the resources start (once per run in process, per step elsewhere), with a fresh random
    token, and stops it afterwards. Optional fault injection for tests."""

    base_url: str = ""
    db_path: str
    write_fault_rate: float = 0.0
    write_fault_kinds: list[str] = ["429", "500", "drop"]
    fault_seed: int | None = None
    _server: object = PrivateAttr(default=None)
    _token: str = PrivateAttr(default="")

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        from sandbox.crm import CrmSandboxProcess, Faults

        if not Path(self.db_path).exists():
            raise FileNotFoundError(f"crm: no sandbox data at {self.db_path}; build the demo first "
                                    f"(`trueup demo build`)")
        self._token = secrets.token_urlsafe(16)
        # in a process of its own, as a real CRM is another machine (and does not take the GIL)
        self._server = CrmSandboxProcess(
            Path(self.db_path), token=self._token,
            faults=Faults(write_fault_rate=self.write_fault_rate, kinds=tuple(self.write_fault_kinds), seed=self.fault_seed)).start()

    def _url_and_token(self) -> tuple[str, str | None]:
        return self._server.url, self._token

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        super().teardown_after_execution(context)
        if self._server is not None:
            self._server.stop()
