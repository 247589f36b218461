"""The real Claude Code CLI through a gateway provider that talks to AWS Bedrock upstream (issue 8:
"Anthropic on AWS Bedrock, invisible to the client"), offline, on 127.0.0.1 only.

Claude Code is run as in test_clients_e2e.py (same command, environment and bounds) once straight at the
Anthropic fake upstream and once at the gateway's Bedrock provider, with the same fixture: it must
print the same. The gateway forwards none of the client's headers to Bedrock, and Claude Code's
bodies equal no fixture's request, so the fake Bedrock answers by model id (``fixture_by_model``):
each provider here has its own Bedrock model, answered from one fixture.
"""

from __future__ import annotations

import json
import re
import uuid

import pytest

from tests.conftest import ANTHROPIC_KEY
from tests.fakebedrock import ANTHROPIC_VERSION, FakeBedrock
from tests.harness import wait_for_session
from tests.test_clients_e2e import (  # noqa: F401  (``claude`` is the session fixture that finds Claude Code)
    ANSWER, FIXTURES, PROMPT, ClaudeRun, claude, run_claude)

ACCESS_KEY = "AKIAFAKEBEDROCKE2E001"
SECRET = "fAkE/bedrock+e2e+secret/0123456789abcdefgh"
REGION = "eu-central-1"
# One Bedrock model per fixture: the fake Bedrock answers any body sent to it from that fixture.
MODELS = {"anthropic/simple_text": "eu.anthropic.claude-sonnet-4-5-20250929-v1:0",
          "anthropic/tool_use": "anthropic.claude-sonnet-4-5-20250929-v1:0"}
PROVIDERS = {"anthropic/simple_text": "claude-bedrock-text", "anthropic/tool_use": "claude-bedrock-tools"}
EXTRA_ARGS = {"anthropic/simple_text": (), "anthropic/tool_use": ("--max-turns", "2")}
# Everything the gateway may send Bedrock: SigV4's and HTTP's own headers, nothing of the client's.
BEDROCK_HEADERS = {"host", "content-type", "accept", "accept-encoding", "x-amz-date", "authorization",
                   "content-length", "user-agent"}


@pytest.fixture(scope="module")
def bedrock():
    fake = FakeBedrock(ACCESS_KEY, SECRET, region=REGION, models=tuple(MODELS.values()),
                       fixture_by_model={model: fixture for fixture, model in MODELS.items()}).start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def gw(start_gateway, bedrock):
    env = {"CODER_AIBRIDGE_ENABLED": "true"}
    for index, (fixture, name) in enumerate(PROVIDERS.items()):
        prefix = f"CODER_AIBRIDGE_PROVIDER_{index}_"
        # No small fast model: the one Bedrock model serves every request of the provider.
        env.update({prefix + "TYPE": "anthropic", prefix + "NAME": name, prefix + "BEDROCK_BASE_URL": f"{bedrock.url}/",
                    prefix + "BEDROCK_REGION": REGION, prefix + "BEDROCK_ACCESS_KEY": ACCESS_KEY,
                    prefix + "BEDROCK_ACCESS_KEY_SECRET": SECRET, prefix + "BEDROCK_MODEL": MODELS[fixture]})
    return start_gateway(env)


@pytest.fixture(scope="module")
def runs(claude, tmp_path_factory, gw, upstream, bedrock, identities):
    """Each fixture once with Claude Code talking to the Anthropic fake itself, once through the
    gateway's Bedrock provider: {fixture: (direct run, its session id, Bedrock run, its session id)}.
    A Bedrock run's ``requests`` are what the fake Bedrock received."""
    tmp_path = tmp_path_factory.mktemp("claude-bedrock")
    results = {}
    for fixture, provider in PROVIDERS.items():
        direct_session, bedrock_session = str(uuid.uuid4()), str(uuid.uuid4())
        direct = run_claude(claude, tmp_path, upstream, upstream.url, {"ANTHROPIC_API_KEY": ANTHROPIC_KEY}, fixture,
                            *EXTRA_ARGS[fixture], "--session-id", direct_session)
        through = run_claude(claude, tmp_path, bedrock, gw.base(provider), {"ANTHROPIC_API_KEY": identities.alice},
                             fixture, *EXTRA_ARGS[fixture], "--session-id", bedrock_session)
        results[fixture] = (direct, direct_session, through, bedrock_session)
    return results


def _shown(run: ClaudeRun) -> tuple[int, str]:
    """What the user sees: exit code and output (the local port aside)."""
    return run.returncode, re.sub(r"127\.0\.0\.1:\d+", "HOST", run.output).strip()


def _messages(run: ClaudeRun) -> list:
    return [request for request in run.requests if request.path.split("?", 1)[0] == "/v1/messages"]


