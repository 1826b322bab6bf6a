"""One error hierarchy and one handler: every error body has the shape of docs/api/errors.md."""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path

log = logging.getLogger("talkstack.errors")


class AppError(Exception):
    status_code = 400
    code = "BAD_REQUEST"
    message = "Bad request."

    def __init__(
        self,
        message: str | None = None,
        *,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        persist: bool = False,
        **extra: Any,
    ) -> None:
        self.persist = persist
        self.message = message or self.message
        self.code = code or self.code
        self.headers = headers
        self.extra = extra
        super().__init__(self.message)

    def body(self) -> dict[str, Any]:
        return {"message": self.message, "status": "error", "code": self.code, **self.extra}


class BadRequest(AppError):
    pass


class Unauthorized(AppError):
    status_code = 401
    code = "UNAUTHORIZED"
    message = "Authentication required."


class Forbidden(AppError):
    status_code = 403
    code = "FORBIDDEN"
    message = "Not allowed."


class NotFound(AppError):
    status_code = 404
    code = "NOT_FOUND"
    message = "Not found."


class Conflict(AppError):
    status_code = 409
    code = "CONFLICT"
    message = "Conflict."


class TooManyRequests(AppError):
    status_code = 429
    code = "RATE_LIMITED"
    message = "Too many requests; try again later."


class UpstreamError(AppError):
    status_code = 502
    code = "UPSTREAM_ERROR"


class NotConfigured(AppError):
    status_code = 503
    code = "NOT_CONFIGURED"


def error_body(status: int, code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"message": message, "status": "error", "code": code, **extra}


def _field_name(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def _validation_message(err: dict[str, Any]) -> str:
    kind = err.get("type", "")
    if kind == "missing":
        return "is required"
    msg = str(err.get("msg", "is invalid"))
    return msg[0].lower() + msg[1:] if msg else "is invalid"


async def _app_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AppError)
    return JSONResponse(exc.body(), status_code=exc.status_code, headers=exc.headers)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errs = list(exc.errors())
    if any(e.get("type") == "json_invalid" for e in errs):
        return JSONResponse(
            error_body(400, "INVALID_JSON", "The request body is not valid JSON."), status_code=400
        )
    fields = [
        {"field": _field_name(tuple(e.get("loc", ()))), "message": _validation_message(e)}
        for e in errs
    ]
    summary = "; ".join(f"{f['field']} {f['message']}" for f in fields[:5])
    return JSONResponse(
        error_body(400, "VALIDATION_ERROR", f"Invalid request: {summary}.", errors=fields),
        status_code=400,
    )


_HTTP_CODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
}


_HTTP_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})


def _allowed_methods(request: Request) -> str | None:
    """Every method the path is served with. Starlette's 405 names only the methods of the
    first route whose path matched, but one path can have several routes (GET, PUT and DELETE
    /project/{projectId}). Read from the OpenAPI paths, compiled once per app."""
    app = request.app
    table: list[tuple[re.Pattern[str], set[str]]] | None = getattr(app.state, "allow_table", None)
    if table is None:
        table = []
        for path, item in app.openapi().get("paths", {}).items():
            methods = {m.upper() for m in item if m in _HTTP_METHODS}
            if "GET" in methods:
                methods.add("HEAD")  # Starlette answers HEAD wherever it answers GET
            table.append((compile_path(path)[0], methods))
        app.state.allow_table = table
    path, root = request.scope["path"], request.scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    matches = [(template, methods) for template, methods in table if template.match(path)]
    # /project/create-project is its own resource, not a value of /project/{projectId}.
    literal = [m for m in matches if not m[0].groups]
    allowed: set[str] = set()
    for _, methods in literal or matches:
        allowed |= methods
    return ", ".join(sorted(allowed)) if allowed else None


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, "HTTP_ERROR")
    headers = dict(exc.headers or {})
    if exc.status_code == 404:
        message = "Not found."
    elif exc.status_code == 405:
        message = "Method not allowed."
        allowed = _allowed_methods(request)
        if allowed:
            headers["Allow"] = allowed
    else:
        message = str(exc.detail)
    return JSONResponse(
        error_body(exc.status_code, code, message),
        status_code=exc.status_code,
        headers=headers or None,
    )


async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse(
        error_body(500, "INTERNAL_ERROR", "Internal server error."), status_code=500
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(AppError, _app_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unhandled)
