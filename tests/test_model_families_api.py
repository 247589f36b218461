"""Model families in the API (issue 18): ``models?group=family``, the ``model_family:`` filter of the
interceptions and sessions lists, and ``usage?by=model_family``, over a store holding a Bedrock id, an
Anthropic alias and a dated snapshot of one model, and an OpenAI model with its snapshot."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from bridge.app import create_app
from bridge.config import load_settings
from bridge.model_names import model_family
from bridge.store import RecordBatch, open_store
from bridge.timestamps import format_timestamp

SONNET_BEDROCK = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
#: (user, provider, provider_name, model, client session id)
RECORDS = [
    ("alice", "anthropic", "anthropic", "claude-sonnet-4-5", "s-a"),
    ("alice", "anthropic", "bedrock", SONNET_BEDROCK, "s-b"),
    ("bob", "anthropic", "anthropic", "claude-sonnet-4-5-20250929", "s-c"),
    ("bob", "anthropic", "bedrock", "anthropic.claude-3-5-haiku-20241022-v1:0", "s-c"),
    ("bob", "openai", "openai", "gpt-4o", "s-d"),
    ("alice", "openai", "openai", "gpt-4o-2024-08-06", "s-e"),
    ("alice", "anthropic", "bedrock", SONNET_BEDROCK, "s-e"),
]
#: Each record's cost as priced when recorded (binary fractions: exact sums); the Haiku one has no price.
COSTS = [0.125, 0.25, 0.125, None, 2.0, 1.5, 0.5]


@pytest.fixture(scope="module")
def client(tmp_path_factory) -> Any:
    path = tmp_path_factory.mktemp("families") / "families.db"
    now = datetime.now(timezone.utc).replace(microsecond=0)
    store = open_store(str(path), migrate=True)
    try:
        users = {name: store.identity.create_user(name, is_admin=name == "alice") for name in ("alice", "bob")}
        tokens = {name: store.identity.create_token(name)[0] for name in users}
        batch: dict[str, list[dict]] = {"interceptions": [], "token_usages": [], "user_prompts": [], "tool_usages": [],
                                        "model_thoughts": []}
        for i, (user, provider, provider_name, model, session) in enumerate(RECORDS):
            started = now - timedelta(hours=i * 5 + 1)
            interception_id = str(uuid.UUID(int=i + 1, version=4))
            batch["interceptions"].append({
                "id": interception_id, "initiator_id": users[user]["id"], "provider": provider,
                "provider_name": provider_name, "model": model, "client": "Claude Code", "client_session_id": session,
                "user_agent": "agent/1", "credential_kind": "centralized", "credential_hint": None,
                "correlating_tool_call_id": None, "started_at": format_timestamp(started),
                "ended_at": format_timestamp(started + timedelta(seconds=2)), "metadata": {}})
            batch["token_usages"].append({
                "id": f"tu-{i}", "interception_id": interception_id, "provider_response_id": f"resp-{i}",
                "input_tokens": 100 * (i + 1), "output_tokens": 10 * (i + 1), "cache_read_input_tokens": i,
                "cache_write_input_tokens": 1, "metadata": {}, "created_at": format_timestamp(started),
                "cost_usd": COSTS[i]})
        store.records.write_records(RecordBatch.load(batch))
    finally:
        store.close()
    settings = load_settings(env={"CODER_AIBRIDGE_DATABASE_URL": str(path), "CODER_AIBRIDGE_RETENTION": "0"})
    test_client = create_app(settings).test_client()
    test_client.tokens = tokens
    return test_client


def get(client, user: str, path: str, **params: Any):
    return client.get(f"/api/v2/aibridge/{path}", query_string=params,
                      headers={"Authorization": f"Bearer {client.tokens[user]}"})


def test_models_grouped_by_family(client) -> None:
    plain = get(client, "alice", "models")
    assert plain.status_code == 200 and plain.json == sorted({record[3] for record in RECORDS})
    grouped = get(client, "alice", "models", group="family")
    assert grouped.status_code == 200
    assert grouped.json == [
        {"model": "claude-3-5-haiku", "names": ["anthropic.claude-3-5-haiku-20241022-v1:0"]},
        {"model": "claude-sonnet-4-5",
         "names": ["claude-sonnet-4-5", "claude-sonnet-4-5-20250929", SONNET_BEDROCK]},
        {"model": "gpt-4o", "names": ["gpt-4o", "gpt-4o-2024-08-06"]},
    ]
    # a user sees only the names of their own records
    assert get(client, "bob", "models", group="family").json == [
        {"model": "claude-3-5-haiku", "names": ["anthropic.claude-3-5-haiku-20241022-v1:0"]},
        {"model": "claude-sonnet-4-5", "names": ["claude-sonnet-4-5-20250929"]},
        {"model": "gpt-4o", "names": ["gpt-4o"]},
    ]
    assert get(client, "alice", "models", group="vendor").status_code == 400


def test_model_family_filters_interceptions(client) -> None:
    body = get(client, "alice", "interceptions", q="model_family:claude-sonnet-4-5").json
    assert body["count"] == 4
    assert sorted(r["model"] for r in body["results"]) == sorted(
        ["claude-sonnet-4-5", SONNET_BEDROCK, "claude-sonnet-4-5-20250929", SONNET_BEDROCK])
    # any name of the family names it; other filters still apply
    bedrock = get(client, "alice", "interceptions", q=f"model_family:{SONNET_BEDROCK} provider_name:bedrock").json
    assert bedrock["count"] == 2 and {r["model"] for r in bedrock["results"]} == {SONNET_BEDROCK}
    # a user's family is their own records only
    mine = get(client, "bob", "interceptions", q="model_family:claude-sonnet-4-5").json
    assert [r["model"] for r in mine["results"]] == ["claude-sonnet-4-5-20250929"]


def test_model_family_filters_sessions(client) -> None:
    body = get(client, "alice", "sessions", q="model_family:gpt-4o").json
    assert sorted(s["id"] for s in body["sessions"]) == ["s-d", "s-e"] and body["count"] == 2
    sonnet = get(client, "alice", "sessions", q="model_family:claude-sonnet-4-5 provider:anthropic").json
    assert sorted(s["id"] for s in sonnet["sessions"]) == ["s-a", "s-b", "s-c", "s-e"] and sonnet["count"] == 4
    assert [s["id"] for s in get(client, "bob", "sessions", q="model_family:gpt-4o").json["sessions"]] == ["s-d"]


@pytest.mark.parametrize("path", ["interceptions", "sessions"])
def test_an_unknown_family_is_a_400_naming_it(client, path: str) -> None:
    response = get(client, "alice", path, q="model_family:gemini-2-pro")
    assert response.status_code == 400 and "gemini-2-pro" in response.json["message"]
    # a family only another user recorded is unknown to a user too
    assert get(client, "bob", path, q="model_family:claude-opus-4-1").status_code == 400
    both = get(client, "alice", path, q="model_family:gpt-4o model:gpt-4o")
    assert both.status_code == 400


def test_usage_by_family_sums_the_by_model_series(client) -> None:
    by_model = get(client, "alice", "usage", by="model", bucket="hour", since="7d").json
    by_family = get(client, "alice", "usage", by="model_family", bucket="hour", since="7d").json
    assert by_family["by"] == "model_family" and by_family["totals"] == by_model["totals"]
    expected: dict[str, dict[str, dict[str, int]]] = {}
    for series in by_model["series"]:
        for point in series["points"]:
            summed = expected.setdefault(model_family(series["key"]), {}).setdefault(point["t"], {})
            for figure, value in point.items():
                if figure == "cost_usd":  # None (no price) adds nothing: a cost stays None until one is known
                    summed[figure] = value if summed.get(figure) is None else summed[figure] + (value or 0)
                elif figure != "t":
                    summed[figure] = summed.get(figure, 0) + value
    assert {s["key"]: {p["t"]: {k: v for k, v in p.items() if k != "t"} for p in s["points"]}
            for s in by_family["series"]} == expected
    assert [s["key"] for s in by_family["series"]] == ["claude-sonnet-4-5", "gpt-4o", "claude-3-5-haiku"]
    totals = {s["key"]: (s["total"]["cost_usd"], s["total"]["unpriced_token_usages"]) for s in by_family["series"]}
    assert totals == {"claude-sonnet-4-5": (0.125 + 0.25 + 0.125 + 0.5, 0), "gpt-4o": (2.0 + 1.5, 0),
                      "claude-3-5-haiku": (None, 1)}
    assert by_family["totals"]["cost_usd"] == 4.5 and by_family["totals"]["unpriced_token_usages"] == 1
    by_cost = get(client, "alice", "usage", by="model_family", bucket="hour", since="7d", sort="cost").json
    assert [s["key"] for s in by_cost["series"]] == ["gpt-4o", "claude-sonnet-4-5", "claude-3-5-haiku"]
    by_requests = get(client, "alice", "usage", by="model", since="7d", sort="requests").json
    assert [s["key"] for s in by_requests["series"]][0] == SONNET_BEDROCK  # the one model called twice
    assert {s["key"] for s in get(client, "bob", "usage", by="model_family").json["series"]} == {
        "claude-sonnet-4-5", "claude-3-5-haiku", "gpt-4o"}
