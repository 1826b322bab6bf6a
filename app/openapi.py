"""Corrections to the generated OpenAPI document that FastAPI cannot express by itself."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts
from pydantic import BaseModel

from app.deps import bearer_user


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
    """Examples keep their nulls; routes that take a Bearer token only (an API key cannot mint
    API keys) do not list the API-key scheme, which the protected router's `current_user`
    adds to every route."""
    bearer_only: list[tuple[str, str]] = []
    for context in iter_route_contexts(app.routes):
        route, path = context.original_route, context.path_format
        if (
            isinstance(route, APIRoute)
            and path is not None
            and any(dep.call is bearer_user for dep in route.dependant.dependencies)
        ):
            bearer_only += [(path, m.lower()) for m in route.methods or ()]
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        document = generate()
        _restore_null_examples(document)
        for path, method in bearer_only:
            operation = document["paths"].get(path, {}).get(method)
            if operation is not None:
                operation["security"] = [{"bearerAuth": []}]
        return document

    app.openapi = openapi  # type: ignore[method-assign]
