"""/metrics stays small whatever clients send (issue 15 item 1), can require a token (item 9), and
shows every family from the start (issue 16).

Through real gunicorn with 2 gevent workers: the label values admitted are shared by the workers,
so the bound holds for the summed scrape, not just per process.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from bridge import metrics
from bridge.clients import _CLIENTS
from bridge.config import CircuitBreakerSettings
from bridge.reliability import CircuitBreakers, CircuitOpen, State
from tests.conftest import provider_env
from tests.sdk_calls import load_fixtures

TOOL_CALL = dict(load_fixtures("openai_chat"))["openai_chat/tool_call"]
DISTINCT_MODELS = 500
FAMILIES = {"interceptions", "interceptions_inflight", "interceptions_duration_seconds", "passthrough", "prompts",
            "tokens", "non_injected_tool_selections", "circuit_breaker_state", "circuit_breaker_trips",
            "circuit_breaker_rejects", "upstream_retries", "limit_rejects"}
TOKEN = "metrics-token-4d1e8a7c0b9f"


def _families(text: str) -> dict:
    return {family.name: family for family in text_string_to_metric_families(text)}


def _label_values(families: dict, label: str, **wanted: str) -> set[str]:
    return {sample.labels[label] for family in families.values() for sample in family.samples
            if label in sample.labels and all(sample.labels.get(k) == v for k, v in wanted.items())}


def test_distinct_models_share_a_bounded_set_of_labels(start_gateway, upstream, identities):
    gateway = start_gateway(provider_env(upstream), workers=2)

    def call(n: int) -> int:
        response = requests.post(  # a new connection each: both workers serve
            f"{gateway.base('openai')}/v1/chat/completions", timeout=30,
            json={**TOOL_CALL["request"], "model": f"made-up-model-{n:04d}-" + "x" * 60},
            headers={"Authorization": f"Bearer {identities.alice}", "X-Fixture": "openai_chat/tool_call",
                     "User-Agent": f"agent-{n}/1.0"})
        return response.status_code

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(call, range(DISTINCT_MODELS))) == {200}
    assert requests.post(f"{gateway.base('anthropic')}/v1/messages", timeout=30,
                         json={"model": "claude-own-budget", "max_tokens": 10,
                               "messages": [{"role": "user", "content": "hi"}]},
                         headers={"Authorization": f"Bearer {identities.alice}",
                                  "X-Fixture": "anthropic/simple_text"}).status_code == 200

    for _ in range(4):  # whichever worker answers
        body = requests.get(f"{gateway.url}/metrics", timeout=30).text
        families = _families(body)
        models = _label_values(families, "model", provider="openai")
        # every worker admitted the same first MAX_MODELS models; all later ones are "other"
        assert len(models) == metrics.MAX_MODELS + 1 and metrics.OTHER in models
        # another provider has a budget of its own (its "other": the in-flight gauge of a model not served yet)
        assert _label_values(families, "model", provider="anthropic") - {metrics.OTHER} == {"claude-own-budget"}
        assert _label_values(families, "client") <= {name for name, _, _ in _CLIENTS} | {"Unknown"}
        samples = [sample for family in families.values() for sample in family.samples]
        # nothing is lost by the bound: the sums are those of every request
        assert sum(s.value for s in samples if s.name == "interceptions_total") == DISTINCT_MODELS + 1
        assert sum(s.value for s in samples if s.name == "non_injected_tool_selections_total") == DISTINCT_MODELS
        assert sum(s.value for s in samples if s.name == "interceptions_total" and s.labels["model"] == "other") \
            == DISTINCT_MODELS - metrics.MAX_MODELS
        assert len(samples) < 40 * (metrics.MAX_MODELS + 2)  # about 30 samples per model label
        assert len(body) < 1_000_000


def test_tool_names_are_bounded_per_provider():
    """Tool names come from client-defined tools, as free as models: per provider the first
    MAX_TOOL_PAIRS (model, tool) pairs are kept, the rest counted as "other"."""
    tools = {metrics.tool_label("tools-bound-test", "model-a", f"tool-{n}") for n in range(3 * metrics.MAX_TOOL_PAIRS)}
    assert len(tools) == metrics.MAX_TOOL_PAIRS + 1 and metrics.OTHER in tools
    assert metrics.tool_label("tools-bound-test", "model-a", "tool-0") == "tool-0"  # kept ones stay
    assert metrics.tool_label("tools-bound-test", "model-b", "tool-0") == metrics.OTHER
    assert metrics.tool_label("another-provider", "model-b", "tool-0") == "tool-0"


def test_workers_admit_the_same_values(tmp_path):
    """Two workers' budgets (each with its own memory, one shared directory) asked for values in
    opposite orders, turn by turn, keep the same first 10."""
    first, second = (metrics.LabelBudget("models", 10, str(tmp_path)) for _ in range(2))
    kept: tuple[set, set] = (set(), set())
    for n in range(40):
        kept[0].add(first.label("p", f"m{n}"))
        kept[1].add(second.label("p", f"m{39 - n}"))
    assert metrics.OTHER in kept[0] and metrics.OTHER in kept[1]
    assert len(kept[0]) == 11 and kept[0] == kept[1]


def test_metrics_token_is_required_when_set(start_gateway, upstream):
    gateway = start_gateway({**provider_env(upstream), "CODER_AIBRIDGE_METRICS_TOKEN": TOKEN}, workers=2)
    for headers in ({}, {"Authorization": "Bearer wrong-token"}, {"Authorization": TOKEN},
                    {"Authorization": f"Bearer {TOKEN}x"}, {"Authorization": "Bearer \u00e9"}):
        refused = requests.get(f"{gateway.url}/metrics", headers=headers, timeout=10)
        assert refused.status_code == 401, headers
        assert refused.headers["WWW-Authenticate"] == "Bearer"
        assert "metrics token" in refused.json()["message"]
        assert TOKEN not in refused.text
    scrape = requests.get(f"{gateway.url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert scrape.status_code == 200 and "interceptions_total" in scrape.text
    assert requests.get(f"{gateway.url}/healthz", timeout=10).status_code == 200  # health stays open
    assert TOKEN not in gateway.log()


def test_every_family_is_there_before_the_first_call(start_gateway, upstream):
    gateway = start_gateway(provider_env(upstream), workers=2)
    for _ in range(4):  # whichever worker answers
        scrape = requests.get(f"{gateway.url}/metrics", timeout=10)
        assert scrape.status_code == 200
        families = _families(scrape.text)
        assert FAMILIES <= set(families), FAMILIES - set(families)
        assert families["interceptions"].type == "counter"
        assert families["interceptions_duration_seconds"].type == "histogram"



def test_models_the_upstream_refuses_take_no_label_and_a_new_model_keeps_its_own_label_and_breaker(
        start_gateway, upstream, identities):
    """More made-up models than MAX_MODELS, each refused by the upstream (400), then a model whose
    breaker opens (503s): a real new model still gets a label of its own once it is served, and a
    breaker of its own (not a shared one the failing model opened)."""
    gateway = start_gateway({
        **provider_env(upstream), "CODER_AIBRIDGE_PROVIDER_0_MAX_RETRIES": "0",
        "CODER_AIBRIDGE_CIRCUIT_BREAKER_ENABLED": "true", "CODER_AIBRIDGE_CIRCUIT_BREAKER_FAILURE_THRESHOLD": "2",
        "CODER_AIBRIDGE_CIRCUIT_BREAKER_TIMEOUT": "60s", "CODER_AIBRIDGE_CIRCUIT_BREAKER_INTERVAL": "60s",
    }, workers=1)  # breakers are per worker

    def call(model: str, fixture: str) -> requests.Response:
        return requests.post(f"{gateway.base('team-b')}/v1/chat/completions", timeout=30,
                             json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
                             headers={"Authorization": f"Bearer {identities.alice}", "X-Fixture": fixture})

    junk = [f"junk-model-{n:04d}" for n in range(metrics.MAX_MODELS + 20)]
    with ThreadPoolExecutor(8) as pool:
        assert {r.status_code for r in pool.map(lambda m: call(m, "openai_chat/http_400"), junk)} == {400}
    assert [call("gpt-failing", "openai_chat/http_503").status_code for _ in range(2)] == [503, 503]
    refused = call("gpt-failing", "openai_chat/simple_text")
    assert refused.status_code == 503 and "circuit breaker open" in refused.text and "gpt-failing" in refused.text

    for model in ("gpt-real-new", "gpt-real-second"):
        served = call(model, "openai_chat/simple_text")
        assert served.status_code == 200, served.text
    families = _families(requests.get(f"{gateway.url}/metrics", timeout=30).text)
    models = _label_values(families, "model", provider="team-b")
    assert {"gpt-real-new", "gpt-real-second"} <= models
    assert models <= {"gpt-real-new", "gpt-real-second", metrics.OTHER}  # no junk, no failing model
    served_once = [s for s in families["interceptions"].samples
                   if s.name == "interceptions_total" and s.labels["model"] == "gpt-real-new"]
    assert [(s.labels["status"], s.value) for s in served_once] == [("200", 1.0)]
    # the failing model's breaker is counted as "other" (never served), and is still open
    assert call("gpt-failing", "openai_chat/simple_text").status_code == 503


def _breakers(limit: int) -> CircuitBreakers:
    return CircuitBreakers(CircuitBreakerSettings(True, 1, 60.0, 60.0, 1), max_per_route=limit)


def _open(breakers: CircuitBreakers, model: str) -> None:
    breaker = breakers.get("p", "v1/messages", model)
    breaker.record(breaker.admit(), True)
    assert breaker.state == State.OPEN


def test_breakers_are_bounded_per_route_and_an_open_one_is_never_forgotten():
    breakers = _breakers(3)
    _open(breakers, "failing")
    for n in range(10):  # more models than the bound: the least recently used closed ones go
        assert breakers.get("p", "v1/messages", f"model-{n}").state == State.CLOSED
    with pytest.raises(CircuitOpen):  # the open one is still there, for its model only
        breakers.get("p", "v1/messages", "failing").admit()
    assert breakers.get("p", "v1/messages", "model-9") is breakers.get("p", "v1/messages", "model-9")
    breakers.get("p", "v1/messages", "model-new").admit()
    assert breakers.get("p", "other/route", "failing").state == State.CLOSED  # per route

    full = _breakers(2)
    _open(full, "a")
    _open(full, "b")
    # every breaker open: a new model shares the route's fallback (which opens on its own failures only)
    fallback = full.get("p", "v1/messages", "c")
    assert fallback is full.get("p", "v1/messages", "d") and fallback.state == State.CLOSED
    fallback.admit()
    with pytest.raises(CircuitOpen):
        full.get("p", "v1/messages", "a").admit()
