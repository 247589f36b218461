"""Anthropic on AWS Bedrock, invisible to the client (issue 8): the official Anthropic SDK talks to
the gateway (real gunicorn, gevent workers), the gateway talks to a fake Bedrock that checks every
SigV4 signature and answers with binary event-stream frames built from the Anthropic fixtures.

Each fixture goes once through a Bedrock provider and once through a direct Anthropic provider of
the same gateway: the SDK must return the same thing, and the records must say the same, except
for the model (the Bedrock id) and the ``aws_bedrock`` metadata.
"""

from __future__ import annotations

import json

import anthropic
import httpx2 as httpx
import pytest
import requests

from bridge.masking import mask_secret
from tests.conftest import ANTHROPIC_KEY
from tests.fakebedrock import BAD_SIGNATURE, FakeBedrock
from tests.harness import wait_for_records
from tests.sdk_calls import call_anthropic, load_fixtures

ACCESS_KEY = "AKIAFAKEBEDROCK00001"
SECRET = "fAkE/bedrock+secret/0123456789abcdefghijk"
MODEL = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
SMALL_MODEL = "us.anthropic.claude-haiku-4-5-20251001-v1:0"
FIXTURES = load_fixtures("anthropic")
# Fixtures with an answer from the model (the HTTP error ones are Anthropic's own, not Bedrock's).
CASES = [(name, fixture, stream) for name, fixture in FIXTURES
         for stream, part in ((False, "blocking"), (True, "streaming"))
         if fixture.get(part) and fixture[part]["status"] == 200]
HELLO = {"model": "claude-sonnet-4-5", "max_tokens": 64}


@pytest.fixture(scope="module")
def bedrock():
    fake = FakeBedrock(ACCESS_KEY, SECRET, region="us-west-2", models=(MODEL, SMALL_MODEL)).start()
    yield fake
    fake.stop()


def _bedrock_env(index: int, name: str, fake: FakeBedrock, **overrides: str) -> dict[str, str]:
    prefix = f"CODER_AIBRIDGE_PROVIDER_{index}_"
    settings = {"TYPE": "anthropic", "NAME": name, "BEDROCK_BASE_URL": f"{fake.url}/", "BEDROCK_REGION": "us-west-2",
                "BEDROCK_ACCESS_KEY": ACCESS_KEY, "BEDROCK_ACCESS_KEY_SECRET": SECRET, "BEDROCK_MODEL": MODEL,
                "BEDROCK_SMALL_FAST_MODEL": SMALL_MODEL, "MAX_RETRIES": "0", **overrides}
    return {prefix + key: value for key, value in settings.items() if value}


@pytest.fixture(scope="module")
def gw(start_gateway, upstream, bedrock):
    env = {
        "CODER_AIBRIDGE_ENABLED": "true",
        "CODER_AIBRIDGE_PROVIDER_0_TYPE": "anthropic",
        "CODER_AIBRIDGE_PROVIDER_0_NAME": "direct",
        "CODER_AIBRIDGE_PROVIDER_0_KEY": ANTHROPIC_KEY,
        "CODER_AIBRIDGE_PROVIDER_0_BASE_URL": f"{upstream.url}/",
        **_bedrock_env(1, "bedrock", bedrock),
        **_bedrock_env(2, "bedrock-wrong-secret", bedrock, BEDROCK_ACCESS_KEY_SECRET=SECRET[:-1] + "X"),
        **_bedrock_env(3, "bedrock-one-model", bedrock, BEDROCK_SMALL_FAST_MODEL=""),
        **_bedrock_env(4, "bedrock-no-model", bedrock, BEDROCK_MODEL="", BEDROCK_SMALL_FAST_MODEL=""),
    }
    return start_gateway(env, workers=1)


