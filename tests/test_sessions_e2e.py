"""The real Claude Code CLI runs a tool-using exchange through the gateway; the sessions API (SPEC §9)
then shows that run as one session with one thread.

The exchange is recorded traffic: ``anthropic/tool_use`` (the model asks for ``get_weather``), Claude
Code answers with a tool_result (it has no such tool, so the result is its error), and
``anthropic/tool_result`` (the final answer). Claude Code sends one ``X-Fixture`` header on every
request; the upstream here picks the fixture from the conversation: the tool_use scenario until the
last message carries a tool_result. Offline, on 127.0.0.1 only; every run bounded (see test_clients_e2e).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
import requests

from tests.conftest import provider_env
from tests.fakeupstream import FakeUpstream, RecordedRequest
from tests.harness import wait_for_session
from tests.test_clients_e2e import FIXTURES, _credentials, _path, claude, run_claude  # noqa: F401 (claude: a fixture)

SCRIPT = "script/tool_use_then_answer"
PROMPT = FIXTURES["anthropic/tool_use"]["expect"]["prompt"]
TOOL_CALL = FIXTURES["anthropic/tool_use"]["expect"]["tool_calls"][0]
ANSWER = FIXTURES["anthropic/tool_result"]["blocking"]["body"]["content"][0]["text"]
API_TIMEOUT = 10.0


def _answers_a_tool_call(body: object) -> bool:
    """The conversation's last user message carries a tool_result block (a client's answer to a tool call)."""
    messages = body.get("messages") if isinstance(body, dict) else None
    users = [m for m in messages or () if isinstance(m, dict) and m.get("role") == "user"]
    content = users[-1].get("content") if users else None
    return isinstance(content, list) and any(isinstance(p, dict) and p.get("type") == "tool_result" for p in content)


class ToolLoopUpstream(FakeUpstream):
    """The fake upstream, answering ``X-Fixture: SCRIPT`` as a model in a tool loop would: the tool_use
    scenario first, the tool_result scenario (the final answer) once the tool's result came back."""

    def _record(self, req: RecordedRequest) -> None:
        # The handler records a request before it reads X-Fixture from the same headers.
        if req.headers.get("x-fixture") == SCRIPT:
            answered = _answers_a_tool_call(req.json)
            req.headers["x-fixture"] = "anthropic/tool_result" if answered else "anthropic/tool_use"
        super()._record(req)


@pytest.fixture(scope="module")
def tool_loop_upstream() -> Iterator[ToolLoopUpstream]:
    fake = ToolLoopUpstream().start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def tool_loop_gateway(start_gateway, tool_loop_upstream):
    return start_gateway(provider_env(tool_loop_upstream))


def _get(gateway, token: str, path: str, **params) -> requests.Response:
    return requests.get(f"{gateway.url}/api/v2/aibridge/{path}", params=params,
                        headers={"Authorization": f"Bearer {token}"}, timeout=API_TIMEOUT)


def _api(gateway, token: str, path: str, **params) -> dict:
    response = _get(gateway, token, path, **params)
    assert response.status_code == 200, f"GET {path} {params}: {response.status_code} {response.text[:500]}"
    return response.json()


def test_a_claude_code_tool_exchange_is_one_session_with_one_thread(claude, tmp_path: Path, tool_loop_gateway,
                                                                   tool_loop_upstream, identities, database):
    run = run_claude(claude, tmp_path, tool_loop_upstream, tool_loop_gateway.base("anthropic"),
                     _credentials("api_key", identities.alice), SCRIPT, prompt=PROMPT)
    assert run.returncode == 0, run.describe()
    assert ANSWER in run.stdout, run.describe()
    # The exchange went as scripted: the prompt, then Claude Code's answer to the model's tool call.
    messages = [r for r in run.requests if _path(r) == "/v1/messages"]
    assert [m.headers["x-fixture"] for m in messages] == ["anthropic/tool_use", "anthropic/tool_result"], run.describe()
    answer = [m for m in messages[1].json["messages"] if m["role"] == "user"][-1]["content"]
    assert [p["tool_use_id"] for p in answer if p.get("type") == "tool_result"] == [TOOL_CALL["id"]], answer
    session_ids = {m.headers["x-claude-code-session-id"] for m in messages}
    assert len(session_ids) == 1, session_ids  # the same session id on every turn
    [session_id] = session_ids
    records = wait_for_session(database, session_id, len(messages))
    assert len(records) == len(messages), records
    first, second = records

    alice = identities.store.identity.get_user("alice")
    listed = _api(tool_loop_gateway, identities.alice, "sessions", q=f"session_id:{session_id}")
    assert listed["count"] == 1 and len(listed["sessions"]) == 1, listed
    [summary] = listed["sessions"]
    usage = [FIXTURES[f"anthropic/{name}"]["expect"]["usage"] for name in ("tool_use", "tool_result")]
    expected = {
        "id": session_id,
        "initiator": {"id": alice["id"], "username": "alice"},
        "client": "Claude Code",
        "providers": ["anthropic"],
        "models": [first["model"]],
        "started_at": first["started_at"],
        "ended_at": second["ended_at"],
        "last_active_at": second["ended_at"],
        "last_prompt": PROMPT,
        "interception_count": 2,
        "thread_count": 1,
        "token_usage": {name: sum(u[figure] for u in usage) for name, figure in (
            ("input", "input_tokens"), ("output", "output_tokens"), ("cache_read", "cache_read_input_tokens"),
            ("cache_write", "cache_write_input_tokens"))},
        # Claude Sonnet 4.5's published prices, USD per million tokens: input 3, output 15.
        "cost_usd": pytest.approx(((412 + 531) * 3 + (84 + 19) * 15) / 1e6, rel=1e-9),  # $0.004374
    }
    assert {key: summary.get(key) for key in expected} == expected, summary
    # The session is alice's: bob (not an admin) cannot open it.
    assert _get(tool_loop_gateway, identities.bob, f"sessions/{session_id}").status_code == 404

    detail = _api(tool_loop_gateway, identities.alice, f"sessions/{session_id}")
    assert {key: detail.get(key) for key in expected} == expected, detail
    [thread] = detail["threads"]
    assert thread["id"] == first["id"]
    assert thread["prompt"] == PROMPT
    assert (thread["started_at"], thread["ended_at"]) == (first["started_at"], second["ended_at"])
    assert thread["token_usage"] == expected["token_usage"] and thread["cost_usd"] == expected["cost_usd"]
    # Each interception's cost: its own token usage's.
    assert [i["cost_usd"] for i in thread["interceptions"]] == [pytest.approx((412 * 3 + 84 * 15) / 1e6, rel=1e-9),
                                                               pytest.approx((531 * 3 + 19 * 15) / 1e6, rel=1e-9)]
    assert [i["id"] for i in thread["interceptions"]] == [first["id"], second["id"]]  # oldest first
    turn, answered = thread["interceptions"]
    calls = [(call["provider_tool_call_id"], call["tool"]) for call in turn["tool_usages"]]
    assert calls == [(TOOL_CALL["id"], TOOL_CALL["name"])], turn
    assert answered["correlating_tool_call_id"] == TOOL_CALL["id"]
    for interception in thread["interceptions"]:
        assert (interception["session_id"], interception["thread_id"]) == (session_id, first["id"]), interception
        by_id = _api(tool_loop_gateway, identities.alice, f"interceptions/{interception['id']}")
        assert (by_id["session_id"], by_id["thread_id"]) == (session_id, first["id"]), by_id
