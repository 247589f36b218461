"""The application factory."""

from __future__ import annotations

import atexit

from flask import Flask, Response
from loguru import logger
from werkzeug.exceptions import HTTPException

from bridge import errors
from bridge.api import api_blueprint
from bridge.config import Settings, load_settings
from bridge.errors import GatewayError
from bridge.gateway import Gateway
from bridge.health import health_blueprint
from bridge.logsetup import configure_logging
from bridge.proxy import error_response, provider_blueprint
from bridge.store import Store

AIBRIDGE_PREFIX = "/api/v2/aibridge"


def create_app(settings: Settings | None = None) -> Flask:
    """Build the WSGI app for ``settings`` (read from flags/env/YAML when not given)."""
    if settings is None:
        settings = load_settings()
    configure_logging(settings.log_human, settings.log_json)
    for warning in settings.warnings:
        logger.warning(warning)
    store = Store(settings.database_path)
    store.migrate()
    store.close()

    app = Flask("bridge", static_folder=None)
    gateway = Gateway(settings)
    app.extensions["bridge"] = gateway
    atexit.register(gateway.close)  # servers without gunicorn's worker_exit hook flush records too
    app.register_blueprint(health_blueprint)
    app.register_blueprint(api_blueprint(gateway))
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

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        return _generic_error(error.code or 500, error.description or error.name)

    @app.errorhandler(Exception)
    def unexpected_error(error: Exception) -> Response:
        logger.opt(exception=error).error("unhandled error")
        return _generic_error(500, "internal gateway error")

    return app


def _generic_error(status: int, message: str) -> Response:
    """An error where no provider is known: Anthropic's shape, whose ``error.message`` both SDKs read."""
    return error_response(errors.ANTHROPIC, GatewayError(status, message))