class Client:
    """The Anthropic SDK pointed at one provider of the gateway, remembering the interception ids."""

    def __init__(self, gw, provider: str, token: str, **headers: str) -> None:
        self.ids: list[str] = []
        self.responses: list[httpx.Response] = []
        http = httpx.Client(event_hooks={"response": [self._seen]})
        self.sdk = anthropic.Anthropic(base_url=gw.base(provider), api_key=token, max_retries=0, timeout=30,
                                       default_headers=headers, http_client=http)

    def _seen(self, response: httpx.Response) -> None:
        self.responses.append(response)
        if "X-AIBridge-Interception-Id" in response.headers:
            self.ids.append(response.headers["X-AIBridge-Interception-Id"])

    def call(self, request: dict, stream: bool) -> dict:
        return call_anthropic(self.sdk, request, stream)


def _same_error(direct: tuple, through: tuple) -> None:
    """The same SDK exception and Anthropic error type (messages name the provider or come from AWS)."""
    assert through[0] == direct[0]
    assert through[2]["type"] == "error" and through[2]["error"]["type"] == direct[2]["error"]["type"]


@pytest.fixture(scope="module")
def runs(gw, bedrock, identities, database):
    """Every case once direct and once through Bedrock, with the records both left."""
    results = {}
    for name, fixture, stream in CASES:
        direct = Client(gw, "direct", identities.alice, **{"X-Fixture": name})
        through = Client(gw, "bedrock", identities.alice)
        results[(name, stream)] = (direct.call(fixture["request"], stream), direct.ids[-1],
                                   through.call(fixture["request"], stream), through.ids[-1], through.responses[-1])
    records = wait_for_records(database, [ids for result in results.values() for ids in (result[1], result[3])])
    return {key: (direct, records.get(direct_id), through, records.get(through_id), response)
            for key, (direct, direct_id, through, through_id, response) in results.items()}


@pytest.mark.parametrize("name, fixture, stream", [pytest.param(*case, id=f"{case[0]}-{'stream' if case[2] else 'blocking'}")
                                                   for case in CASES])
def test_sdk_gets_the_same_through_bedrock(name, fixture, stream, runs):
    direct, _, through, _, response = runs[(name, stream)]
    if "error" in direct:  # a stream that fails after the first byte (error event, or cut)
        assert through["events"] == direct["events"] and through["events"]
        _same_error(direct["error"], through["error"])
    else:
        assert through == direct
    # AWS's own headers do not reach the client; the content type is the Anthropic API's.
    assert response.headers["content-type"] == ("text/event-stream" if stream else "application/json")
    assert not [header for header in response.headers if header.lower().startswith("x-amz")]


@pytest.mark.parametrize("name, fixture, stream", [pytest.param(*case, id=f"{case[0]}-{'stream' if case[2] else 'blocking'}")
                                                   for case in CASES])
def test_records_match_the_direct_call(name, fixture, stream, runs, identities):
    _, direct, _, through, _ = runs[(name, stream)]
    assert direct is not None and through is not None, "an interception was not recorded"
    requested = fixture["request"]["model"]
    assert through["model"] == (SMALL_MODEL if "haiku" in requested else MODEL)
    assert (through["provider"], through["provider_name"]) == ("anthropic", "bedrock")
    metadata = json.loads(through["metadata"])
    assert metadata["aws_bedrock"] is True and metadata["requested_model"] == requested
    direct_metadata = json.loads(direct["metadata"])
    for key in ("status", "stop_reason", "streaming"):
        assert metadata.get(key) == direct_metadata.get(key), key
    assert ("error" in metadata) == ("error" in direct_metadata)
    assert through["initiator_id"] == identities.store.identity.get_user("alice")["id"]
    assert through["credential_kind"] == "centralized"
    for kind, fields in (("token_usages", ("input_tokens", "output_tokens", "cache_read_input_tokens",
                                           "cache_write_input_tokens", "provider_response_id", "metadata")),
                         ("user_prompts", ("prompt",)),
                         ("tool_usages", ("provider_tool_call_id", "tool", "input")),
                         ("model_thoughts", ("content", "metadata"))):
        assert [{f: row[f] for f in fields} for row in through[kind]] == \
               [{f: row[f] for f in fields} for row in direct[kind]], kind
    if fixture["expect"]["usage"]:
        assert through["token_usages"], "no usage recorded"
    if fixture["expect"]["tool_calls"]:
        assert len(through["tool_usages"]) == len(fixture["expect"]["tool_calls"])


