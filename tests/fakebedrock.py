"""A fake AWS Bedrock runtime: a real HTTP/1.1 server on 127.0.0.1 serving Anthropic models through
``InvokeModel`` and ``InvokeModelWithResponseStream`` from the Anthropic fixtures in tests/fixtures.

- Every request's SigV4 signature is recomputed with botocore from what arrived (method, path,
  signed headers, body) and the configured key pair; a missing, foreign or wrong one is refused
  with 403 as AWS does (``x-amzn-ErrorType`` + ``{"message": ...}``).
- The body must be what Bedrock takes: ``anthropic_version: bedrock-2023-05-31``, no ``model`` or
  ``stream`` (they are in the URL), none of the first-party-only fields, only accepted betas;
  else 400 ValidationException. The model id must be one of ``models``.
- The fixture is the one whose request equals the body (without the Bedrock additions and the
  model), so the gateway needs no test hook. A real client's bodies (Claude Code's) equal no
  fixture's: ``fixture_by_model`` names the fixture that answers them, per model id (a body that
  matches a fixture is still answered from that one). Streams go out as real binary event-stream frames
  (``encode_frame``), one HTTP chunk per frame; the fixture's ``error`` event becomes an exception
  frame, ``abort`` drops the connection.
- Error injection by the last user message: ``fakebedrock:throttle`` (429 ThrottlingException),
  ``fakebedrock:validation`` (400 ValidationException), ``fakebedrock:model-error`` (424
  ModelErrorException with originalStatusCode 529), ``fakebedrock:exception <type>`` (two events,
  then an exception frame of that type).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import socket
import struct
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tests.fakeupstream import RecordedRequest, load_fixtures

ANTHROPIC_VERSION = "bedrock-2023-05-31"
# The fake's model of what Bedrock refuses (kept apart from the gateway's own lists on purpose).
FORBIDDEN_FIELDS = ("model", "stream", "metadata", "container", "mcp_servers", "service_tier")
ACCEPTED_BETAS = {"interleaved-thinking-2025-05-14", "context-1m-2025-08-07", "token-efficient-tools-2025-02-19",
                  "fine-grained-tool-streaming-2025-05-14", "output-128k-2025-02-19", "context-management-2025-06-27",
                  "computer-use-2025-01-24", "computer-use-2024-10-22", "dev-full-thinking-2025-05-14",
                  "tool-search-tool-2025-10-19", "tool-examples-2025-10-29", "effort-2025-11-24"}
BAD_SIGNATURE = ("The request signature we calculated does not match the signature you provided. Check your AWS "
                 "Secret Access Key and signing method. Consult the service documentation for details.")
# Anthropic error type of a fixture's stream error → the Bedrock exception that carries it.
STREAM_EXCEPTIONS = {"overloaded_error": "serviceUnavailableException", "rate_limit_error": "throttlingException",
                     "api_error": "internalServerException", "invalid_request_error": "validationException"}
_PATH = re.compile(r"^/model/([^/]+)/(invoke|invoke-with-response-stream)$")
_AUTH = re.compile(r"^AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request, "
                   r"SignedHeaders=([a-z0-9;-]+), Signature=([0-9a-f]{64})$")


# ---------------------------------------------------------------- AWS event stream encoding

def _header(name: str, value: str) -> bytes:
    encoded_name, encoded_value = name.encode(), value.encode()
    # name length (1 byte), name, value type 7 (string), value length (2 bytes), value
    return struct.pack("!B", len(encoded_name)) + encoded_name + struct.pack("!BH", 7, len(encoded_value)) + encoded_value


def encode_frame(headers: dict[str, str], payload: bytes) -> bytes:
    """One event-stream message: prelude (total and headers length, CRC32 of both), headers,
    payload, CRC32 of everything before it."""
    header_bytes = b"".join(_header(name, value) for name, value in headers.items())
    total = 12 + len(header_bytes) + len(payload) + 4
    prelude = struct.pack("!II", total, len(header_bytes))
    prelude += struct.pack("!I", binascii.crc32(prelude))
    message = prelude + header_bytes + payload
    return message + struct.pack("!I", binascii.crc32(message))


def chunk_frame(event: dict) -> bytes:
    """A ``chunk`` event carrying one Anthropic stream event, as Bedrock sends it (with its ``p`` padding)."""
    data = json.dumps(event, separators=(",", ":")).encode()
    payload = json.dumps({"bytes": base64.b64encode(data).decode(), "p": "abcdefghijklmnopqrstuvwxyzABCDEF"[:len(data) % 32]})
    return encode_frame({":event-type": "chunk", ":content-type": "application/json", ":message-type": "event"},
                        payload.encode())


def exception_frame(exception_type: str, message: str, **extra: Any) -> bytes:
    return encode_frame({":exception-type": exception_type, ":content-type": "application/json",
                         ":message-type": "exception"}, json.dumps({"message": message, **extra}).encode())


def stream_frames(events: list[str]) -> list[bytes]:
    """The frames for a fixture's SSE events: each event's JSON in a chunk, an ``error`` event as an
    exception, and Bedrock's invocation metrics added to ``message_stop``."""
    frames = []
    for event in events:
        data = json.loads(event.split("\ndata: ", 1)[1])
        if data["type"] == "error":
            error = data["error"]
            frames.append(exception_frame(STREAM_EXCEPTIONS.get(error["type"], "internalServerException"), error["message"]))
            continue
        if data["type"] == "message_stop":
            data["amazon-bedrock-invocationMetrics"] = {"inputTokenCount": 10, "outputTokenCount": 5,
                                                         "invocationLatency": 321, "firstByteLatency": 123}
        frames.append(chunk_frame(data))
    return frames


