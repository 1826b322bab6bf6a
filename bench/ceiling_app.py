"""The ceiling: a bare FastAPI endpoint answering constant JSON of the same size and shape as
GET /user/get-active-project, served by uvicorn with the same flags as the real app."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

PAYLOAD: dict[str, Any] = {
    "message": "fetched active project data.",
    "status": "success",
    "projectData": {
        "id": "dce09491-e3c8-4c0b-bf01-c8ef8729088b",
        "name": "Bench",
        "description": "",
        "user_id": "3189fbff-f9fa-4920-b95c-63387b1204a4",
        "status": "ACTIVE",
        "is_deleted": False,
        "call_status_webhook": None,
        "active_agent": None,
        "created_at": "2025-03-10T05:20:39.831Z",
        "updated_at": "2025-03-10T05:20:39.831Z",
    },
}


def create_app() -> FastAPI:
    app = FastAPI()

    @app.get("/ceiling")
    async def ceiling() -> dict[str, Any]:
        return PAYLOAD

    return app