@pytest.mark.parametrize("fixture", list(PROVIDERS))
def test_claude_code_prints_the_same_through_bedrock_as_direct(fixture, runs):
    direct, _, through, _ = runs[fixture]
    assert _messages(direct), f"Claude Code did not reach the Anthropic fake:\n{direct.describe()}"
    assert through.requests, f"the fake Bedrock received nothing:\n{through.describe()}"
    assert _shown(through) == _shown(direct), f"direct:\n{direct.describe()}\n\nthrough Bedrock:\n{through.describe()}"
    if fixture == "anthropic/simple_text":
        assert through.returncode == 0 and ANSWER in through.stdout, through.describe()
    else:  # the model asked for a tool Claude Code does not have, twice; --max-turns 2 stops it
        assert through.returncode != 0 and "max turns" in through.output.lower(), through.describe()
        assert len(through.requests) == len(_messages(direct)) == 2, through.describe()


@pytest.mark.parametrize("fixture", list(PROVIDERS))
def test_bedrock_gets_signed_invoke_calls_without_client_headers(fixture, runs, bedrock, identities):
    direct, _, through, _ = runs[fixture]
    claude_request = _messages(direct)[0]
    assert "anthropic-version" in claude_request.headers and "x-claude-code-session-id" in claude_request.headers
    for received in through.requests:
        assert received.method == "POST"
        assert received.path == f"/model/{MODELS[fixture]}/invoke-with-response-stream"
        # SigV4 with the configured key pair, for Bedrock in the configured region (the fake checks it
        # again here: it refuses anything else with 403, which Claude Code would have shown).
        assert received.headers["authorization"].startswith(
            f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/{received.headers['x-amz-date'][:8]}/{REGION}/bedrock/")
        assert bedrock.signature_error(received.method, received.path, received.headers, received.body) is None
        # None of Claude Code's own headers: no credentials, no anthropic-*, no X-Fixture, no session id.
        assert set(received.headers) <= BEDROCK_HEADERS, sorted(set(received.headers) - BEDROCK_HEADERS)
        assert "x-api-key" not in received.headers
        assert not [name for name in received.headers if name.startswith(("anthropic", "x-stainless", "x-claude"))]
        assert not received.headers["user-agent"].startswith("claude-cli/")
        assert received.headers["accept"] == "application/vnd.amazon.eventstream"
        assert identities.alice not in str(received.headers) and identities.alice.encode() not in received.body
        assert SECRET not in str(received.headers)
        # The body is Claude Code's request in Bedrock's form.
        body = received.json
        assert body["anthropic_version"] == ANTHROPIC_VERSION
        assert "model" not in body and "stream" not in body and "metadata" not in body
        assert [tool["name"] for tool in body["tools"]] == [tool["name"] for tool in claude_request.json["tools"]]
    users = [m for m in through.requests[0].json["messages"] if m["role"] == "user"]
    assert users[-1]["content"][-1] == {"type": "text", "text": PROMPT}


@pytest.mark.parametrize("fixture", list(PROVIDERS))
def test_claude_code_calls_through_bedrock_are_recorded(fixture, runs, database, identities):
    direct, direct_session, through, session = runs[fixture]
    assert _messages(direct)[0].headers["x-claude-code-session-id"] == direct_session  # --session-id is what it sends
    records = wait_for_session(database, session, len(through.requests))
    assert len(records) == len(through.requests), f"{len(through.requests)} interception(s) expected: {records}"
    alice = identities.store.identity.get_user("alice")
    requested = _messages(direct)[0].json["model"]  # Claude Code's own model name, the same in both runs
    for record in records:
        assert record["model"] == MODELS[fixture]
        assert (record["provider"], record["provider_name"]) == ("anthropic", PROVIDERS[fixture])
        metadata = json.loads(record["metadata"])
        assert metadata["aws_bedrock"] is True and metadata["requested_model"] == requested
        assert metadata["streaming"] is True and metadata["status"] == 200
        assert record["client"] == "Claude Code"
        assert record["user_agent"].startswith("claude-cli/")
        assert record["initiator_id"] == alice["id"] and record["credential_kind"] == "centralized"
        assert identities.alice not in json.dumps(record) and SECRET not in json.dumps(record)
        assert ACCESS_KEY not in json.dumps(record)
    first = records[0]
    assert [p["prompt"] for p in first["user_prompts"]] == [PROMPT]
    expected = FIXTURES[fixture]["expect"]
    assert [(u["input_tokens"], u["output_tokens"]) for u in first["token_usages"]] == \
        [(expected["usage"]["input_tokens"], expected["usage"]["output_tokens"])]
    if expected["tool_calls"]:
        tool_ids = re.findall(r'"id":"(toolu_[A-Za-z0-9]+)"', "".join(FIXTURES[fixture]["streaming"]["events"]))
        assert [u["provider_tool_call_id"] for u in first["tool_usages"]] == tool_ids