# ---------------------------------------------------------------- the server

@dataclass
class FakeBedrock:
    access_key: str
    secret_key: str
    region: str = "us-east-1"
    models: tuple[str, ...] = ()
    url: str = ""
    requests: list[RecordedRequest] = field(default_factory=list)
    fixtures: dict[str, dict] = field(default_factory=lambda: {
        name: fixture for name, fixture in load_fixtures().items() if name.startswith("anthropic/")})
    # Model id → the fixture that answers bodies matching no fixture (none: 400 ValidationException).
    fixture_by_model: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = {name for name in self.fixture_by_model.values() if name not in self.fixtures}
        if unknown:
            raise ValueError(f"fakebedrock: no such fixture(s): {sorted(unknown)}")

    def start(self) -> FakeBedrock:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.fake = self  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fakebedrock", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def fixture_for(self, body: dict) -> str | None:
        """The fixture whose request is this InvokeModel body (Bedrock's own members and the model aside)."""
        asked = {key: value for key, value in body.items() if key not in ("anthropic_version", "anthropic_beta")}
        for name, fixture in self.fixtures.items():
            request = {key: value for key, value in fixture["request"].items() if key not in FORBIDDEN_FIELDS}
            if request == asked:
                return name
        return None

    def signature_error(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[str, str] | None:
        """(AWS error type, message) when the request is not signed with the configured key pair."""
        found = _AUTH.match(headers.get("authorization", ""))
        if not found:
            return "MissingAuthenticationTokenException", "Missing Authentication Token"
        access_key, day, region, service, signed, signature = found.groups()
        if access_key != self.access_key:
            return "UnrecognizedClientException", "The security token included in the request is invalid."
        stamp = headers.get("x-amz-date", "")
        if region != self.region or service != "bedrock" or not stamp.startswith(day):
            return "InvalidSignatureException", "Credential should be scoped to a valid region and service 'bedrock'."
        signed_time = datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
        if abs((datetime.now(timezone.utc) - signed_time).total_seconds()) > 300:
            return "InvalidSignatureException", "Signature expired."
        request = AWSRequest(method=method, url=f"http://{headers['host']}{path}", data=body,
                             headers={name: headers.get(name, "") for name in signed.split(";")})
        request.context["timestamp"] = stamp
        signer = SigV4Auth(Credentials(self.access_key, self.secret_key), "bedrock", self.region)
        expected = signer.signature(signer.string_to_sign(request, signer.canonical_request(request)), request)
        if signer.signed_headers(signer.headers_to_sign(request)) != signed or expected != signature:
            return "InvalidSignatureException", BAD_SIGNATURE
        return None

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fakebedrock"
    sys_version = ""
    timeout = 30

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_POST(self) -> None:
        fake: FakeBedrock = self.server.fake  # type: ignore[attr-defined]
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {name.lower(): value for name, value in self.headers.items()}
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        fake._record(RecordedRequest(self.command, self.path, headers, body, parsed))
        refused = fake.signature_error(self.command, self.path, headers, body)
        if refused:
            return self._error(403, *refused)
        route = _PATH.match(self.path)
        if not route:
            return self._error(404, "UnknownOperationException", "Unknown operation")
        model, streaming = unquote(route.group(1)), route.group(2) == "invoke-with-response-stream"
        if model not in fake.models:
            return self._error(400, "ValidationException", "The provided model identifier is invalid.")
        problem = _body_problem(parsed)
        if problem:
            return self._error(400, "ValidationException", problem)
        directive = _last_user_text(parsed).strip()
        if directive == "fakebedrock:throttle":
            return self._error(429, "ThrottlingException", "Too many requests, please wait before trying again.")
        if directive == "fakebedrock:validation":
            return self._error(400, "ValidationException", "messages.0.content: text content blocks must be non-empty")
        if directive == "fakebedrock:model-error":
            return self._error(424, "ModelErrorException", "The model is overloaded.",
                               originalStatusCode=529, originalMessage="Overloaded")
        if directive.startswith("fakebedrock:exception "):
            events = fake.fixtures["anthropic/simple_text"]["streaming"]["events"][:2]
            frames = stream_frames(events) + [exception_frame(directive.split()[1], "injected by fakebedrock")]
            return self._stream(frames, abort=False)
        name = fake.fixture_for(parsed) or fake.fixture_by_model.get(model)
        if name is None:
            return self._error(400, "ValidationException", "fakebedrock: no fixture has this request body")
        part = fake.fixtures[name]["streaming" if streaming else "blocking"]
        if part is None or part["status"] != 200:
            return self._error(400, "ValidationException", f"fakebedrock: {name} has no successful answer")
        if not streaming:
            return self._send(200, {"Content-Type": "application/json", "X-Amzn-Bedrock-Input-Token-Count": "14"},
                              json.dumps(part["body"], separators=(",", ":")).encode())
        self._stream(stream_frames(part["events"]), abort=part.get("abort", False))

    do_GET = do_POST

    def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.send_response(status)
        for name, value in {"x-amzn-RequestId": "9f1a7c2e-fake-4b6d-bedrock", **headers}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, error_type: str, message: str, **extra: Any) -> None:
        self._send(status, {"Content-Type": "application/json", "x-amzn-ErrorType": f"{error_type}:http://internal.amazon.com/coral/com.amazon.bedrock/"},
                   json.dumps({"message": message, **extra}).encode())

    def _stream(self, frames: list[bytes], abort: bool) -> None:
        self.send_response(200)
        self.send_header("x-amzn-RequestId", "9f1a7c2e-fake-4b6d-bedrock")
        self.send_header("Content-Type", "application/vnd.amazon.eventstream")
        self.send_header("X-Amzn-Bedrock-Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for frame in frames:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(frame), frame))
            if abort:  # the connection drops without the last chunk
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            self.close_connection = True


def _body_problem(body: Any) -> str | None:
    if not isinstance(body, dict):
        return "Malformed input request, please reformat your input and try again."
    if body.get("anthropic_version") != ANTHROPIC_VERSION:
        return "Malformed input request: #: required key [anthropic_version] not found or invalid"
    for key in FORBIDDEN_FIELDS:
        if key in body:
            return f"Malformed input request: #: extraneous key [{key}] is not permitted"
    for beta in body.get("anthropic_beta", []):
        if beta not in ACCEPTED_BETAS:
            return f"invalid beta flag: {beta}"
    return None


def _last_user_text(body: dict) -> str:
    messages = body.get("messages") or []
    last = messages[-1] if messages and isinstance(messages[-1], dict) else {}
    content = last.get("content") if last.get("role") == "user" else None
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return content if isinstance(content, str) else ""
