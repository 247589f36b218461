"""Recorded costs (SPEC §11) through the real gateway (gunicorn, gevent workers, the fake upstream,
the official SDKs): each token usage priced when it is recorded, the prices file applied, and the
records stored before costs priced by the migration. Hand-computed figures: see tests/test_pricing.py
for the published prices (USD per million tokens)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from bridge.records import TokenUsageRecord
from bridge.store import MIGRATIONS, USAGE_ROLLUPS, RecordBatch, open_store
from tests.conftest import provider_env
from tests.harness import store_with_users, wait_for_records
from tests.fakeupstream import load_fixtures
from tests.sdk_calls import anthropic_client, openai_client

FIXTURES = load_fixtures()
M = 1_000_000
INTERCEPTION_HEADER = "X-AIBridge-Interception-Id"


def _request(name: str) -> dict:
    return {key: value for key, value in FIXTURES[name]["request"].items() if key != "stream"}


def _costs(database: Path, interception_ids: list[str]) -> list[float | None]:
    found = wait_for_records(database, interception_ids)
    assert set(found) == set(interception_ids)
    return [[usage["cost_usd"] for usage in found[i]["token_usages"]] for i in interception_ids]


def _streamed(create, name: str) -> str:
    """Stream a fixture's request to its end through an SDK's ``create``; the interception id."""
    with create(**_request(name), stream=True) as streamed:
        for _ in streamed.iter_lines():
            pass
        return streamed.headers[INTERCEPTION_HEADER]


def _calls(gateway, token: str) -> list[str]:
    """Four calls through the SDKs, the interception id of each."""
    chat = openai_client(gateway.base("openai") + "/v1", token, "openai_chat/cached_tokens")
    responses = openai_client(gateway.base("openai") + "/v1", token, "openai_responses/reasoning_summary")
    messages = anthropic_client(gateway.base("anthropic"), token, "anthropic/cache_write_tiers")
    unknown = anthropic_client(gateway.base("anthropic"), token, "anthropic/simple_text")
    return [
        chat.chat.completions.with_raw_response.create(**_request("openai_chat/cached_tokens")).headers[INTERCEPTION_HEADER],
        _streamed(responses.responses.with_streaming_response.create, "openai_responses/reasoning_summary"),
        _streamed(messages.messages.with_streaming_response.create, "anthropic/cache_write_tiers"),
        unknown.messages.with_raw_response.create(model="claude-internal-finetune-7", max_tokens=64,
                                                  messages=[{"role": "user", "content": "hi"}]).headers[INTERCEPTION_HEADER],
    ]


def test_each_token_usage_is_priced_when_it_is_recorded(gateway, identities, database):
    user = f"cost-{uuid.uuid4().hex[:8]}"
    identities.store.identity.create_user(user)
    token, _ = identities.token(user)
    chat, responses, cache_tiers, unknown = _costs(database, _calls(gateway, token))
    assert chat == [pytest.approx((2000 * 2.50 + 18000 * 1.25 + 150 * 10.00) / M)]
    assert responses == [pytest.approx((18 * 1.25 + 390 * 10.00) / M)]  # reasoning tokens are output
    assert cache_tiers == [pytest.approx((5 * 3 + 8000 * 0.30 + 1000 * 3.75 + 2000 * 6 + 120 * 15) / M)]
    assert unknown == [None]  # a model without a price: no cost, not 0


def test_the_prices_file_prices_the_calls_of_the_gateway_it_configures(start_gateway, upstream, tmp_path):
    database = tmp_path / "bridge.db"
    alice, _ = store_with_users(database)
    prices = tmp_path / "prices.yaml"
    prices.write_text("gpt-4o-2024-08-06: {input: 2.0, output: 8.0}\n"
                      "claude-internal-finetune-7: {input: 1.0, output: 4.0, cache_write: 1.5}\n")
    gateway = start_gateway({**provider_env(upstream), "CODER_AIBRIDGE_DATABASE_URL": f"sqlite:///{database}",
                             "CODER_AIBRIDGE_PRICES_FILE": str(prices)})
    chat, responses, cache_tiers, unknown = _costs(database, _calls(gateway, alice))
    assert chat == [pytest.approx((2000 * 2.0 + 18000 * 1.25 + 150 * 8.0) / M)]  # cached: still the table's
    assert responses == [pytest.approx((18 * 1.25 + 390 * 10.00) / M)]  # not in the file: the table's
    assert cache_tiers == [pytest.approx((5 * 3 + 8000 * 0.30 + 1000 * 3.75 + 2000 * 6 + 120 * 15) / M)]
    usage = FIXTURES["anthropic/simple_text"]["expect"]["usage"]
    assert unknown == [pytest.approx((usage["input_tokens"] * 1.0 + usage["cache_read_input_tokens"] * 1.0
                                      + usage["cache_write_input_tokens"] * 1.5 + usage["output_tokens"] * 4.0) / M)]


def test_the_migration_prices_records_stored_before_costs(tmp_path):
    store = open_store(str(tmp_path / "old.db"))
    with store.write():  # the schema before costs
        MIGRATIONS.apply(store.db, stop_before="0009_costs")
    store.identity.create_user("ann")
    rows = [("i-1", "openai", "gpt-4o-2024-08-06", (2000, 150, 18000, 0, "{}")),
            ("i-2", "anthropic", "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
             (5, 120, 8000, 3000, '{"cache_creation.ephemeral_1h_input_tokens": 2000}')),
            ("i-3", "openai", "acme-internal-7", (10, 10, 0, 0, "{}"))]
    for n, (interception_id, provider, model, figures) in enumerate(rows):
        at = f"2026-11-20T10:0{n}:00.000000Z"
        store.db.execute("INSERT INTO aibridge_interceptions (id, initiator_id, provider, provider_name, model, client,"
                         " started_at, ended_at, metadata) VALUES (?, 'u', ?, ?, ?, 'Codex', ?, ?, '{}')",
                         [interception_id, provider, provider, model, at, at])
        store.db.execute("INSERT INTO aibridge_token_usages (id, interception_id, input_tokens, output_tokens,"
                         " cache_read_input_tokens, cache_write_input_tokens, metadata, created_at)"
                         " VALUES (?, ?, ?, ?, ?, ?, ?, ?)", [f"u-{n}", interception_id, *figures, at])
    store.migrate()
    costs = dict(store.db.execute("SELECT interception_id, cost_usd FROM aibridge_token_usages").fetchall())
    chat = (2000 * 2.50 + 18000 * 1.25 + 150 * 10.00) / M
    bedrock = (5 * 3 + 8000 * 0.30 + 1000 * 3.75 + 2000 * 6 + 120 * 15) / M
    assert costs == {"i-1": pytest.approx(chat), "i-2": pytest.approx(bedrock), "i-3": None}
    for table in USAGE_ROLLUPS.values():  # the rollups sum what was priced and count what was not
        cost, unpriced = store.db.execute(f"SELECT sum(cost_usd), sum(unpriced_token_usages) FROM {table}").fetchone()
        assert cost == pytest.approx(chat + bedrock) and unpriced == 1
    store.close()


def test_a_journaled_token_usage_keeps_its_cost():
    """The recorder's journal (records kept while the store cannot be written) carries the cost."""
    record = TokenUsageRecord(id="u", interception_id="i", input_tokens=1, created_at="2026-11-20T10:00:00Z",
                              cost_usd=0.25)
    unpriced = TokenUsageRecord(id="v", interception_id="i", created_at="2026-11-20T10:00:00Z")
    replayed = RecordBatch.from_json(RecordBatch(token_usages=[record, unpriced]).to_json())
    assert replayed.token_usages == [record, unpriced] and unpriced.cost_usd is None


def test_absurd_usage_figures_from_an_upstream_are_recorded_as_zero_and_priced_finite():
    from bridge.records import ANTHROPIC_USAGE, OPENAI_USAGE

    usage = OPENAI_USAGE.load({"prompt_tokens": 10**30, "completion_tokens": -5})
    assert (usage.input_tokens, usage.output_tokens) == (0, 0)  # SQLite cannot hold 10**30; -5 lowers a budget
    usage = ANTHROPIC_USAGE.load({"input_tokens": 12, "output_tokens": 3, "cache_read_input_tokens": -1})
    assert (usage.input_tokens, usage.output_tokens, usage.cache_read_input_tokens) == (12, 3, 0)
