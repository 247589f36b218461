"""Prices (SPEC §11): each token-usage row's cost against figures computed by hand from the providers'
published prices (USD per million tokens), and the prices file's checks.

Published prices used below:
- OpenAI gpt-4o-2024-08-06: input 2.50, cached input 1.25, output 10.00.
- OpenAI gpt-5: input 1.25, cached input 0.125, output 10.00 (reasoning tokens are output tokens).
- Anthropic Claude Sonnet 4.5, prompts up to 200K tokens: input 3, output 15, cache read 0.30, 5-minute
  cache write 3.75, 1-hour cache write 6; above 200K input tokens (cache reads and writes count):
  input 6, output 22.50, cache read 0.60, 5-minute write 7.50, 1-hour write 12, for every token of the call.
"""

from __future__ import annotations

import pytest

from bridge.config import ConfigError, load_settings
from bridge.pricing import Prices, load_prices_file
from tests.fakeupstream import load_fixtures

FIXTURES = load_fixtures()
M = 1_000_000


def fixture_cost(prices: Prices, provider_type: str, name: str, model: str | None = None) -> float | None:
    """The cost of a recorded fixture's usage (its expected record figures), for the model it asked for."""
    usage = FIXTURES[name]["expect"]["usage"]
    return prices.cost(provider_type, model or FIXTURES[name]["request"]["model"], usage["input_tokens"],
                       usage["output_tokens"], usage["cache_read_input_tokens"], usage["cache_write_input_tokens"],
                       usage["metadata"])


def test_openai_chat_call_with_cached_prompt_tokens():
    # 2,000 uncached input, 18,000 cached, 150 output (the fixture's usage as recorded).
    expected = (2000 * 2.50 + 18000 * 1.25 + 150 * 10.00) / M
    assert fixture_cost(Prices(), "openai", "openai_chat/cached_tokens") == pytest.approx(expected, rel=1e-9)
    assert expected == pytest.approx(0.029)


def test_responses_call_with_reasoning_tokens_prices_them_as_output():
    usage = FIXTURES["openai_responses/reasoning_summary"]["expect"]["usage"]
    assert usage["metadata"]["output_tokens_details.reasoning_tokens"] == 320 and usage["output_tokens"] == 390
    expected = (18 * 1.25 + 390 * 10.00) / M  # the 320 reasoning tokens are among the 390 output tokens
    assert fixture_cost(Prices(), "openai", "openai_responses/reasoning_summary") == pytest.approx(expected, rel=1e-9)


def test_anthropic_stream_with_cache_reads_and_both_cache_write_lifetimes():
    usage = FIXTURES["anthropic/cache_write_tiers"]["expect"]["usage"]
    assert usage["cache_write_input_tokens"] == 3000  # 1,000 for 5 minutes, 2,000 for 1 hour
    expected = (5 * 3 + 8000 * 0.30 + 1000 * 3.75 + 2000 * 6 + 120 * 15) / M
    assert fixture_cost(Prices(), "anthropic", "anthropic/cache_write_tiers") == pytest.approx(expected, rel=1e-9)
    assert expected == pytest.approx(0.019965)


def test_cache_writes_without_a_lifetime_split_are_priced_as_5_minute_writes():
    expected = (3 * 3 + 12000 * 0.30 + 40 * 3.75 + 90 * 15) / M
    assert fixture_cost(Prices(), "anthropic", "anthropic/cached_tokens") == pytest.approx(expected, rel=1e-9)
    assert Prices().cost("anthropic", "claude-sonnet-4-5", 0, 0, 0, 1000, None) == pytest.approx(1000 * 3.75 / M)


def test_long_context_tier_prices_every_token_of_the_call_at_the_higher_rate():
    # 150,000 input + 60,000 cache reads = 210,000 input tokens: above 200K.
    expected = (150_000 * 6 + 60_000 * 0.60 + 1000 * 22.50) / M
    cost = Prices().cost("anthropic", "claude-sonnet-4-5-20250929", 150_000, 1000, 60_000, 0, None)
    assert cost == pytest.approx(expected, rel=1e-9)
    # At exactly 200K the base rates still apply.
    assert Prices().cost("anthropic", "claude-sonnet-4-5", 200_000, 0, 0, 0, None) == pytest.approx(200_000 * 3 / M)


@pytest.mark.parametrize("bedrock_id", ["us.anthropic.claude-sonnet-4-5-20250929-v1:0",
                                        "anthropic.claude-sonnet-4-5-20250929-v1:0",
                                        "global.anthropic.claude-sonnet-4-5-20250929-v1:0"])
def test_bedrock_model_id_is_priced_as_its_anthropic_model(bedrock_id):
    # Bedrock providers are of type anthropic; the record keeps the Bedrock id.
    expected = (1000 * 3 + 500 * 0.30 + 200 * 3.75 + 100 * 6 + 300 * 15) / M
    metadata = {"cache_creation.ephemeral_5m_input_tokens": 200, "cache_creation.ephemeral_1h_input_tokens": 100}
    assert Prices().cost("anthropic", bedrock_id, 1000, 300, 500, 300, metadata) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("provider_type, model", [("openai", "acme-internal-model-7"), ("anthropic", "claude-made-up-9"),
                                                  ("openai", ""), ("openai", None), ("anthropic", "gpt-4o")])
