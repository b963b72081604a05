"""OpenAPI document with the seed's schema names (``dto.BulkSendRequest``, ...)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

SEED_NAMES = {
    "BulkSendRequest": "dto.BulkSendRequest",
    "CommunicationLogListResponse": "dto.CommunicationLogListResponse",
    "CommunicationLogResponse": "dto.CommunicationLogResponse",
    "PageInfo": "dto.PageInfo",
    "SimpleResponse": "dto.SimpleResponse",
}


def _rename_refs(node: Any) -> Any:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                name = value.rsplit("/", 1)[-1]
                value = f"#/components/schemas/{SEED_NAMES.get(name, name)}"
            out[key] = _rename_refs(value)
        return out
    if isinstance(node, list):
        return [_rename_refs(v) for v in node]
    return node


def install(app: FastAPI, extra_models: list[type[Any]]) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in extra_models:
            model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            for name, sub in model_schema.pop("$defs", {}).items():
                components.setdefault(name, sub)
            components.setdefault(model.__name__, model_schema)
        schema["components"]["schemas"] = {SEED_NAMES.get(k, k): v for k, v in components.items()}
        schema = dict(_rename_refs(schema))
        app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
