"""The Bedrock pieces on their own: event-stream frames and their decoding into Anthropic SSE, the
InvokeModel body, the model choice, SigV4 signing (checked by the fake Bedrock's verifier) and the
mapping of AWS errors to Anthropic ones."""

from __future__ import annotations

import base64
import json

import pytest
from botocore.eventstream import ChecksumMismatch, EventStreamBuffer
from urllib3 import HTTPHeaderDict

from bridge.config import load_settings
from bridge.errors import GatewayError
from bridge.intercept.eventstream import EventStreamDecoder
from bridge.intercept.sse import SSESplitter
from bridge.providers import build_provider
from bridge.providers.bedrock import BedrockProvider, bedrock_body
from tests.fakebedrock import FakeBedrock, chunk_frame, encode_frame, exception_frame, stream_frames
from tests.sdk_calls import load_fixtures

FIXTURES = dict(load_fixtures("anthropic"))
ACCESS_KEY, SECRET = "AKIAUNITTEST00000001", "unit/test+secret/0123456789abcdefghijklm"
P0 = "CODER_AIBRIDGE_PROVIDER_0_"


def provider(**settings: str) -> BedrockProvider:
    env = {P0 + "TYPE": "anthropic", P0 + "BEDROCK_REGION": "eu-west-1", P0 + "BEDROCK_ACCESS_KEY": ACCESS_KEY,
           P0 + "BEDROCK_ACCESS_KEY_SECRET": SECRET, **{P0 + key: value for key, value in settings.items()}}
    built = build_provider(load_settings(env={key: value for key, value in env.items() if value}).providers[0])
    assert isinstance(built, BedrockProvider)
    return built


class Upstream:
    """What the provider reads of an upstream answer: status and case-insensitive headers."""

    def __init__(self, status: int, **headers: str) -> None:
        self.status_code = status
        self.headers = HTTPHeaderDict({name.replace("_", "-"): value for name, value in headers.items()})


# ---------------------------------------------------------------- frames


def test_frames_decode_with_botocore():
    frame = encode_frame({":event-type": "chunk", ":message-type": "event"}, b'{"bytes":"e30="}')
    buffer = EventStreamBuffer()
    buffer.add_data(frame + frame[:7])  # one whole frame and the start of the next
    (message,) = list(buffer)
    assert message.headers == {":event-type": "chunk", ":message-type": "event"}
    assert message.payload == b'{"bytes":"e30="}'
    broken = bytearray(frame)
    broken[-6] ^= 1  # one payload bit flipped: the message CRC no longer matches
    buffer = EventStreamBuffer()
    buffer.add_data(bytes(broken))
    with pytest.raises(ChecksumMismatch):
        list(buffer)


@pytest.mark.parametrize("name", [name for name, fixture in FIXTURES.items()
                                  if fixture["streaming"] and "events" in fixture["streaming"]])
def test_decoded_stream_is_the_anthropic_stream(name):
    """Fed in pieces of any size, the frames come back as the fixture's events (Bedrock's metrics removed)."""
    events = FIXTURES[name]["streaming"]["events"]
    data = b"".join(stream_frames(events))
    for size in (1, 7, 100, len(data)):
        decoder = EventStreamDecoder()
        out = b"".join(decoder.feed(data[i:i + size]) for i in range(0, len(data), size))
        got = [(event.name.decode(), json.loads(event.data)) for event in SSESplitter().feed(out)]
        want = [(event.split("\n")[0][len("event: "):], json.loads(event.split("\ndata: ", 1)[1])) for event in events]
        if want and want[-1][0] == "error":  # carried as a Bedrock exception: same type and message
            assert got[-1] == ("error", {"type": "error", "error": want[-1][1]["error"]})
            got, want = got[:-1], want[:-1]
        assert got == want, size


def test_a_partial_frame_gives_nothing_yet():
    frame = chunk_frame({"type": "ping"})
    decoder = EventStreamDecoder()
    assert decoder.feed(frame[:-1]) == b""
    assert decoder.feed(frame[-1:]) == b'event: ping\ndata: {"type":"ping"}\n\n'


@pytest.mark.parametrize("aws_type, extra, error_type", [
    ("throttlingException", {}, "rate_limit_error"),
    ("validationException", {}, "invalid_request_error"),
    ("modelStreamErrorException", {}, "api_error"),
    ("modelStreamErrorException", {"originalStatusCode": 529, "originalMessage": "Overloaded"}, "overloaded_error"),
    ("internalServerException", {}, "api_error"),
    ("serviceUnavailableException", {}, "overloaded_error"),
    ("modelTimeoutException", {}, "timeout_error"),
    ("someFutureException", {}, "api_error"),
])
def test_exception_frames_become_anthropic_error_events(aws_type, extra, error_type):
    out = EventStreamDecoder().feed(exception_frame(aws_type, "it went wrong", **extra))
    assert out == b"event: error\ndata: " + json.dumps(
        {"type": "error", "error": {"type": error_type, "message": "it went wrong"}}, separators=(",", ":")).encode() + b"\n\n"


