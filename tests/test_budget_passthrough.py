"""Budgets hold passthrough calls that may run a model (SPEC §11's "never reaches the upstream"): a POST
to a passthrough route (OpenAI's v1/responses/*, v1/conversations, ...) is not recorded, so it would
spend without ever counting; a user over budget gets the same 429 there. Reads (GET) stay open."""

from __future__ import annotations

import requests

from tests.test_budgets import _chat, _enforced, sqlite_setup  # noqa: F401 (a fixture)


def test_a_user_over_budget_is_refused_passthrough_calls_that_spend_and_keeps_reads(sqlite_setup, upstream):
    setup, gateway = sqlite_setup, sqlite_setup.gateways[0]
    name, token = setup.user()
    other, other_token = setup.user()
    setup.set_budget(name, period="day", limit_tokens=1)
    assert _chat(gateway, token).status_code == 200  # spends its one token and more
    _enforced(setup, 0, token)

    upstream.clear()
    headers = {"Authorization": f"Bearer {token}"}
    refused = requests.post(f"{gateway.base('openai')}/v1/conversations", json={"metadata": {"a": "b"}},
                            headers=headers, timeout=30)
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == "insufficient_quota"
    assert f"daily budget of user {name!r}" in refused.json()["error"]["message"]
    assert int(refused.headers["Retry-After"]) >= 1 and refused.headers["x-should-retry"] == "false"
    assert upstream.requests == []

    assert requests.get(f"{gateway.base('openai')}/v1/models", headers=headers, timeout=30).status_code == 200
    allowed = requests.post(f"{gateway.base('openai')}/v1/conversations", json={"metadata": {"a": "b"}},
                            headers={"Authorization": f"Bearer {other_token}"}, timeout=30)
    assert allowed.status_code == 200, allowed.text  # another user's passthrough call goes through
    assert [request.method for request in upstream.requests] == ["GET", "POST"]
