"""One flat route table.

FastAPI (0.16x) keeps an included router as a branch of the app's routes: every request walks
each branch (matching its routes twice, once to choose the branch, once inside it) and
re-derives the branch's routes version, about a third of a light request's server time. The
domain routers here are plain APIRouters, declared as usual; `include_flat` copies each of
their routes onto the app's own router, as `include_router` itself did before 0.16x, so a
request is matched against one list of routes, once; and each route that is not the one
asked for says so by comparing two strings (`Route`), before any regex runs.

A fast path, and the benchmark that keeps it: bench/auth_bench.py (docs/benchmarks.md, "The
cost of authentication"). Walking the branches was about a third of a light request's server
time; with this table and the credential's point read (app/db/pointread.py) an authenticated
request runs at 52-55% of a bare FastAPI endpoint's rate, the goal being 50%.
tests/test_routing.py keeps every route answering where it did.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from fastapi import FastAPI, params
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, APIRouter, APIWebSocketRoute
from starlette.routing import Match
from starlette.types import Scope


class Route(APIRoute):
    """An APIRoute that turns away a request for another path cheaply: a request is matched
    against the routes in order, so most routes see most requests. For a path without
    parameters, the request's path must end with the route's (it may carry the root path in
    front); only then does the route's own matching (its regex) run."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        self._static_path = None if self.param_convertors else self.path

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        static = self._static_path
        if static is not None and not scope.get("path", "").endswith(static):
            return Match.NONE, {}
        return super().matches(scope)


def include_flat(
    app: FastAPI, router: APIRouter, *, dependencies: Sequence[params.Depends] = ()
) -> None:
    """Add every route of `router` to `app` itself, `dependencies` first, as include_router
    would (its prefix, tags, dependencies and responses are already part of each route).

    A dependency that a route already has somewhere in its tree is not added again: FastAPI
    would call it once anyway (its value is cached per request), but it walks every node of
    the tree on every request, so the duplicate costs time and changes nothing."""
    for route in router.routes:
        if isinstance(route, APIRoute):
            present = dependency_calls(route.dependant)
            added = [dep for dep in dependencies if dep.dependency not in present]
            app.router.add_api_route(
                route.path,
                route.endpoint,
                response_model=route.response_model,
                status_code=route.status_code,
                tags=list(route.tags),
                dependencies=[*added, *route.dependencies],
                summary=route.summary,
                description=route.description,
                response_description=route.response_description,
                responses=route.responses,
                deprecated=route.deprecated,
                methods=route.methods,
                operation_id=route.operation_id,
                response_model_include=route.response_model_include,
                response_model_exclude=route.response_model_exclude,
                response_model_by_alias=route.response_model_by_alias,
                response_model_exclude_unset=route.response_model_exclude_unset,
                response_model_exclude_defaults=route.response_model_exclude_defaults,
                response_model_exclude_none=route.response_model_exclude_none,
                include_in_schema=route.include_in_schema,
                response_class=route.response_class,
                name=route.name,
                route_class_override=Route if type(route) is APIRoute else type(route),
                callbacks=route.callbacks,
                openapi_extra=route.openapi_extra,
                generate_unique_id_function=route.generate_unique_id_function,
                strict_content_type=route.strict_content_type,
            )
        elif isinstance(route, APIWebSocketRoute):
            app.router.add_api_websocket_route(
                route.path,
                route.endpoint,
                name=route.name,
                dependencies=[*dependencies, *route.dependencies],
            )
        else:
            raise TypeError(f"cannot flatten {route!r} of {router!r}")


def dependency_calls(dependant: Dependant) -> set[Callable[..., Any]]:
    """Every dependency callable in a dependant's tree."""
    found: set[Callable[..., Any]] = set()
    pending = list(dependant.dependencies)
    while pending:
        node = pending.pop()
        if node.call is not None:
            found.add(node.call)
        pending += node.dependencies
    return found
