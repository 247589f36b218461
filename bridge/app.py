"""The application factory."""

from __future__ import annotations

import atexit
from typing import Any

from flask import Flask, Request, Response, request
from loguru import logger
from werkzeug.datastructures import EnvironHeaders
from werkzeug.exceptions import HTTPException

from bridge import errors
from bridge.api import api_blueprint
from bridge.config import Settings, load_settings
from bridge.dashboard import dashboard_blueprint
from bridge.errors import GatewayError
from bridge.gateway import Gateway
from bridge.health import health_blueprint
from bridge.logsetup import configure_logging
from bridge.pricing import Prices
from bridge.proxy import error_response, provider_blueprint
from bridge.store import open_store

AIBRIDGE_PREFIX = "/api/v2/aibridge"
#: Coder's newer prefix: every route under AIBRIDGE_PREFIX (API and providers) answers under it too (SPEC §9).
AI_GATEWAY_PREFIX = "/api/v2/ai-gateway"
_UNPREFIXED = frozenset({"CONTENT_TYPE", "CONTENT_LENGTH"})  # the two headers WSGI keeps without HTTP_


class _Headers(EnvironHeaders):
    """werkzeug's request headers, whose get() raised and caught a KeyError for every absent
    header: a relayed call asks for a dozen absent ones (client, session and credential headers)."""

    def get(self, key, default=None, type=None):
        if type is not None or not isinstance(key, str):
            return super().get(key, default, type)
        name = key.upper().replace("-", "_")
        return self.environ.get(name if name in _UNPREFIXED else "HTTP_" + name, default)


class GatewayRequest(Request):
    def __init__(self, environ: dict, populate_request: bool = True, shallow: bool = False) -> None:
        super().__init__(environ, populate_request, shallow)
        self.headers = _Headers(environ)


class NewerPrefix:
    """WSGI middleware: a path under AI_GATEWAY_PREFIX is served as the same path under AIBRIDGE_PREFIX
    (one rewrite before routing, so every route, error shape and record is the same)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def __call__(self, environ: dict, start_response: Any) -> Any:
        path = environ.get("PATH_INFO", "")
        if path.startswith(AI_GATEWAY_PREFIX) and path[len(AI_GATEWAY_PREFIX):len(AI_GATEWAY_PREFIX) + 1] in ("", "/"):
            environ["PATH_INFO"] = AIBRIDGE_PREFIX + path[len(AI_GATEWAY_PREFIX):]
        return self.app(environ, start_response)


def create_app(settings: Settings | None = None) -> Flask:
    """Build the WSGI app for ``settings`` (read from flags/env/YAML when not given)."""
    if settings is None:
        settings = load_settings()
    configure_logging(settings.log_human, settings.log_json)
    for warning in settings.warnings:
        logger.warning(warning)
    # Up to date before the worker's store threads open it.
    open_store(settings.database_path, migrate=True, prices=Prices(settings.prices)).close()

    app = Flask("bridge", static_folder=None)
    app.request_class = GatewayRequest
    app.wsgi_app = NewerPrefix(app.wsgi_app)  # type: ignore[method-assign]
    app.url_map.merge_slashes = False  # "a//b" is a 404 like any unknown route, not a redirect to "a/b"
    gateway = Gateway(settings)
    app.extensions["bridge"] = gateway
    atexit.register(gateway.close)  # servers without gunicorn's worker_exit hook flush records too
    # Records a stopped worker could only journal are written now, not when this one first records.
    try:
        gateway.recorder.recover()
    except Exception as error:  # the store is busy or down: the writer retries once it records
        logger.warning("could not replay journaled records at start: {}", type(error).__name__)
    app.register_blueprint(health_blueprint)
    app.register_blueprint(api_blueprint(gateway))
    app.register_blueprint(dashboard_blueprint())
    if settings.enabled:
        for provider in gateway.providers.values():
            app.register_blueprint(provider_blueprint(provider, gateway))

        def unknown_provider(name: str, rest: str = "") -> Response:
            return _generic_error(404, f"unknown provider {name!r}: configured providers are "
                                       f"{', '.join(sorted(gateway.providers)) or 'none'}")
        view = unknown_provider
    else:
        def gateway_disabled(name: str, rest: str = "") -> Response:
            return _generic_error(404, "AI Gateway is disabled")
        view = gateway_disabled
    for rule in (f"{AIBRIDGE_PREFIX}/<name>", f"{AIBRIDGE_PREFIX}/<name>/", f"{AIBRIDGE_PREFIX}/<name>/<path:rest>"):
        app.add_url_rule(rule, endpoint=f"{view.__name__}:{rule}", view_func=view, methods=["GET", "POST", "PUT", "PATCH", "DELETE"])

    def shape_of_request() -> str:
        """The shape of the provider the path names, for errors no provider view answered (e.g. a
        405, or a path no route matches such as ``<provider>//x``); else the generic one."""
        path = request.path
        name = path[len(AIBRIDGE_PREFIX) + 1:].partition("/")[0] if path.startswith(f"{AIBRIDGE_PREFIX}/") else ""
        provider = gateway.providers.get(name) if settings.enabled else None
        return provider.shape if provider is not None else errors.ANTHROPIC

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        return error_response(shape_of_request(), GatewayError(error.code or 500, error.description or error.name))

    @app.errorhandler(Exception)
    def unexpected_error(error: Exception) -> Response:
        logger.opt(exception=error).error("unhandled error")
        return error_response(shape_of_request(), GatewayError(500, "internal gateway error"))

    return app


def _generic_error(status: int, message: str) -> Response:
    """An error where no provider is known: Anthropic's shape, whose ``error.message`` both SDKs read."""
    return error_response(errors.ANTHROPIC, GatewayError(status, message))
