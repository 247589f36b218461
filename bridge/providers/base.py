"""The parts every provider type shares: route tables, upstream URLs and credentials."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, ClassVar, Iterable, Mapping
from urllib.parse import quote

from bridge.config import ProviderSettings
from bridge.intercept.base import Interceptor
from bridge.masking import without_gateway_tokens
from bridge.relay import StreamDecoder
from bridge.upstream import response_headers, upstream_headers

if TYPE_CHECKING:
    import requests

# Characters kept as they are when a decoded route path is put back into the upstream URL.
_PATH_SAFE = "/-._~!$&'()*+,;=:@"

InterceptorFactory = Callable[["Provider", dict, bytes], Interceptor]


class Provider:
    """One configured provider instance (e.g. ``anthropic-corp``) of a provider type."""

    type: ClassVar[str]
    #: Error body shape of the API this provider speaks (bridge.errors.OPENAI / ANTHROPIC).
    shape: ClassVar[str]
    #: Route path under ``/api/v2/aibridge/<name>/`` → how to intercept a POST to it.
    intercepted: ClassVar[dict[str, InterceptorFactory]]
    #: Route paths proxied unrecorded; a trailing ``/*`` admits any deeper path.
    passthrough: ClassVar[tuple[str, ...]]
    #: Leading part of the route path that the base URL already carries (``v1/`` for OpenAI).
    route_prefix: ClassVar[str] = ""
    #: Header that carries the provider key upstream, and the prefix of its value.
    key_header: ClassVar[tuple[str, str]]
    #: The user's own credentials always go upstream; the gateway token only comes in the governance header.
    always_byok: ClassVar[bool] = False
    #: What a bring-your-own-key client sends in Authorization, as error messages name it.
    own_credential: ClassVar[str] = "your provider key"
    #: Content type of the upstream's streamed answers (relayed as SSE, decoded by ``stream_decoder``).
    stream_content_type: ClassVar[str] = "text/event-stream"
    #: The gateway signs each upstream request itself (Bedrock's SigV4): no key header, no client key.
    signs_requests: ClassVar[bool] = False

    def __init__(self, settings: ProviderSettings) -> None:
        self.settings = settings
        self.name = settings.name
        self.base_url = settings.base_url

    def is_passthrough(self, path: str) -> bool:
        for allowed in self.passthrough:
            if path == allowed or (allowed.endswith("/*") and path.startswith(allowed[:-1]) and len(path) > len(allowed) - 1):
                return True
        return False

    def upstream_url(self, path: str, query: bytes = b"") -> str:
        """Base URL + the route path after the prefix the base URL already has (the base URL's path is
        kept) + the client's query, less any parameter holding a gateway token (``?api_key=<token>``)."""
        rest = path[len(self.route_prefix):] if path.startswith(self.route_prefix) else path
        url = self.base_url + quote(rest, safe=_PATH_SAFE)
        query = without_gateway_tokens(query) if query else query
        return f"{url}?{query.decode('latin-1')}" if query else url

    def credential_headers(self) -> dict[str, str]:
        """Headers that authenticate the gateway itself upstream (centralized mode)."""
        if not self.settings.key:
            return {}
        name, prefix = self.key_header
        return {name: prefix + self.settings.key}

    # --- hooks for providers that do not speak their clients' API upstream (Bedrock) ---

    def upstream_request(self, path: str, query: bytes, incoming: Iterable[tuple[str, str]],
                         credentials: Mapping[str, str] | None, interceptor: Interceptor) -> tuple[str, dict, bytes]:
        """URL, headers and body of the upstream call for an intercepted request."""
        return (self.upstream_url(path, query), upstream_headers(incoming, credentials), interceptor.upstream_body())

    def response_headers(self, upstream: requests.Response) -> list[tuple[str, str]]:
        """Headers the client gets with an intercepted response."""
        return response_headers(upstream)

    def is_stream(self, upstream: requests.Response) -> bool:
        """Whether the upstream answered with a stream (an error answer never is)."""
        return upstream.status_code < 400 and upstream.headers.get("content-type", "").startswith(self.stream_content_type)

    def stream_decoder(self) -> StreamDecoder | None:
        """A decoder for a stream the upstream does not send as SSE; None relays its bytes as they are."""
        return None

    def translate_response(self, upstream: requests.Response, body: bytes) -> tuple[int, bytes]:
        """Status and body the client gets for a whole (non-streamed) answer."""
        return upstream.status_code, body

    def check_passthrough(self, path: str) -> None:
        """Raise a GatewayError for a passthrough route this provider cannot serve."""

    def interception_metadata(self, interceptor: Interceptor) -> dict:
        """Extra metadata of this provider's interceptions."""
        return {}