def test_error_frame_with_its_code_in_headers():
    frame = encode_frame({":message-type": "error", ":error-code": "ThrottlingException", ":error-message": "slow down"}, b"")
    out = EventStreamDecoder().feed(frame)
    assert json.loads(out.split(b"data: ")[1]) == {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}


def test_other_events_and_foreign_chunks_are_skipped():
    initial = encode_frame({":message-type": "event", ":event-type": "initial-response"}, b"{}")
    not_messages = encode_frame({":message-type": "event", ":event-type": "chunk"},
                                json.dumps({"bytes": base64.b64encode(b'{"completion":"x"}').decode()}).encode())
    assert EventStreamDecoder().feed(initial + not_messages) == b""


def test_a_corrupt_frame_ends_the_stream_with_one_error_event():
    good, bad = chunk_frame({"type": "ping"}), bytearray(chunk_frame({"type": "ping"}))
    bad[-1] ^= 0xFF
    decoder = EventStreamDecoder()
    out = decoder.feed(good + bytes(bad))
    events = SSESplitter().feed(out)
    assert [event.name for event in events] == [b"ping", b"error"]
    assert json.loads(events[1].data)["error"]["type"] == "api_error"
    assert decoder.feed(good) == b""  # nothing after a corrupt frame is trusted


# ---------------------------------------------------------------- request


def test_invoke_body():
    body = {"model": "claude-sonnet-4-5", "stream": True, "max_tokens": 10, "messages": [], "metadata": {"user_id": "u"},
            "service_tier": "auto", "container": "c", "mcp_servers": [], "thinking": {"type": "enabled", "budget_tokens": 5},
            "anthropic_beta": ["context-1m-2025-08-07", "files-api-2025-04-14"]}
    sent = json.loads(bedrock_body(body, "oauth-2025-04-20, interleaved-thinking-2025-05-14,claude-code-20250219,"
                                         "prompt-caching-scope-2026-01-05,context-1m-2025-08-07"))
    assert sent == {"max_tokens": 10, "messages": [], "thinking": {"type": "enabled", "budget_tokens": 5},
                    "anthropic_version": "bedrock-2023-05-31",
                    "anthropic_beta": ["interleaved-thinking-2025-05-14", "context-1m-2025-08-07"]}
    assert "anthropic_beta" not in json.loads(bedrock_body({"messages": []}, "oauth-2025-04-20"))


@pytest.mark.parametrize("settings, requested, used", [
    ({"BEDROCK_MODEL": "m", "BEDROCK_SMALL_FAST_MODEL": "s"}, "claude-haiku-4-5-20251001", "s"),
    ({"BEDROCK_MODEL": "m", "BEDROCK_SMALL_FAST_MODEL": "s"}, "claude-sonnet-4-5", "m"),
    ({"BEDROCK_MODEL": "m"}, "claude-haiku-4-5", "m"),
    ({"BEDROCK_SMALL_FAST_MODEL": "s"}, "claude-haiku-4-5", "s"),
    ({"BEDROCK_SMALL_FAST_MODEL": "s"}, "claude-sonnet-4-5", "claude-sonnet-4-5"),
    ({}, "anthropic.claude-3-haiku-20240307-v1:0", "anthropic.claude-3-haiku-20240307-v1:0"),
])
def test_model_choice(settings, requested, used):
    assert provider(**settings).bedrock_model(requested) == used


