"""The provider routes: one blueprint per configured provider instance (SPEC §4).

A POST to an intercepted route is authenticated, checked, relayed and shown to its interceptor;
a passthrough route is relayed with the provider key and not recorded; anything else is a 404
that names the route.
"""

from __future__ import annotations

import io

import orjson
from flask import Blueprint, Response, g, request
from werkzeug.datastructures import Headers
from werkzeug.http import remove_entity_headers
from loguru import logger

from bridge import metrics
from bridge.auth import GOVERNANCE_HEADER
from bridge.content_coding import content_coding
from bridge.dump import Dumper
from bridge.errors import GatewayError, error_body
from bridge.gateway import Gateway
from bridge.providers.base import InterceptorFactory, Provider
from bridge.interception import Interception
from bridge.masking import Masker, configured_secrets
from bridge.relay import STREAM_HEADERS, StreamRelay
from bridge.reliability import send_with_retries
from bridge.upstream import read_whole, response_headers, upstream_headers

ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
INTERCEPTION_HEADER = "X-AIBridge-Interception-Id"


class RelayResponse(Response):
    #: Keep the upstream's content type, or none at all: never invent text/html.
    default_mimetype = None

    def get_wsgi_headers(self, environ: dict) -> Headers:
        """The headers as they are, but for what a status forbids (werkzeug's rules). werkzeug's own
        also rewrites Location and Content-Location as URIs, in a copy made for every answer: a
        relayed answer keeps the upstream's as sent."""
        status = self.status_code
        if not (100 <= status < 200 or status in (204, 304)):
            return self.headers
        headers = Headers(self.headers)
        if status == 304:
            remove_entity_headers(headers)
        else:
            headers.remove("Content-Length")
        return headers


def error_response(shape: str, error: GatewayError, extra_headers: dict[str, str] | None = None) -> RelayResponse:
    headers = {"Content-Type": "application/json", **error.headers, **(extra_headers or {})}
    return RelayResponse(error_body(shape, error.status, error.message, error.param, error.code), status=error.status,
                         headers=headers)


def provider_blueprint(provider: Provider, gateway: Gateway) -> Blueprint:
    blueprint = Blueprint(f"provider-{provider.name}", __name__, url_prefix=f"/api/v2/aibridge/{provider.name}")

    for path, factory in provider.intercepted.items():
        blueprint.add_url_rule(f"/{path}", endpoint=f"intercept:{path}", methods=["POST"],
                               view_func=_holding_slot(_intercept_view(provider, path, factory, gateway)))

    def other_route(rest: str = "") -> Response:
        if _is_safe_path(rest) and provider.is_passthrough(rest):
            return _passthrough(provider, rest, gateway)
        return error_response(provider.shape, GatewayError(404, f"route not supported: {request.method} /{rest}"))

    blueprint.add_url_rule("/", endpoint="other-root", view_func=other_route, methods=ALL_METHODS)
    blueprint.add_url_rule("/<path:rest>", endpoint="other", view_func=other_route, methods=ALL_METHODS)
    return blueprint


def _intercept_view(provider: Provider, path: str, factory: InterceptorFactory, gateway: Gateway):
    dumper = Dumper.for_provider(provider.settings, gateway.settings)  # None unless DUMP_DIR is set
    masker = Masker(configured_secrets(gateway.settings))  # every provider's: a user may paste any of them

    def intercept() -> Response:
        shape = provider.shape
        try:
            caller = _authenticate(provider, gateway, spends=True)
            g.bridge_slot = gateway.limits.acquire(provider.name)  # before the body is read: 429 is cheap
            raw = read_body(gateway.settings.max_body_size)
            interceptor = factory(provider, parse_json_object(raw), raw)
            credentials = _credentials(provider, caller.byok)  # refused before any record is made
        except GatewayError as error:
            return error_response(shape, error)
        interception = Interception(provider, interceptor, caller, request.headers, gateway.recorder,
                                    gateway.settings.structured_logging, masker,
                                    recorded_text_max=gateway.settings.max_recorded_text, prices=gateway.prices)
        interception.begin()
        id_header = (INTERCEPTION_HEADER, interception.id)
        dump = None
        try:
            url, headers, payload = provider.upstream_request(path, request.query_string, request.headers.items(),
                                                              credentials, interceptor)
            interceptor.forget_request()
            if dumper is not None:
                dump = dumper.begin(interception.id, "POST", url, headers, payload, request.headers.items())
            upstream = send_with_retries(
                lambda: gateway.upstream.send("POST", url, headers, payload, provider.name), provider=provider.name,
                breaker=gateway.breakers.get(provider.name, path, interception.model),
                max_retries=provider.settings.max_retries, on_attempt=interception.attempted,
                log=logger.bind(provider=provider.name, endpoint=path, model=interception.model,
                                interception_id=interception.id))
            interception.answered(upstream.status_code)
            out_headers = provider.response_headers(upstream)
            out_headers.append(id_header)
            if interceptor.streaming and provider.is_stream(upstream):
                out_headers.extend(STREAM_HEADERS)
                relay = StreamRelay(upstream, interception, provider.name, provider.stream_decoder())
                return RelayResponse(relay if dump is None else dump.stream(relay, upstream.status_code, out_headers),
                                     status=upstream.status_code, headers=out_headers)
            status, body = provider.translate_response(upstream, read_whole(upstream, provider.name))
            interception.answered(status)
        except GatewayError as error:
            interception.failed(error.status, error.message)
            response = error_response(shape, error, dict([id_header]))
            if dump is not None:
                dump.whole(response.status_code, response.headers.items(), response.get_data())
            return response
        except Exception:
            interception.failed(None, "internal gateway error")
            raise
        if dump is not None:
            dump.whole(status, out_headers, body)
        response = RelayResponse(body, status=status, headers=out_headers)
        # Recorded once the answer is out (the WSGI server closes the response after its last byte):
        # the client does not wait for the record to be built.
        response.call_on_close(lambda: interception.answer_sent(status, body, content_coding(out_headers)))
        return response

    intercept.__name__ = f"intercept_{provider.name}_{path}"
    return intercept


