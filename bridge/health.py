"""Liveness (``/healthz``), readiness (``/readyz``) and the metrics scrape (``/metrics``)."""

from __future__ import annotations

import hmac
from operator import methodcaller

from flask import Blueprint, Response, current_app, request
from loguru import logger

from bridge.metrics import exposition
from bridge.store import database_error_reason

health_blueprint = Blueprint("health", __name__)

#: How long /readyz waits for the write lock (busy timeout), and for the whole check.
READY_LOCK_WAIT = 1.0
READY_TIMEOUT = 3.0


@health_blueprint.get("/healthz")
def healthz() -> tuple[dict, int]:
    """The process answers: nothing else is checked."""
    return {"status": "ok"}, 200


@health_blueprint.get("/readyz")
def readyz() -> tuple[dict, int]:
    """Ready to serve: the configuration is loaded and the store is writable.

    The store check takes the write lock and releases it at once (``BEGIN IMMEDIATE; ROLLBACK``),
    waiting at most READY_LOCK_WAIT for another writer (PostgreSQL: the server answers within
    READY_LOCK_WAIT and takes writes), on the worker's store read threads (never on the hub). The
    detail names the problem without paths or settings values.
    """
    gateway = current_app.extensions.get("bridge")
    if gateway is None or getattr(gateway, "settings", None) is None:
        return _unavailable("the configuration is not loaded")
    database = getattr(gateway, "database", None)
    if database is None:
        return _unavailable("the record store is not set up")
    import gevent

    try:
        database.read_within(READY_TIMEOUT, methodcaller("check_writable", READY_LOCK_WAIT))
    except gevent.Timeout:
        return _unavailable(f"the record store did not answer within {READY_TIMEOUT:g}s")
    except Exception as exc:  # e.g. the file cannot be opened: then its message may name the path
        reason = database_error_reason(exc)
        if reason is not None:
            return _unavailable(f"the record store is not writable: {reason}")
        logger.bind(record_type="server").warning("readiness check failed: {}", type(exc).__name__)
        return _unavailable("the record store cannot be opened")
    return {"status": "ready"}, 200


@health_blueprint.get("/metrics")
def metrics() -> Response | tuple[dict, int, dict]:
    """The Prometheus scrape; with CODER_AIBRIDGE_METRICS_TOKEN set, only for ``Authorization: Bearer <it>``."""
    gateway = current_app.extensions.get("bridge")
    token = getattr(getattr(gateway, "settings", None), "metrics_token", None)
    if token and not _bearer_matches(request.headers.get("Authorization"), token):
        return ({"message": "missing or wrong metrics token: send Authorization: Bearer <CODER_AIBRIDGE_METRICS_TOKEN>"},
                401, {"WWW-Authenticate": "Bearer"})
    body, content_type = exposition()
    return Response(body, content_type=content_type)


def _bearer_matches(authorization: str | None, token: str) -> bool:
    scheme, _, given = (authorization or "").strip().partition(" ")
    # compared in constant time, as bytes: a str compare_digest refuses non-ASCII input
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def _unavailable(detail: str) -> tuple[dict, int]:
    return {"status": "unavailable", "detail": detail}, 503
