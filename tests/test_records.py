"""Every intercepted call leaves the complete audit record (SPEC §6), written by the gateway under
real gunicorn workers and read back from the SQLite file."""

from __future__ import annotations

import anthropic
import openai
import orjson
import pytest

from bridge.masking import mask_secret
from tests.conftest import ANTHROPIC_KEY, OPENAI_KEY
from tests.harness import wait_for_records
from tests.sdk_calls import _split_kwargs, anthropic_client, load_fixtures, openai_client

CASES = [(name, fixture, stream) for name, fixture in
         load_fixtures("anthropic") + load_fixtures("openai_chat") + load_fixtures("openai_responses")
         for stream, part in ((False, "blocking"), (True, "streaming")) if fixture.get(part)]


#: Streams that end in an error event the SDK raises on: Anthropic's ``error`` event, an OpenAI chat
#: chunk carrying ``error`` (the upstream's, or the gateway's own when the upstream broke off). A
#: Responses stream's ``error`` or ``response.failed`` event is yielded like any other event.
RAISED_MID_STREAM = {"anthropic/error_midstream", "anthropic/cut_stream",
                     "openai_chat/error_midstream", "openai_chat/cut_stream"}


def _expected_error(name: str, part: dict, stream: bool) -> type[Exception] | None:
    """What the SDK raises for this fixture (the HTTP error, or the error event ending a stream), if anything."""
    sdk = anthropic if name.startswith("anthropic/") else openai
    if part["status"] != 200:
        return sdk.APIStatusError
    if stream and name in RAISED_MID_STREAM:
        return sdk.APIError
    return None


def _call(gateway, identities, name: str, fixture: dict, stream: bool) -> str:
    """Make the call with the SDK as a user would; return the interception id from the response.
    The SDK must raise exactly when the fixture is an error (and what it raises for it)."""
    if name.startswith("anthropic/"):
        client = anthropic_client(gateway.base("anthropic"), identities.alice, name)
        create = client.messages.with_raw_response.create
        kwargs = _split_kwargs(client.messages.create, fixture["request"])
    elif name.startswith("openai_responses/"):
        client = openai_client(f"{gateway.base('openai')}/v1", identities.alice, name)
        create = client.responses.with_raw_response.create
        kwargs = _split_kwargs(client.responses.create, fixture["request"])
    else:
        client = openai_client(f"{gateway.base('openai')}/v1", identities.alice, name)
        create = client.chat.completions.with_raw_response.create
        kwargs = _split_kwargs(client.chat.completions.create, fixture["request"])
    part = fixture["streaming" if stream else "blocking"]
    expected = _expected_error(name, part, stream)
    if part["status"] != 200:  # an upstream HTTP error: the SDK raises, the headers still tell the id
        with pytest.raises(expected) as raised:
            create(**kwargs, stream=stream)
        assert raised.value.status_code == part["status"]
        return raised.value.response.headers["X-AIBridge-Interception-Id"]
    raw = create(**kwargs, stream=stream)
    if expected is None:
        parsed = raw.parse()
        if stream:
            assert list(parsed)
    else:  # the stream ends in an error event: the SDK raises after what it got
        with pytest.raises(expected) as raised:
            list(raw.parse())
        # never a broken connection: a cut upstream reaches the client as an error event
        assert not isinstance(raised.value, (anthropic.APIConnectionError, openai.APIConnectionError)), raised.value
    return raw.headers["X-AIBridge-Interception-Id"]


@pytest.fixture(scope="module")
def recorded(gateway, identities, database):
    ids = {(name, stream): _call(gateway, identities, name, fixture, stream) for name, fixture, stream in CASES}
    records = wait_for_records(database, list(ids.values()))
    return {key: records.get(interception_id) for key, interception_id in ids.items()}


@pytest.mark.parametrize("name, fixture, stream", [pytest.param(*case, id=f"{case[0]}-{'stream' if case[2] else 'blocking'}")
                                                   for case in CASES])
