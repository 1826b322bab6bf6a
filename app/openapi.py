"""Corrections to the generated OpenAPI document that FastAPI cannot express by itself."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts
from pydantic import BaseModel

from app.deps import SECURITY_SCHEMES, bearer_user, current_user
from app.web.routing import dependency_calls


def _app_models() -> Iterator[type[BaseModel]]:
    pending = list(BaseModel.__subclasses__())
    while pending:
        cls = pending.pop()
        pending += cls.__subclasses__()
        if cls.__module__.startswith("app."):
            yield cls


def _restore_null_examples(document: dict[str, Any]) -> None:
    """FastAPI drops every None from the document, examples included (fastapi#5559), so an
    example `"active_project": null` is published without the key: not even valid against its
    own schema. Put each model's example back as written."""
    schemas = document.get("components", {}).get("schemas", {})
    for model in _app_models():
        component = schemas.get(model.__name__)
        extra = model.model_config.get("json_schema_extra")
        if component is not None and isinstance(extra, dict) and "example" in extra:
            component["example"] = copy.deepcopy(extra["example"])


def correct_openapi(app: FastAPI) -> None:
    """Examples keep their nulls, and the security schemes are declared: both on every route
    that depends on `current_user`, which reads the headers itself (app/deps.py), and only the
    Bearer scheme on routes that take a Bearer token only (an API key cannot mint API keys)."""
    security: list[tuple[str, str, list[dict[str, list[str]]]]] = []
    for context in iter_route_contexts(app.routes):
        route, path = context.original_route, context.path_format
        if not isinstance(route, APIRoute) or path is None:
            continue
        calls = dependency_calls(route.dependant)
        schemes: list[dict[str, list[str]]]
        if bearer_user in calls:
            schemes = [{"bearerAuth": []}]
        elif current_user in calls:
            schemes = [{"bearerAuth": []}, {"apiKeyAuth": []}]
        else:
            continue
        security += [(path, m.lower(), schemes) for m in route.methods or ()]
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = generate()
        _restore_null_examples(document)
        document.setdefault("components", {})["securitySchemes"] = copy.deepcopy(SECURITY_SCHEMES)
        for path, method, schemes in security:
            operation = document["paths"].get(path, {}).get(method)
            if operation is not None:
                operation["security"] = copy.deepcopy(schemes)
        return document

    app.openapi = openapi  # type: ignore[method-assign]
