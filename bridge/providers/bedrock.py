"""Anthropic Messages served through AWS Bedrock (an anthropic provider with BEDROCK_* settings).

Clients speak plain Anthropic Messages to the gateway; upstream, the body goes to Bedrock's
``InvokeModel`` (``POST /model/{modelId}/invoke``) or ``InvokeModelWithResponseStream``
(``.../invoke-with-response-stream``), signed with SigV4 by botocore, and the answer comes back
Anthropic-shaped (bridge.intercept.eventstream decodes the stream).

Choices where SPEC §5 is silent:
- Model: BEDROCK_MODEL, or BEDROCK_SMALL_FAST_MODEL when the requested model names "haiku"; a
  haiku request without a small fast model gets BEDROCK_MODEL; without BEDROCK_MODEL the client's
  model goes to Bedrock as it is (a client may name Bedrock model ids or inference profiles itself).
- Body: ``model`` and ``stream`` move into the URL; ``metadata``, ``container``, ``mcp_servers`` and
  ``service_tier`` are removed (first-party API features Bedrock's Messages schema does not take);
  the query string (the SDK's ``?beta=true``) is dropped.
- ``anthropic-beta`` values go into the body's ``anthropic_beta`` only when Bedrock accepts them
  (BEDROCK_BETAS); others (prompt-caching, oauth, files-api, claude-code, mcp-client, ...) are dropped.
- The client's headers never reach AWS: only content type, accept and the signature.
- BYOK does not apply: every call is signed with the gateway's AWS credentials.
- Passthrough routes (``v1/models``, ``count_tokens``) answer 404: Bedrock has no such operations.
- Errors: see bridge.intercept.eventstream.AWS_ERROR_STATUS; messages are AWS's, prefixed "Bedrock".
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Mapping
from urllib.parse import quote

import orjson
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.session import Session
from gevent.lock import Semaphore

from bridge.config import ProviderSettings
from bridge.content_coding import Inflater, content_coding
from bridge.errors import ANTHROPIC, GatewayError, error_body
from bridge.intercept.base import Interceptor
from bridge.intercept.eventstream import EventStreamDecoder, aws_error_message, aws_error_status
from bridge.intercept.messages import MessagesInterceptor
from bridge.masking import mask_secret
from bridge.providers.anthropic import AnthropicProvider

if TYPE_CHECKING:
    from botocore.credentials import ReadOnlyCredentials

    import requests

ANTHROPIC_VERSION = "bedrock-2023-05-31"
EVENT_STREAM = "application/vnd.amazon.eventstream"
#: Beta features Bedrock's Claude models take in ``anthropic_beta`` (AWS's Claude Messages docs);
#: conservative on purpose: an unknown value makes Bedrock refuse the whole request.
BEDROCK_BETAS = frozenset({
    "computer-use-2024-10-22",
    "computer-use-2025-01-24",
    "token-efficient-tools-2025-02-19",
    "interleaved-thinking-2025-05-14",
    "output-128k-2025-02-19",
    "dev-full-thinking-2025-05-14",
    "context-1m-2025-08-07",
    "context-management-2025-06-27",
    "fine-grained-tool-streaming-2025-05-14",
    "tool-search-tool-2025-10-19",
    "tool-examples-2025-10-29",
    "effort-2025-11-24",
})
#: Body members that stay with the first-party API (``model``/``stream`` are in the URL instead).
REMOVED_FIELDS = ("model", "stream", "metadata", "container", "mcp_servers", "service_tier")


def _messages(provider: BedrockProvider, body: dict, raw: bytes) -> MessagesInterceptor:
    interceptor = MessagesInterceptor(body, raw)
    # The model recorded, limited and sent is the Bedrock one; the request keeps the client's.
    interceptor.model = provider.bedrock_model(interceptor.model)
    return interceptor


def bedrock_body(body: dict, beta_header: str | None) -> bytes:
    """The InvokeModel body for an Anthropic Messages body and the client's ``anthropic-beta`` header."""
    out = {key: value for key, value in body.items() if key not in REMOVED_FIELDS}
    out["anthropic_version"] = ANTHROPIC_VERSION
    given = out.pop("anthropic_beta", None)
    candidates = [*(beta_header or "").split(","), *(given if isinstance(given, list) else ())]
    betas = [beta.strip() for beta in candidates if isinstance(beta, str) and beta.strip() in BEDROCK_BETAS]
    if betas:
        out["anthropic_beta"] = list(dict.fromkeys(betas))
    return orjson.dumps(out)