def _signed_request(bedrock: BedrockProvider, model: str, stream: bool) -> tuple[str, dict, bytes]:
    body = {"model": model, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    interceptor = bedrock.intercepted["v1/messages"](bedrock, body, json.dumps(body).encode())
    return bedrock.upstream_request("v1/messages", b"beta=true",
                                    [("X-Api-Key", "gateway-token"), ("anthropic-version", "2023-06-01")], {}, interceptor)


def _verify(fake: FakeBedrock, url: str, headers: dict, body: bytes):
    host_and_path = url.split("://", 1)[1]
    host, path = host_and_path.split("/", 1)
    received = {name.lower(): value for name, value in headers.items()} | {"host": host}
    return fake.signature_error("POST", "/" + path, received, body)


def test_signed_request_to_the_regional_endpoint():
    arn = "arn:aws:bedrock:eu-west-1:123456789012:inference-profile/eu.anthropic.claude-sonnet-4-5-v1:0"
    url, headers, body = _signed_request(provider(BEDROCK_MODEL=arn), "claude-sonnet-4-5", True)
    assert url == ("https://bedrock-runtime.eu-west-1.amazonaws.com/model/arn:aws:bedrock:eu-west-1:123456789012:"
                   "inference-profile%2Feu.anthropic.claude-sonnet-4-5-v1:0/invoke-with-response-stream")
    assert headers["Accept"] == "application/vnd.amazon.eventstream"
    assert not {"x-api-key", "anthropic-version"} & {name.lower() for name in headers}
    assert _verify(FakeBedrock(ACCESS_KEY, SECRET, region="eu-west-1"), url, headers, body) is None
    assert _verify(FakeBedrock(ACCESS_KEY, SECRET[:-1], region="eu-west-1"), url, headers, body)[0] == \
        "InvalidSignatureException"
    assert _verify(FakeBedrock(ACCESS_KEY, SECRET, region="eu-west-1"), url, headers, body + b" ")[0] == \
        "InvalidSignatureException"  # the body is signed too


def test_base_url_keeps_its_path():
    bedrock = provider(BEDROCK_BASE_URL="https://proxy.example.com/bedrock/", BEDROCK_MODEL="m")
    url, _, _ = _signed_request(bedrock, "claude-sonnet-4-5", False)
    assert url == "https://proxy.example.com/bedrock/model/m/invoke"


def test_standard_credential_chain(monkeypatch, tmp_path):
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_WEB_IDENTITY_TOKEN_FILE",
                 "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BOTO_CONFIG", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFROMENVIRONMENT1")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-from-the-environment")
    chained = provider(BEDROCK_ACCESS_KEY="", BEDROCK_ACCESS_KEY_SECRET="", BEDROCK_MODEL="m")
    url, headers, body = _signed_request(chained, "claude-sonnet-4-5", False)
    assert _verify(FakeBedrock("AKIAFROMENVIRONMENT1", "secret-from-the-environment", region="eu-west-1"),
                   url, headers, body) is None

    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(GatewayError) as caught:
        _signed_request(provider(BEDROCK_ACCESS_KEY="", BEDROCK_ACCESS_KEY_SECRET="", BEDROCK_MODEL="m"),
                        "claude-sonnet-4-5", False)
    assert caught.value.status == 502 and "no AWS credentials" in caught.value.message


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("status, error_type, body, client_status, anthropic_type", [
    (400, "ValidationException", {"message": "bad"}, 400, "invalid_request_error"),
    (403, "AccessDeniedException", {"message": "no access"}, 403, "permission_error"),
    (403, "InvalidSignatureException", {"message": "bad signature"}, 403, "permission_error"),
    (403, "UnrecognizedClientException", {"message": "bad key"}, 403, "permission_error"),
    (404, "ResourceNotFoundException", {"message": "no model"}, 404, "not_found_error"),
    (408, "ModelTimeoutException", {"message": "slow"}, 504, "timeout_error"),
    (424, "ModelErrorException", {"message": "broke"}, 500, "api_error"),
    (424, "ModelErrorException", {"message": "busy", "originalStatusCode": 529}, 529, "overloaded_error"),
    (429, "ThrottlingException", {"message": "slow down"}, 429, "rate_limit_error"),
    (429, "ModelNotReadyException", {"message": "warming"}, 529, "overloaded_error"),
    (500, "InternalServerException", {"message": "oops"}, 500, "api_error"),
    (503, "ServiceUnavailableException", {"message": "busy"}, 529, "overloaded_error"),
    (418, None, {"Message": "odd"}, 418, "api_error"),
])
def test_http_errors_become_anthropic_errors(status, error_type, body, client_status, anthropic_type):
    headers = {"x-amzn-ErrorType": f"{error_type}:http://internal.amazon.com/coral/com.amazon.bedrock/"} if error_type else {}
    upstream = Upstream(status, **headers)
    got_status, got_body = provider().translate_response(upstream, json.dumps(body).encode())
    message = body.get("message") or body.get("Message")
    assert (got_status, json.loads(got_body)) == (
        client_status, {"type": "error", "error": {"type": anthropic_type, "message": f"Bedrock: {message}"}})


def test_error_without_a_json_body_and_the_key_id_masked():
    status, body = provider().translate_response(Upstream(403, x_amzn_ErrorType="AccessDeniedException"), b"<html>")
    assert (status, json.loads(body)["error"]["message"]) == (403, "Bedrock: AccessDeniedException")
    denied = json.dumps({"message": f"User with key {ACCESS_KEY} is not authorized"}).encode()
    _, body = provider().translate_response(Upstream(403, x_amzn_ErrorType="AccessDeniedException"), denied)
    assert ACCESS_KEY not in body.decode()


def test_success_passes_through_and_aws_headers_stay_behind():
    bedrock = provider()
    assert bedrock.translate_response(Upstream(200), b'{"id":"msg"}') == (200, b'{"id":"msg"}')
    streamed = Upstream(200, content_type="application/vnd.amazon.eventstream", x_amzn_RequestId="r-1",
                        x_amzn_bedrock_content_type="application/json")
    assert bedrock.response_headers(streamed) == [("Content-Type", "text/event-stream"), ("request-id", "r-1")]
    assert bedrock.is_stream(streamed) and isinstance(bedrock.stream_decoder(), EventStreamDecoder)
    assert bedrock.response_headers(Upstream(429, content_type="application/json")) == [("Content-Type", "application/json")]
    assert not bedrock.is_stream(Upstream(200, content_type="application/json"))