def test_call_is_recorded_as_expected(name, fixture, stream, recorded, identities):
    record = recorded[(name, stream)]
    assert record is not None, "the interception was not recorded"
    anthropic_api = name.startswith("anthropic/")
    alice = identities.store.identity.get_user("alice")
    assert record["initiator_id"] == alice["id"]
    assert record["provider"] == ("anthropic" if anthropic_api else "openai")
    assert record["provider_name"] == record["provider"]
    assert record["model"] == fixture["request"]["model"]
    assert record["client"] == ("anthropic-python" if anthropic_api else "openai-python")
    assert record["user_agent"]
    assert record["credential_kind"] == "centralized"
    assert record["credential_hint"] == mask_secret(ANTHROPIC_KEY if anthropic_api else OPENAI_KEY)
    assert record["started_at"] <= record["ended_at"]

    part = fixture["streaming" if stream else "blocking"]
    expect = fixture["expect"] if part["status"] == 200 else {"usage": None, "tool_calls": [], "thoughts": []}
    usages = record["token_usages"]
    if expect["usage"] is None:
        assert usages == []
    else:
        assert len(usages) == 1
        usage = usages[0]
        for figure in ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_write_input_tokens"):
            assert usage[figure] == expect["usage"][figure], figure
        assert orjson.loads(usage["metadata"]) == expect["usage"]["metadata"]
        assert usage["provider_response_id"]

    if "correlating_tool_call_id" in fixture["expect"]:  # the Responses fixtures say which call a turn answers
        assert record["correlating_tool_call_id"] == fixture["expect"]["correlating_tool_call_id"]
    prompts = [row["prompt"] for row in record["user_prompts"]]
    assert prompts == ([] if fixture["expect"]["prompt"] is None else [fixture["expect"]["prompt"]])

    calls = [(row["provider_tool_call_id"], row["tool"], row["input"]) for row in record["tool_usages"]]
    expected_calls = [(call["id"], call["name"], orjson.dumps(call["input"]).decode() if anthropic_api else call["input"])
                      for call in expect["tool_calls"]]
    if part.get("abort"):  # a cut stream keeps what was seen: a prefix of the calls
        assert [c[:2] for c in calls] == [c[:2] for c in expected_calls][:len(calls)]
    else:
        assert calls == expected_calls
    assert all(row["injected"] in (0, False) for row in record["tool_usages"])

    thoughts = [(row["content"], orjson.loads(row["metadata"])["source"]) for row in record["model_thoughts"]]
    if not part.get("abort"):
        assert thoughts == [(t["content"], t["source"]) for t in expect["thoughts"]]


def test_byok_call_is_recorded_with_its_masked_key(gateway, identities, database):
    own_key = "sk-own-key-of-alice-0123456789"
    client = openai_client(f"{gateway.base('openai')}/v1", own_key, "openai_chat/simple_text",
                           **{"X-Coder-AI-Governance-Token": identities.alice})
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    interception_id = raw.headers["X-AIBridge-Interception-Id"]
    record = wait_for_records(database, [interception_id])[interception_id]
    assert record["credential_kind"] == "byok"
    assert record["credential_hint"] == mask_secret(own_key)
    assert own_key not in orjson.dumps(record).decode()


def test_client_and_session_come_from_the_request_headers(gateway, identities, database):
    client = anthropic_client(gateway.base("anthropic"), identities.bob, "anthropic/simple_text",
                              **{"User-Agent": "claude-cli/2.1.332 (external, sdk-cli)", "X-Claude-Code-Session-Id": "sess-42"})
    raw = client.messages.with_raw_response.create(model="claude-haiku-4-5", max_tokens=10,
                                                   messages=[{"role": "user", "content": "hi"}])
    interception_id = raw.headers["X-AIBridge-Interception-Id"]
    record = wait_for_records(database, [interception_id])[interception_id]
    assert (record["client"], record["client_session_id"]) == ("Claude Code", "sess-42")
    assert record["initiator_id"] == identities.store.identity.get_user("bob")["id"]


def test_tool_result_turn_links_to_the_call_it_answers(gateway, identities, database):
    name = "anthropic/tool_result"
    fixture = dict(load_fixtures("anthropic"))[name]
    interception_id = _call(gateway, identities, name, fixture, True)
    record = wait_for_records(database, [interception_id])[interception_id]
    last = fixture["request"]["messages"][-1]["content"]
    expected = [part["tool_use_id"] for part in last if part.get("type") == "tool_result"][-1]
    assert record["correlating_tool_call_id"] == expected
    assert record["user_prompts"] == []


def test_secrets_pasted_into_a_conversation_are_masked_in_the_record(gateway, identities, database):
    """A user who pastes their gateway token (or the provider key) into a prompt does not leave it in
    the audit trail, the API or the logs."""
    client = anthropic_client(gateway.base("anthropic"), identities.alice, "anthropic/simple_text")
    prompt = f"my token is {identities.alice} and the key {ANTHROPIC_KEY}, keep them safe"
    raw = client.messages.with_raw_response.create(model="claude-haiku-4-5", max_tokens=10,
                                                   messages=[{"role": "user", "content": prompt}])
    interception_id = raw.headers["X-AIBridge-Interception-Id"]
    record = wait_for_records(database, [interception_id])[interception_id]
    stored = record["user_prompts"][0]["prompt"]
    assert stored == prompt.replace(identities.alice, mask_secret(identities.alice)).replace(ANTHROPIC_KEY, mask_secret(ANTHROPIC_KEY))
    assert identities.alice not in orjson.dumps(record).decode() and ANTHROPIC_KEY not in stored
