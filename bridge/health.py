"""Liveness of the process (``/healthz``)."""

from __future__ import annotations

from flask import Blueprint

health_blueprint = Blueprint("health", __name__)


@health_blueprint.get("/healthz")
def healthz() -> tuple[dict, int]:
    return {"status": "ok"}, 200
