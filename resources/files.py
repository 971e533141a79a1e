"""File-drop systems (a 3PL): the real folder client, and the demo WMS that imports trueup's
correction files and exports a fresh drop, as a 3PL's nightly job would."""

from __future__ import annotations

import dagster as dg

from trueup.config import Config
from trueup.systems.files import FileSystem


class FileDropResource(dg.ConfigurableResource):
    """A system that exchanges files in a folder (exports/ in, inbound/ out)."""

    system: str
    root: str

    def client(self, config: Config) -> FileSystem:
        return FileSystem(self.system, self.root, config.systems.systems[self.system])

    def after_writeback(self) -> None:
        """Nothing to do: the 3PL picks the inbound files up on its own schedule."""


class WmsSandboxResource(FileDropResource):
    """The demo WMS: processes trueup's inbound files straight away and exports a new drop."""

    def after_writeback(self) -> None:
        from sandbox.wms import WmsSandbox

        WmsSandbox(self.root).process_inbound()
