"""Where the warehouse lives; every asset gets its tables and artefact folders from here."""

from __future__ import annotations

import dagster as dg
from pydantic import Field

from webdancer_dagster.warehouse import WarehouseStore


class Warehouse(dg.ConfigurableResource):
    """The DuckDB warehouse and artefact folders under the WebDancer home."""

    home: str | None = Field(
        default=None,
        description="Folder for the warehouse, sites, indexes and checkpoints; "
        "empty means $WEBDANCER_HOME, else ./.webdancer.",
    )

    def store(self) -> WarehouseStore:
        return WarehouseStore(self.home)
