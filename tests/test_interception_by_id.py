"""GET /api/v2/aibridge/interceptions/{id} through the real gateway (gunicorn, gevent workers): the
route a pasted dashboard link to an interception reads (records.js fetchInterception asks for
``interceptions/<encodeURIComponent(id)>``), answered with the same object the list route gives."""

from __future__ import annotations

import uuid
from urllib.parse import quote

import requests

from tests.harness import wait_for_records
from tests.sdk_calls import anthropic_client
from tests.test_api import INTERCEPTIONS


def _get(gateway, interception_id: str, token: str | None) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    # Quoted as the dashboard's encodeURIComponent quotes it (a "/" too).
    return requests.get(f"{gateway.url}{INTERCEPTIONS}/{quote(interception_id, safe='')}", headers=headers, timeout=10)


def test_one_interception_by_id_for_its_owner_and_admins_and_a_404_for_anyone_else(
        gateway, identities, database) -> None:
    owner = f"byid-{uuid.uuid4().hex[:8]}"
    identities.store.identity.create_user(owner)
    token, _ = identities.token(owner)
    anthropic = anthropic_client(gateway.base("anthropic"), token, "anthropic/simple_text")
    raw = anthropic.messages.with_raw_response.create(model="claude-haiku-4-5", max_tokens=10,
                                                      messages=[{"role": "user", "content": "open me by id"}])
    interception_id = raw.headers["X-AIBridge-Interception-Id"]
    wait_for_records(database, [interception_id])
    listed = requests.get(f"{gateway.url}{INTERCEPTIONS}", params={"q": f"initiator:{owner}"},
                          headers={"Authorization": f"Bearer {identities.alice}"}, timeout=10).json()
    [element] = [r for r in listed["results"] if r["id"] == interception_id]

    for who in (token, identities.alice):  # the owner, an admin
        found = _get(gateway, interception_id, who)
        assert found.status_code == 200, found.text
        assert found.json() == element  # the same object as one element of the list
    assert [p["prompt"] for p in element["user_prompts"]] == ["open me by id"]

    # Someone else's id, an unknown id and malformed ones: the same 404 in the API's shape.
    refusals = {
        interception_id: _get(gateway, interception_id, identities.bob),
        str(uuid.uuid4()): _get(gateway, str(uuid.uuid4()), identities.alice),
        "not-an-id": _get(gateway, "not-an-id", identities.alice),
        "a/b": _get(gateway, "a/b", identities.alice),
    }
    for asked, response in refusals.items():
        assert response.status_code == 404, (asked, response.text)
        body = response.json()
        assert set(body) == {"message"} and body["message"].startswith("unknown interception id"), (asked, body)
        assert "provider" not in body["message"]
    assert refusals[interception_id].json()["message"] == f"unknown interception id {interception_id!r}"

    anonymous = _get(gateway, interception_id, None)
    assert anonymous.status_code == 401 and "message" in anonymous.json()


def test_the_store_finds_one_interception_for_its_owner_on_both_backends(store_url: str) -> None:
    from bridge.store import RecordBatch, open_store

    with open_store(store_url, migrate=True) as store:
        owner, other = store.identity.create_user("owner"), store.identity.create_user("other")
        store.records.write_records(RecordBatch.load(dict(interceptions=[
            {"id": "i-1", "initiator_id": owner["id"], "provider": "openai", "provider_name": "openai",
             "model": "gpt-4o", "started_at": "2025-06-01T09:30:00.000000Z"}])))
        listed = store.queries.query_interceptions()["results"]
        assert store.queries.interception_result("i-1") == store.queries.interception_result("i-1", owner["id"]) == listed[0]
        assert store.queries.interception_result("i-1", other["id"]) is None
        for unknown in ("i-2", "i-1\x00", ""):  # NUL: PostgreSQL text cannot even hold it
            assert store.queries.interception_result(unknown) is None
