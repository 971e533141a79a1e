"""Dagster resources: thin ConfigurableResource wrappers around the engine's plain clients,
one module per system kind, plus the project settings, warehouse and state store."""

from resources.files import FileDropResource, WmsSandboxResource
from resources.project import TrueupSettings, WarehouseIOManager
from resources.rest import CrmSandboxResource, RestSystemResource
from resources.sql import SqlSystemResource
from resources.state import StateStoreResource

__all__ = [
    "CrmSandboxResource", "FileDropResource", "RestSystemResource", "SqlSystemResource",
    "StateStoreResource", "TrueupSettings", "WarehouseIOManager", "WmsSandboxResource",
]