def _holding_slot(view):
    """Give back the view's place in MAX_CONCURRENCY (``g.bridge_slot``) when its response is closed:
    after the last byte of a stream, or when the client went away."""
    def holding() -> Response:
        g.bridge_slot = None
        try:
            response = view()
        except BaseException:
            if g.bridge_slot is not None:
                g.bridge_slot.release()
            raise
        if g.bridge_slot is not None:
            response.call_on_close(g.bridge_slot.release)
        return response

    holding.__name__ = view.__name__
    return holding


def _passthrough(provider: Provider, path: str, gateway: Gateway) -> Response:
    try:
        reads = request.method in ("GET", "HEAD")
        caller = _authenticate(provider, gateway, spends=not reads)
        provider.check_passthrough(path)
        body = read_body(gateway.settings.max_body_size) if not reads else None
        upstream = gateway.upstream.send(request.method, provider.upstream_url(path, request.query_string),
                                         upstream_headers(request.headers.items(), _credentials(provider, caller.byok)),
                                         body, provider.name)
        content = read_whole(upstream, provider.name)
    except GatewayError as error:
        return error_response(provider.shape, error)
    metrics.PASSTHROUGH.labels(provider.name, request.method).inc()
    return RelayResponse(content, status=upstream.status_code, headers=response_headers(upstream))


def _authenticate(provider: Provider, gateway: Gateway, spends: bool):
    """The caller. A call that ``spends`` (every intercepted one; a passthrough one that is not a read,
    e.g. POST v1/responses/compact, which runs the model unrecorded) is refused with the budget's 429
    when the caller's budget is spent: a dict lookup, no store call (bridge.budgets)."""
    caller = gateway.authenticator.authenticate(request.headers, gateway.settings.allow_byok,
                                                byok_only=provider.always_byok)
    if spends:
        gateway.budgets.enforce(caller.user_id, caller.username, provider.name)
    return caller


def _credentials(provider: Provider, byok: bool) -> dict[str, str] | None:
    """The provider key for centralized mode; None to send the client's own credentials (BYOK).
    A client that sent the governance header without a key of its own (bridge.auth) gets the
    provider key, if there is one."""
    if provider.signs_requests:  # Bedrock: the gateway's AWS credentials sign every call, BYOK or not
        return {}
    if byok:
        return None
    credentials = provider.credential_headers()
    if not credentials:
        if request.headers.get(GOVERNANCE_HEADER):
            raise GatewayError(401, f"bring-your-own-key: send {provider.own_credential} in Authorization (or "
                                    "X-Api-Key); a gateway token there is not sent to the provider, and "
                                    f"provider {provider.name!r} has no key configured on the gateway")
        raise GatewayError(401, f"provider {provider.name!r} has no key configured on the gateway; "
                                "send your own provider key (bring-your-own-key mode)")
    return credentials


def read_body(limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``limit`` bytes."""
    # Refused before reading: gunicorn discards the unread rest without buffering it.
    length = request.content_length
    if length is not None:
        if length > limit:
            raise _too_large(limit)
        # From the server's stream in one call: werkzeug's request stream copies a body twice more
        # (into a growing buffer, then out of it), three bodies in memory for one.
        body = request.environ["wsgi.input"].read(length) if length else b""
        if len(body) < length:
            raise GatewayError(400, "the request body ended before its Content-Length")
        return body
    stream = request.stream
    body = io.BytesIO()  # grows in place, and its bytes are taken without a copy
    while chunk := stream.read(65536):
        if body.tell() + len(chunk) > limit:
            raise _too_large(limit)
        body.write(chunk)
    return body.getvalue()


def _too_large(limit: int) -> GatewayError:
    return GatewayError(413, f"request body exceeds the gateway's limit of {limit} bytes")


def parse_json_object(raw: bytes) -> dict:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise GatewayError(400, f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise GatewayError(400, "request body must be a JSON object")
    return body


def _is_safe_path(path: str) -> bool:
    """No empty, ``.`` or ``..`` segments: a route path must not climb out of the allow-list."""
    return all(segment not in ("", ".", "..") for segment in path.split("/")) if path else False