def test_what_bedrock_receives(gw, bedrock, identities):
    """The beta API (``?beta=true``) with first-party headers and body fields: Bedrock gets a signed
    InvokeModel call with only what it accepts, and none of the client's headers."""
    fixture = dict(FIXTURES)["anthropic/thinking"]
    client = Client(gw, "bedrock", identities.alice, **{"X-Fixture": "anthropic/thinking"})
    before = len(bedrock.requests)
    message = client.sdk.beta.messages.create(
        **fixture["request"], metadata={"user_id": "user-42"}, service_tier="auto",
        betas=["oauth-2025-04-20", "interleaved-thinking-2025-05-14", "claude-code-20250219",
               "files-api-2025-04-14", "interleaved-thinking-2025-05-14"])
    assert message.content[-1].text == fixture["blocking"]["body"]["content"][-1]["text"]
    (received,) = bedrock.requests[before:]
    assert received.path == f"/model/{MODEL}/invoke"
    assert received.json == {**{k: v for k, v in fixture["request"].items() if k != "model"},
                             "anthropic_version": "bedrock-2023-05-31",
                             "anthropic_beta": ["interleaved-thinking-2025-05-14"]}
    assert received.headers["authorization"].startswith(f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/")
    assert received.headers["accept"] == "application/json"
    assert set(received.headers) <= {"host", "content-type", "accept", "accept-encoding", "x-amz-date",
                                     "authorization", "content-length", "user-agent"}
    assert "anthropic" not in received.headers["user-agent"].lower()
    assert identities.alice not in str(received.headers)


def test_streaming_call_goes_to_invoke_with_response_stream(gw, bedrock, identities):
    fixture = dict(FIXTURES)["anthropic/simple_text"]
    before = len(bedrock.requests)
    result = Client(gw, "bedrock", identities.alice).call(fixture["request"], True)
    assert result["events"][-1]["type"] == "message_stop"
    (received,) = bedrock.requests[before:]
    assert received.path == f"/model/{MODEL}/invoke-with-response-stream"
    assert received.headers["accept"] == "application/vnd.amazon.eventstream"
    assert "stream" not in received.json


@pytest.mark.parametrize("provider, requested, used", [
    ("bedrock", "claude-haiku-4-5", SMALL_MODEL),
    ("bedrock", "claude-3-5-HAIKU-latest", SMALL_MODEL),
    ("bedrock", "claude-opus-4-1", MODEL),
    ("bedrock-one-model", "claude-haiku-4-5", MODEL),  # no small fast model: the one model serves all
    ("bedrock-no-model", SMALL_MODEL, SMALL_MODEL),   # no model configured: the client's goes to Bedrock
])
def test_model_mapping(provider, requested, used, gw, bedrock, identities, database):
    fixture = dict(FIXTURES)["anthropic/simple_text"]
    client = Client(gw, provider, identities.alice)
    before = len(bedrock.requests)
    assert "message" in client.call({**fixture["request"], "model": requested}, False)
    assert bedrock.requests[before].path == f"/model/{used}/invoke"
    record = wait_for_records(database, client.ids)[client.ids[0]]
    assert record["model"] == used and json.loads(record["metadata"])["requested_model"] == requested


@pytest.mark.parametrize("stream", [False, True], ids=["blocking", "streaming"])
@pytest.mark.parametrize("provider, prompt, status, error_type, exception", [
    ("bedrock", "fakebedrock:throttle", 429, "rate_limit_error", "RateLimitError"),
    ("bedrock", "fakebedrock:validation", 400, "invalid_request_error", "BadRequestError"),
    ("bedrock", "fakebedrock:model-error", 529, "overloaded_error", "OverloadedError"),
    ("bedrock-wrong-secret", "Hello", 403, "permission_error", "PermissionDeniedError"),
])
def test_errors_before_the_first_byte(provider, prompt, status, error_type, exception, stream, gw, bedrock,
                                      identities, database):
    client = Client(gw, provider, identities.alice)
    result = client.call({**HELLO, "messages": [{"role": "user", "content": prompt}]}, stream)
    name, got_status, body = result["error"]
    assert (name, got_status, body["type"], body["error"]["type"]) == (exception, status, "error", error_type)
    assert body["error"]["message"].startswith("Bedrock: ")
    if provider == "bedrock-wrong-secret":
        assert body["error"]["message"] == f"Bedrock: {BAD_SIGNATURE}"
        assert SECRET not in json.dumps(body)
    response = client.responses[-1]
    assert response.headers["content-type"] == "application/json"
    assert not [header for header in response.headers if header.lower().startswith("x-amz")]
    record = wait_for_records(database, client.ids)[client.ids[0]]
    assert json.loads(record["metadata"])["status"] == status and json.loads(record["metadata"])["aws_bedrock"] is True


@pytest.mark.parametrize("aws_exception, error_type", [
    ("throttlingException", "rate_limit_error"),
    ("validationException", "invalid_request_error"),
    ("modelStreamErrorException", "api_error"),
    ("internalServerException", "api_error"),
    ("serviceUnavailableException", "overloaded_error"),
    ("modelTimeoutException", "timeout_error"),
])
def test_exception_frames_mid_stream(aws_exception, error_type, gw, identities, database):
    client = Client(gw, "bedrock", identities.alice)
    result = client.call({**HELLO, "messages": [{"role": "user", "content": f"fakebedrock:exception {aws_exception}"}]},
                         True)
    assert [event["type"] for event in result["events"]] == ["message_start", "content_block_start"]
    name, _, body = result["error"]
    assert name == "APIStatusError"
    assert body == {"type": "error", "error": {"type": error_type, "message": "injected by fakebedrock"}}
    record = wait_for_records(database, client.ids)[client.ids[0]]
    assert record["token_usages"] and record["token_usages"][0]["input_tokens"] == 14  # seen before the error


def test_passthrough_routes_are_not_available_on_bedrock(gw, bedrock, identities):
    client = Client(gw, "bedrock", identities.alice)
    before = len(bedrock.requests)
    with pytest.raises(anthropic.NotFoundError) as listed:
        client.sdk.models.list()
    with pytest.raises(anthropic.NotFoundError) as counted:
        client.sdk.messages.count_tokens(model="claude-sonnet-4-5", messages=[{"role": "user", "content": "hi"}])
    for caught in (listed, counted):
        assert caught.value.body["error"]["type"] == "not_found_error"
        assert "AWS Bedrock" in caught.value.body["error"]["message"]
    assert len(bedrock.requests) == before
    # the gateway token is still checked first
    assert requests.get(f"{gw.base('bedrock')}/v1/models", headers={"X-Api-Key": "nope"}, timeout=10).status_code == 401


def test_bedrock_credentials_never_reach_the_client_or_the_log(gw, identities):
    result = Client(gw, "bedrock-wrong-secret", identities.alice).call(dict(FIXTURES)["anthropic/simple_text"]["request"], True)
    assert result["error"][1] == 403
    log = gw.log()
    assert SECRET not in log and SECRET[:-1] + "X" not in log and ACCESS_KEY not in log
    assert mask_secret(SECRET) not in json.dumps(result["error"][2])


@pytest.mark.parametrize("stream", [False, True], ids=["blocking", "stream"])
def test_a_bedrock_call_is_priced_as_its_anthropic_model(stream, runs):
    """SPEC §11: the Bedrock id (us.anthropic.claude-sonnet-4-5-...-v1:0) at Anthropic's Claude Sonnet 4.5
    prices: input $3, cache read $0.30, 5-minute cache write $3.75, 1-hour write $6, output $15 per MTok."""
    _, direct, _, through, _ = runs[("anthropic/cache_write_tiers", stream)]
    assert through["model"] == MODEL
    expected = (5 * 3 + 8000 * 0.30 + 1000 * 3.75 + 2000 * 6 + 120 * 15) / 1e6
    assert [usage["cost_usd"] for usage in through["token_usages"]] == [pytest.approx(expected)]
    assert [usage["cost_usd"] for usage in direct["token_usages"]] == [pytest.approx(expected)]