def test_a_model_the_table_does_not_know_has_no_cost_never_zero(provider_type, model):
    assert Prices().cost(provider_type, model, 1000, 100, 0, 0, None) is None


def test_copilot_models_are_priced_as_their_makers_list_them():
    assert Prices().cost("copilot", "gpt-4o-2024-08-06", 1000, 100, 0, 0, None) == pytest.approx((1000 * 2.5 + 100 * 10) / M)
    assert Prices().cost("copilot", "claude-sonnet-4-5", 1000, 100, 0, 0, None) == pytest.approx((1000 * 3 + 100 * 15) / M)


def test_hostile_figures_cost_nothing_extra():
    """Negative, boolean or non-integer figures (a compatible provider's odd usage) count as 0."""
    prices = Prices()
    assert prices.cost("openai", "gpt-4o", -5, True, 0, 0, {"cache_creation.ephemeral_1h_input_tokens": "x"}) == 0


def test_distinct_model_names_do_not_grow_the_cache_without_bound():
    prices = Prices()
    for n in range(1100):
        prices.price("openai", f"made-up-{n}")
    assert len(prices._cache) <= 1024


# ------------------------------------------------------------------------------ the prices file


def write(tmp_path, text: str) -> str:
    path = tmp_path / "prices.yaml"
    path.write_text(text)
    return str(path)


def test_prices_file_overrides_a_listed_model_and_adds_an_unlisted_one(tmp_path):
    path = write(tmp_path, "gpt-4o-2024-08-06:\n  input: 2.0\n  output: 8.0\n"
                           "llama-3.1-70b-local:\n  input: 0.10\n  output: 0.20\n  cache_read: 0.05\n")
    prices = Prices(load_settings({"CODER_AIBRIDGE_PRICES_FILE": path}).prices)
    # Negotiated input and output; the cached input price the file leaves out stays the table's 1.25.
    assert prices.cost("openai", "gpt-4o-2024-08-06", 2000, 150, 18000, 0, None) == pytest.approx(
        (2000 * 2.0 + 18000 * 1.25 + 150 * 8.0) / M)
    # A self-hosted model: cache writes it leaves out cost what input does.
    assert prices.cost("openai", "llama-3.1-70b-local", 1000, 500, 4000, 100, None) == pytest.approx(
        (1000 * 0.10 + 4000 * 0.05 + 100 * 0.10 + 500 * 0.20) / M)
    # Other models keep the table's prices.
    assert prices.cost("openai", "gpt-5", 18, 390, 0, 0, None) == pytest.approx((18 * 1.25 + 390 * 10) / M)


def test_prices_file_entry_names_a_model_family(tmp_path):
    path = write(tmp_path, "claude-sonnet-4-5: {input: 1, output: 2, cache_read: 0.1, cache_write: 1.5, cache_write_1h: 3}\n")
    prices = Prices(load_prices_file(path))
    metadata = {"cache_creation.ephemeral_1h_input_tokens": 100}
    expected = (1000 * 1 + 500 * 0.1 + 200 * 1.5 + 100 * 3 + 300 * 2) / M
    assert prices.cost("anthropic", "us.anthropic.claude-sonnet-4-5-20250929-v1:0", 1000, 300, 500, 300,
                       metadata) == pytest.approx(expected)


BAD_FILES = {
    "unknown field": ("gpt-4o:\n  input: 2\n  output: 8\n  bogus: 1\n", "unknown field 'bogus'"),
    "negative": ("gpt-4o:\n  input: -2\n  output: 8\n", "input must be a number >= 0"),
    "text price": ("gpt-4o:\n  input: two\n  output: 8\n", "input must be a number >= 0"),
    "boolean price": ("gpt-4o:\n  input: true\n  output: 8\n", "input must be a number >= 0"),
    "missing output": ("gpt-4o:\n  input: 2\n", "output missing"),
    "not a mapping": ("gpt-4o: [1, 2]\n", "expected a mapping of input"),
    "top level list": ("- gpt-4o\n", "expected a mapping of model names"),
    "broken yaml": ("gpt-4o: {input: 1\n", "invalid YAML at line"),
    "infinite": ("gpt-4o:\n  input: .inf\n  output: 8\n", "input must be a number >= 0"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_a_bad_prices_file_is_a_one_line_startup_error_naming_the_setting(case, tmp_path):
    text, problem = BAD_FILES[case]
    with pytest.raises(ConfigError) as error:
        load_settings({"CODER_AIBRIDGE_PRICES_FILE": write(tmp_path, text)})
    message = str(error.value)
    assert message.startswith("CODER_AIBRIDGE_PRICES_FILE: ") and problem in message, message
    assert "\n" not in message


def test_a_missing_prices_file_is_a_startup_error(tmp_path):
    with pytest.raises(ConfigError, match="CODER_AIBRIDGE_PRICES_FILE: cannot read"):
        load_settings({"CODER_AIBRIDGE_PRICES_FILE": str(tmp_path / "absent.yaml")})


def test_an_empty_prices_file_changes_nothing(tmp_path):
    prices = Prices(load_settings({"CODER_AIBRIDGE_PRICES_FILE": write(tmp_path, "")}).prices)
    assert prices.cost("openai", "gpt-5", 18, 390, 0, 0, None) == pytest.approx((18 * 1.25 + 390 * 10) / M)