class BedrockProvider(AnthropicProvider):
    signs_requests = True
    stream_content_type = EVENT_STREAM
    intercepted = {"v1/messages": _messages}

    def __init__(self, settings: ProviderSettings) -> None:
        super().__init__(settings)
        assert settings.bedrock is not None and settings.bedrock.region  # config guarantees both
        self.bedrock = settings.bedrock
        self.region = settings.bedrock.region
        self.endpoint = (settings.bedrock.base_url or f"https://bedrock-runtime.{self.region}.amazonaws.com").rstrip("/")
        self._credentials = None  # botocore credentials, resolved in the worker on first use
        self._resolving = Semaphore()

    def bedrock_model(self, requested: str) -> str:
        if "haiku" in requested.lower() and self.bedrock.small_fast_model:
            return self.bedrock.small_fast_model
        return self.bedrock.model or requested

    def upstream_request(self, path: str, query: bytes, incoming: Iterable[tuple[str, str]],
                         credentials: Mapping[str, str] | None, interceptor: Interceptor) -> tuple[str, dict, bytes]:
        beta = ",".join(value for name, value in incoming if name.lower() == "anthropic-beta")
        body = bedrock_body(interceptor.body, beta)
        operation = "invoke-with-response-stream" if interceptor.streaming else "invoke"
        url = f"{self.endpoint}/model/{quote(interceptor.model, safe=':')}/{operation}"
        request = AWSRequest(method="POST", url=url, data=body, headers={
            "Content-Type": "application/json",
            "Accept": EVENT_STREAM if interceptor.streaming else "application/json",
        })
        SigV4Auth(self._aws_credentials(), "bedrock", self.region).add_auth(request)
        headers = dict(request.headers.items())
        headers["Accept-Encoding"] = "identity"  # unsigned: the HTTP client may set it too
        return url, headers, body

    def _aws_credentials(self) -> ReadOnlyCredentials:
        """The configured key pair, else the standard AWS chain (env, profile, SSO, container, instance role)."""
        if self._credentials is None:
            with self._resolving:  # one chain lookup per worker, however many calls wait for it
                if self._credentials is None:
                    if self.bedrock.access_key:
                        self._credentials = Credentials(self.bedrock.access_key, self.bedrock.access_key_secret)
                    else:
                        self._credentials = Session().get_credentials()
        if self._credentials is None:
            raise GatewayError(502, f"provider {self.name!r}: no AWS credentials found for Bedrock (set "
                                    "BEDROCK_ACCESS_KEY and BEDROCK_ACCESS_KEY_SECRET, or configure the AWS "
                                    "credential chain)")
        return self._credentials.get_frozen_credentials()  # refreshable ones renew themselves here

    def response_headers(self, upstream: requests.Response) -> list[tuple[str, str]]:
        # AWS's own headers (x-amzn-*, the event-stream type) mean nothing to an Anthropic client.
        stream = self.is_stream(upstream)
        headers = [("Content-Type", "text/event-stream" if stream else "application/json")]
        request_id = upstream.headers.get("x-amzn-requestid")
        if request_id:
            headers.append(("request-id", request_id))
        coding = upstream.headers.get("content-encoding")
        if coding and upstream.status_code < 400 and not stream:  # relayed as sent; errors and streams are made anew
            headers.append(("Content-Encoding", coding))
        return headers

    def stream_decoder(self) -> EventStreamDecoder:
        return EventStreamDecoder()

    def translate_response(self, upstream: requests.Response, body: bytes) -> tuple[int, bytes]:
        status = upstream.status_code
        if status < 400:
            return status, body
        coding = content_coding(upstream.headers.items())
        if coding is not None:  # read inflated (within a bound) to be turned into an Anthropic error
            body = Inflater(coding).whole(body) or b""
        try:
            payload = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            payload = None
        payload = payload if isinstance(payload, dict) else None
        # "ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/"
        error_type = (upstream.headers.get("x-amzn-errortype") or (payload or {}).get("__type") or "").split(":")[0]
        error_type = error_type.rsplit("#", 1)[-1] or None
        client_status = aws_error_status(error_type, status, payload)
        message = f"Bedrock: {aws_error_message(payload, error_type or f'HTTP {status}')}"
        if self.bedrock.access_key:  # AWS may name the key id; it never leaves unmasked
            message = message.replace(self.bedrock.access_key, mask_secret(self.bedrock.access_key))
        return client_status, error_body(ANTHROPIC, client_status, message)

    def check_passthrough(self, path: str) -> None:
        raise GatewayError(404, f"{path} is not available: provider {self.name!r} serves Anthropic through "
                                "AWS Bedrock, which has no such operation")

    def interception_metadata(self, interceptor: Interceptor) -> dict:
        return {"aws_bedrock": True, "requested_model": interceptor.body.get("model")}
