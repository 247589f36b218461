"""model_family (bridge.model_names): Bedrock ids and dated snapshots count as the model they name.
Pricing prices a Bedrock id as its Anthropic model with this same function, so each rule is pinned."""

from __future__ import annotations

import pytest

from bridge.model_names import group_by_family, model_family


@pytest.mark.parametrize(("name", "family"), [
    # Bedrock ids (cross-region inference profiles and plain ids) -> the Anthropic model
    ("us.anthropic.claude-sonnet-4-5-20250929-v1:0", "claude-sonnet-4-5"),
    ("eu.anthropic.claude-sonnet-4-20250514-v1:0", "claude-sonnet-4"),
    ("apac.anthropic.claude-3-7-sonnet-20250219-v1:0", "claude-3-7-sonnet"),
    ("global.anthropic.claude-opus-4-1-20250805-v1:0", "claude-opus-4-1"),
    ("us-gov.anthropic.claude-3-haiku-20240307-v1:0", "claude-3-haiku"),
    ("anthropic.claude-3-5-haiku-20241022-v1:0", "claude-3-5-haiku"),
    ("anthropic.claude-3-5-sonnet-20241022-v2:0", "claude-3-5-sonnet"),
    # Anthropic dated snapshots and aliases
    ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
    ("claude-sonnet-4-5", "claude-sonnet-4-5"),
    ("claude-3-5-haiku-20241022", "claude-3-5-haiku"),
    # OpenAI dated snapshots
    ("gpt-4o-2024-08-06", "gpt-4o"),
    ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
    ("o1-2024-12-17", "o1"),
    ("gpt-4o", "gpt-4o"),
    ("gpt-5", "gpt-5"),
])
def test_a_model_name_belongs_to_its_model(name: str, family: str) -> None:
    assert model_family(name) == family


@pytest.mark.parametrize("name", [
    "amazon.nova-pro-v1:0",            # a Bedrock id of another vendor
    "meta.llama3-70b-instruct-v1:0",
    "anthropic.claude-v2:1",           # legacy: the v2 is the model's own version
    "claude-x-20251399",               # not a date (month 13)
    "gpt-4o-20240806x",
    "claude-sonnet-4-5-latest",
    "",
])
def test_anything_else_is_its_own_model(name: str) -> None:
    assert model_family(name) == name


def test_names_group_by_family_sorted() -> None:
    names = ["gpt-4o", "us.anthropic.claude-sonnet-4-5-20250929-v1:0", "claude-sonnet-4-5", "gpt-4o-2024-08-06",
             "claude-sonnet-4-5-20250929"]
    assert group_by_family(names) == [
        {"model": "claude-sonnet-4-5",
         "names": ["claude-sonnet-4-5", "claude-sonnet-4-5-20250929", "us.anthropic.claude-sonnet-4-5-20250929-v1:0"]},
        {"model": "gpt-4o", "names": ["gpt-4o", "gpt-4o-2024-08-06"]},
    ]
