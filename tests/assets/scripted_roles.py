"""Dagster resources for asset tests: every LLM role on one scripted endpoint, the warehouse and the local web."""

from typing import Any

from webdancer_dagster.resources.llm import LLMEndpointResource, LocalModelServer
from webdancer_dagster.resources.warehouse import Warehouse
from webdancer_dagster.resources.web import WebEnvironment


def scripted_resources(home, url: str, roles: tuple[str, ...], /, **per_role: Any) -> dict[str, Any]:
    """`roles` on the scripted server at `url` (one try each); `per_role` values may be callables of the role."""
    warehouse = Warehouse(home=str(home))
    server = LocalModelServer(mode="external", base_url=url, served_model_name="scripted")
    settings = {"base_url": url, "model": "scripted", "max_attempts": 1, **per_role}
    endpoints = {
        role: LLMEndpointResource(
            role=role, server=server, warehouse=warehouse,
            **{key: value(role) if callable(value) else value for key, value in settings.items()},
        )
        for role in roles
    }  # fmt: skip
    return {"warehouse": warehouse, "web": WebEnvironment(warehouse=warehouse), **endpoints}
