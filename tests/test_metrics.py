"""/metrics adds up what every gunicorn worker counted (SPEC §8)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import provider_env
from tests.sdk_calls import load_fixtures

FIXTURES = {**dict(load_fixtures("anthropic")), **dict(load_fixtures("openai_chat"))}
CALLS = [("anthropic", "v1/messages", "anthropic/cached_tokens", True),
         ("openai", "v1/chat/completions", "openai_chat/tool_call", False),
         ("openai", "v1/chat/completions", "openai_chat/http_429", False)]
ROUNDS = 20


def _samples(text: str) -> dict[tuple[str, frozenset], float]:
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def _total(samples, name: str, **labels) -> float:
    wanted = set(labels.items())
    return sum(value for (sample, sample_labels), value in samples.items() if sample == name and wanted <= sample_labels)


@pytest.fixture(scope="module")
def scraped(start_gateway, upstream, identities):
    gateway = start_gateway(provider_env(upstream), workers=2)

    def call(n: int) -> int:
        provider, route, name, stream = CALLS[n % len(CALLS)]
        response = requests.post(f"{gateway.base(provider)}/{route}", timeout=30,  # a new connection each: both workers serve
                                 json={**FIXTURES[name]["request"], "stream": stream},
                                 headers={"Authorization": f"Bearer {identities.alice}", "X-Fixture": name})
        response.content
        return response.status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(call, range(ROUNDS * len(CALLS))))
    for _ in range(5):
        assert requests.get(f"{gateway.base('openai')}/v1/models", timeout=10,
                            headers={"Authorization": f"Bearer {identities.alice}"}).status_code == 200
    # every scrape (whichever worker answers) gives the same sums
    scrapes = [_samples(requests.get(f"{gateway.url}/metrics", timeout=10).text) for _ in range(6)]
    return statuses, scrapes


def test_interceptions_add_up_across_workers(scraped):
    statuses, scrapes = scraped
    assert statuses.count(429) == ROUNDS
    for samples in scrapes:
        assert _total(samples, "interceptions_total") == ROUNDS * len(CALLS)
        assert _total(samples, "interceptions_total", status="429") == ROUNDS
        assert _total(samples, "interceptions_total", provider="anthropic", model=FIXTURES["anthropic/cached_tokens"]["request"]["model"],
                      client="Unknown") == ROUNDS
        assert _total(samples, "interceptions_duration_seconds_count") == ROUNDS * len(CALLS)
        assert _total(samples, "interceptions_inflight") == 0
        assert _total(samples, "passthrough_total", provider="openai") == 5
        assert _total(samples, "prompts_total") == ROUNDS * len(CALLS)


def test_tokens_and_tool_selections_add_up(scraped):
    _, scrapes = scraped
    anthropic_usage = FIXTURES["anthropic/cached_tokens"]["expect"]["usage"]
    openai_usage = FIXTURES["openai_chat/tool_call"]["expect"]["usage"]
    tools = FIXTURES["openai_chat/tool_call"]["expect"]["tool_calls"]
    for samples in scrapes:
        assert _total(samples, "tokens_total", provider="anthropic", type="input") == ROUNDS * anthropic_usage["input_tokens"]
        assert _total(samples, "tokens_total", provider="anthropic", type="cache_read") == ROUNDS * anthropic_usage["cache_read_input_tokens"]
        assert _total(samples, "tokens_total", provider="anthropic", type="cache_write") == ROUNDS * anthropic_usage["cache_write_input_tokens"]
        assert _total(samples, "tokens_total", provider="openai", type="output") == ROUNDS * openai_usage["output_tokens"]
        for tool in {call["name"] for call in tools}:
            count = sum(1 for call in tools if call["name"] == tool)
            assert _total(samples, "non_injected_tool_selections_total", tool=tool) == ROUNDS * count


def test_cost_adds_up_by_provider_model_and_client(scraped):
    """cost_usd_total: what the token usages cost (SPEC §11); a refused call (429) adds nothing."""
    _, scrapes = scraped
    anthropic_model = FIXTURES["anthropic/cached_tokens"]["request"]["model"]
    # Claude Sonnet 4.5: 3 input, 12,000 cache reads, 40 5-minute cache writes, 90 output ($3, $0.30, $3.75, $15 / MTok).
    anthropic_cost = (3 * 3 + 12000 * 0.30 + 40 * 3.75 + 90 * 15) / 1e6
    # gpt-4o-2024-08-06: 82 input, 19 output ($2.50, $10 / MTok).
    assert FIXTURES["openai_chat/tool_call"]["expect"]["usage"]["input_tokens"] == 82
    openai_cost = (82 * 2.50 + 19 * 10) / 1e6
    for samples in scrapes:
        assert _total(samples, "cost_usd_total", provider="anthropic", model=anthropic_model,
                      client="Unknown") == pytest.approx(ROUNDS * anthropic_cost)
        assert _total(samples, "cost_usd_total", provider="openai") == pytest.approx(ROUNDS * openai_cost)
