"""Liveness of the process (``/healthz``) and the metrics scrape (``/metrics``)."""

from __future__ import annotations

from flask import Blueprint, Response

from bridge.metrics import exposition

health_blueprint = Blueprint("health", __name__)


@health_blueprint.get("/healthz")
def healthz() -> tuple[dict, int]:
    return {"status": "ok"}, 200


@health_blueprint.get("/metrics")
def metrics() -> Response:
    body, content_type = exposition()
    return Response(body, content_type=content_type)
