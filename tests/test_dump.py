"""Debug dumps (SPEC §2 ``CODER_AIBRIDGE_DUMP_DIR`` and a provider's ``_DUMP_DIR``): one request and
one response file per provider and interception, blocking and streaming, the body as the client got
it, and never a secret."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
import requests

from bridge.dump import Dump, Dumper, mask_header
from bridge.intercept.sse import SSESplitter
from bridge.masking import mask_secret
from bridge.store import open_store
from tests.conftest import ANTHROPIC_KEY, CORP_KEY, OPENAI_KEY, TEAM_B_KEY, provider_env
from tests.harness import free_port, wait_for_records
from tests.sdk_calls import load_fixtures

FIXTURES = dict(load_fixtures("anthropic") + load_fixtures("openai_chat") + load_fixtures("openai_responses"))
AWS_SECRET = "aws-secret-test-Zq9Xw8Vu7Ts6Rq5Po4Nm"
BYOK_KEY = "sk-own-key-of-a-dump-user-0123456789"
ROUTES = {"anthropic": "v1/messages", "openai_chat": "v1/chat/completions", "openai_responses": "v1/responses"}


@pytest.fixture(scope="module")
def dumps(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("dumps")
    blocker = root / "not-a-directory"
    blocker.write_text("a file where the dump directory of anthropic-corp should be")
    return {"global": root / "all", "team-b": root / "team-b-only", "broken": blocker / "dumps"}


@dataclass
class Users:
    alice: str
    bob: str


@pytest.fixture(scope="module")
def dump_database(tmp_path_factory) -> Path:
    """A store of its own: the prompts here carry secrets on purpose (to see them masked in the
    dumps), and the store records prompts as they are; the session's store must stay clean of them
    (tests/test_authorization.py greps its files)."""
    return tmp_path_factory.mktemp("dump-store") / "bridge.db"


@pytest.fixture(scope="module")
def users(dump_database) -> Users:
    store = open_store(str(dump_database))
    try:
        store.migrate()
        store.identity.create_user("alice", is_admin=True)
        store.identity.create_user("bob")
        return Users(store.identity.create_token("alice")[0], store.identity.create_token("bob")[0])
    finally:
        store.close()


@pytest.fixture(scope="module")
def dump_gateway(start_gateway, upstream, dumps, dump_database, users):
    env = {
        **provider_env(upstream),
        "CODER_AIBRIDGE_DATABASE_URL": f"sqlite:///{dump_database}",
        "CODER_AIBRIDGE_DUMP_DIR": str(dumps["global"]),
        "CODER_AIBRIDGE_PROVIDER_0_DUMP_DIR": str(dumps["team-b"]),  # team-b: its own directory
        "CODER_AIBRIDGE_PROVIDER_1_DUMP_DIR": str(dumps["broken"]),  # anthropic-corp: cannot be written
        "CODER_AIBRIDGE_PROVIDER_3_TYPE": "openai",  # nobody listens there: the gateway's own 502 is dumped
        "CODER_AIBRIDGE_PROVIDER_3_NAME": "dead",
        "CODER_AIBRIDGE_PROVIDER_3_KEY": "sk-dead-test-key-00001111",
        "CODER_AIBRIDGE_PROVIDER_3_BASE_URL": f"http://127.0.0.1:{free_port()}/v1/",
        "CODER_AIBRIDGE_PROVIDER_3_MAX_RETRIES": "0",
        "CODER_AIBRIDGE_PROVIDER_4_TYPE": "anthropic",
        "CODER_AIBRIDGE_PROVIDER_4_NAME": "bedrock-configured",
        "CODER_AIBRIDGE_PROVIDER_4_KEY": "sk-ant-bedrock-test-key-2222",
        "CODER_AIBRIDGE_PROVIDER_4_BASE_URL": f"{upstream.url}/",
        "CODER_AIBRIDGE_PROVIDER_4_BEDROCK_REGION": "us-east-1",
        "CODER_AIBRIDGE_PROVIDER_4_BEDROCK_ACCESS_KEY": "AKIATESTDUMPKEY00001",
        "CODER_AIBRIDGE_PROVIDER_4_BEDROCK_ACCESS_KEY_SECRET": AWS_SECRET,
    }
    return start_gateway(env, workers=2)


def _secrets(users) -> list[str]:
    return [OPENAI_KEY, ANTHROPIC_KEY, TEAM_B_KEY, CORP_KEY, AWS_SECRET, BYOK_KEY, users.alice, users.bob,
            "sk-dead-test-key-00001111", "sk-ant-bedrock-test-key-2222", "AKIATESTDUMPKEY00001"]


def _call(gateway, provider: str, fixture: str, *, stream: bool, token: str, prompt: str | None = None,
          headers: dict | None = None) -> requests.Response:
    api = fixture.split("/")[0]
    body = {**FIXTURES[fixture]["request"], "stream": stream}
    if prompt is not None:
        key = "input" if api == "openai_responses" else "messages"
        body[key] = [{"role": "user", "content": prompt}]
    auth = {"X-Api-Key": token, "anthropic-version": "2023-06-01"} if api == "anthropic" else {
        "Authorization": f"Bearer {token}"}
    response = requests.post(f"{gateway.base(provider)}/{ROUTES[api]}", json=body, timeout=30, stream=stream,
                             headers={**auth, "X-Fixture": fixture, "Cookie": "session=cookie-value-0123456789",
                                      **(headers or {})})
    response.sent_body = body  # type: ignore[attr-defined]
    response.received = response.content  # type: ignore[attr-defined]
    return response


def _files(directory: Path, interception_id: str) -> tuple[dict, bytes, bytes]:
    """The request dump (parsed), the response head and the response body."""
    deadline = time.monotonic() + 5  # a stream's file is closed when the gateway closed the response
    response_path = directory / f"{interception_id}.response"
    request_path = directory / f"{interception_id}.request.json"
    while time.monotonic() < deadline and not (request_path.exists() and response_path.exists()):
        time.sleep(0.02)
    head, _, body = response_path.read_bytes().partition(b"\n\n")
    return orjson.loads(request_path.read_bytes()), head, body


def _wait_for_body(directory: Path, interception_id: str, expected: bytes) -> bytes:
    """The dumped response body, once it has all of ``expected`` (the file of a stream grows)."""
    deadline = time.monotonic() + 5
    while True:
        body = _files(directory, interception_id)[2]
        if body == expected or time.monotonic() > deadline:
            return body
        time.sleep(0.02)


CASES = [  # provider, fixture, stream, where its dumps go
    ("openai", "openai_chat/simple_text", False, "global"),
    ("openai", "openai_chat/simple_text", True, "global"),  # the rewritten stream (usage chunk removed)
    ("openai", "openai_chat/tool_call", True, "global"),
    ("openai", "openai_responses/reasoning_summary", True, "global"),
    ("openai", "openai_responses/simple_text", False, "global"),
    ("anthropic", "anthropic/thinking", True, "global"),
    ("anthropic", "anthropic/simple_text", False, "global"),
    ("team-b", "openai_chat/simple_text", True, "team-b"),
    ("team-b", "openai_chat/http_400", False, "team-b"),  # an upstream error, relayed and dumped
]


@pytest.mark.parametrize("provider, fixture, stream, where", CASES, ids=[f"{p}-{f}-{'stream' if s else 'blocking'}"
                                                                         for p, f, s, _ in CASES])
def test_each_call_is_dumped_with_the_request_sent_and_the_body_relayed(provider, fixture, stream, where,
                                                                        dump_gateway, upstream, users, dumps):
    prompt = f"my gateway token is {users.alice} and the key {OPENAI_KEY} / {ANTHROPIC_KEY}, please keep them"
    response = _call(dump_gateway, provider, fixture, stream=stream, token=users.alice, prompt=prompt)
    interception_id = response.headers["X-AIBridge-Interception-Id"]
    sent = upstream.requests[-1]
    directory = dumps[where] / provider
    body = _wait_for_body(directory, interception_id, response.received)
    request_dump, head, _ = _files(directory, interception_id)

    # The request: what went upstream, the key masked (header and body alike).
    assert request_dump["method"] == "POST"
    assert request_dump["url"] == f"{upstream.url}{sent.path}"
    key = {"openai": OPENAI_KEY, "team-b": TEAM_B_KEY, "anthropic": ANTHROPIC_KEY}[provider]
    if provider == "anthropic":
        assert request_dump["headers"]["X-Api-Key"] == mask_secret(key)
    else:
        assert request_dump["headers"]["Authorization"] == f"Bearer {mask_secret(key)}"
    masked_prompt = (prompt.replace(users.alice, mask_secret(users.alice))
                     .replace(OPENAI_KEY, mask_secret(OPENAI_KEY)).replace(ANTHROPIC_KEY, mask_secret(ANTHROPIC_KEY)))
    expected_body = orjson.loads(sent.body.replace(users.alice.encode(), mask_secret(users.alice).encode())
                                 .replace(OPENAI_KEY.encode(), mask_secret(OPENAI_KEY).encode())
                                 .replace(ANTHROPIC_KEY.encode(), mask_secret(ANTHROPIC_KEY).encode()))
    assert request_dump["body"] == expected_body
    assert masked_prompt in orjson.dumps(request_dump["body"]).decode()
    assert {k.lower() for k in request_dump["headers"]} == set(sent.headers) - {"host", "content-length", "connection"}

    # The response: status, the headers and the body exactly as the client got them.
    lines = head.decode().split("\n")
    assert lines[0] == f"HTTP {response.status_code}"
    dumped_headers = dict(line.split(": ", 1) for line in lines[1:])
    assert dumped_headers["X-AIBridge-Interception-Id"] == interception_id
    assert dumped_headers.get("content-type", dumped_headers.get("Content-Type")) == response.headers["Content-Type"]
    assert body == response.received
    if stream:
        assert body.count(b"\n\n") > 3  # a real stream, event by event

    _assert_no_secret(dumps["global"].parent, users)


def test_a_streams_dump_grows_while_the_stream_is_in_flight(dump_gateway, upstream, users, dumps):
    """The response file is appended as events pass: it shows how far a stream got."""
    fixture = FIXTURES["anthropic/simple_text"]
    lockstep = uuid.uuid4().hex
    response = requests.post(f"{dump_gateway.base('anthropic')}/v1/messages", stream=True, timeout=30,
                             json={**fixture["request"], "stream": True},
                             headers={"X-Api-Key": users.alice, "X-Fixture": "anthropic/simple_text",
                                      "X-Fake-Lockstep": lockstep, "anthropic-version": "2023-06-01"})
    interception_id = response.headers["X-AIBridge-Interception-Id"]
    path = dumps["global"] / "anthropic" / f"{interception_id}.response"
    # The dump holds back the last bytes until no secret can straddle them (its longest secret, less one).
    held = max(len(secret) for secret in _secrets(users))
    splitter = SSESplitter()
    received: list[bytes] = []
    grew = []
    for piece in response.iter_content(chunk_size=None):
        for event in splitter.feed(piece):
            received.append(event.raw)
            if len(received) == 2:  # the upstream waits for our ack: the dump must already hold these
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline and b"".join(received)[:-held] not in path.read_bytes():
                    time.sleep(0.02)
                grew.append(b"".join(received)[:-held] in path.read_bytes())
            upstream.ack(lockstep, len(received) - 1)
    assert grew == [True]
    assert _wait_for_body(path.parent, interception_id, b"".join(received)) == b"".join(received)


def test_byok_credentials_and_cookies_never_reach_a_dump(dump_gateway, upstream, users, dumps):
    response = _call(dump_gateway, "openai", "openai_chat/simple_text", stream=False, token=BYOK_KEY,
                     prompt=f"my own key is {BYOK_KEY}", headers={"X-Coder-AI-Governance-Token": users.bob})
    assert response.status_code == 200
    interception_id = response.headers["X-AIBridge-Interception-Id"]
    request_dump, _, _ = _files(dumps["global"] / "openai", interception_id)
    assert upstream.requests[-1].headers["authorization"] == f"Bearer {BYOK_KEY}"
    assert request_dump["headers"]["Authorization"] == f"Bearer {mask_secret(BYOK_KEY)}"
    assert f"my own key is {mask_secret(BYOK_KEY)}" in orjson.dumps(request_dump["body"]).decode()
    assert not any(name.lower() in ("cookie", "x-coder-ai-governance-token") for name in request_dump["headers"])
    _assert_no_secret(dumps["global"].parent, users)


def test_the_gateways_own_error_is_dumped(dump_gateway, users, dumps):
    response = _call(dump_gateway, "dead", "openai_chat/simple_text", stream=True, token=users.alice)
    assert response.status_code == 502
    interception_id = response.headers["X-AIBridge-Interception-Id"]
    request_dump, head, body = _files(dumps["global"] / "dead", interception_id)
    assert request_dump["url"].endswith("/v1/chat/completions")
    assert head.split(b"\n")[0] == b"HTTP 502"
    assert body == response.received and b"unreachable" in body
    _assert_no_secret(dumps["global"].parent, users)


def test_a_dump_that_cannot_be_written_is_logged_once_and_the_calls_go_on(dump_gateway, users, dump_database, dumps):
    ids = []
    for stream in (False, True, False, True):
        response = _call(dump_gateway, "anthropic-corp", "anthropic/simple_text", stream=stream, token=users.alice)
        assert response.status_code == 200 and b"error" not in response.received[:200]
        ids.append(response.headers["X-AIBridge-Interception-Id"])
    assert len(wait_for_records(dump_database, ids)) == len(ids)  # recorded as usual
    assert not dumps["broken"].exists()
    log = dump_gateway.log()
    warnings = [line for line in log.splitlines() if "debug dump under" in line and "anthropic-corp" in line]
    assert 1 <= len(warnings) <= 2, warnings  # once per worker that served one
    assert "Not a directory" in warnings[0]
    assert "Traceback" not in log


def test_the_bedrock_secret_and_keys_stay_out_of_the_gateway_log(dump_gateway, users):
    log = dump_gateway.log()
    for secret in _secrets(users):
        assert secret not in log


# -- the module itself ---------------------------------------------------------------------------


def test_unset_means_no_dumper(upstream):
    from bridge.config import load_settings

    settings = load_settings(env={**provider_env(upstream), "CODER_AIBRIDGE_DATABASE_URL": "/tmp/unused.db"})
    assert all(Dumper.for_provider(p, settings) is None for p in settings.providers)
    with_dir = load_settings(env={**provider_env(upstream), "CODER_AIBRIDGE_DATABASE_URL": "/tmp/unused.db",
                                  "CODER_AIBRIDGE_PROVIDER_0_DUMP_DIR": "/tmp/d"})
    assert [p.name for p in with_dir.providers if Dumper.for_provider(p, with_dir)] == ["team-b"]


@pytest.mark.parametrize("cut", range(1, 40, 3))
def test_a_secret_split_across_stream_chunks_is_still_masked(tmp_path, cut):
    secret = "sk-split-test-abcdefghijklmnopqrstuvwxyz"
    dumper = Dumper(str(tmp_path), "p", [secret, "short"])
    dump = dumper.begin("id", "POST", "http://u/x", {}, b"{}", [])
    data = b'data: {"text": "' + secret.encode() + b'"}\n\n' + b"data: short and " + secret.encode()
    relay = dump.stream([data[:cut], data[cut:cut + 7], data[cut + 7:]], 200, [("Content-Type", "text/event-stream")])
    assert b"".join(relay) == data  # the client gets the bytes unchanged
    written = (tmp_path / "p" / "id.response").read_bytes()
    assert secret.encode() not in written and b"short" not in written
    assert written.endswith(b"\n\n" + data.replace(secret.encode(), mask_secret(secret).encode())
                            .replace(b"short", mask_secret("short").encode()))


def test_closing_a_dumped_stream_closes_the_relay_and_the_file(tmp_path):
    closed = []

    class Relay:
        def __iter__(self):
            yield b"data: 1\n\n"
            yield b"data: 2\n\n"

        def close(self):
            closed.append(True)

    dump = Dumper(str(tmp_path), "p", []).begin("id", "POST", "http://u/x", {}, b"", [])
    stream = dump.stream(Relay(), 200, [])
    assert next(iter(stream)) == b"data: 1\n\n"
    stream.close()  # the client went away
    assert closed == [True]
    assert (tmp_path / "p" / "id.response").read_bytes() == b"HTTP 200\n\ndata: 1\n\n"


def test_header_masks():
    assert mask_header("Authorization", "Bearer sk-abcdefghijklmnop1234") == "Bearer sk-a...1234"
    assert mask_header("x-api-key", "sk-ant-abcdefghijklmnop") == "sk-a...mnop"
    assert mask_header("Cookie", "a=0123456789abcdef; b=xyz") == "a=0123...cdef; b=..."
    assert mask_header("Set-Cookie", "sid=0123456789abcdef; Path=/; HttpOnly") == "sid=0123...cdef; Path=/; HttpOnly"
    assert mask_header("Coder-Session-Token", "abcdefghijklmnopqrstuvwxyz") == "abcd...wxyz"
    assert mask_header("Content-Type", "application/json") == "application/json"


def test_a_request_body_that_is_not_json_is_dumped_as_text(tmp_path):
    Dumper(str(tmp_path), "p", ["secret-0123456789"]).begin(
        "id", "POST", "http://u/x?key=secret-0123456789", {"X-Api-Key": "secret-0123456789"},
        b"not json secret-0123456789 \xff", [])
    dumped = orjson.loads((tmp_path / "p" / "id.request.json").read_bytes())
    masked = mask_secret("secret-0123456789")
    assert dumped["url"] == f"http://u/x?key={masked}"
    assert dumped["headers"] == {"X-Api-Key": masked}
    assert dumped["body_text"] == f"not json {masked} \ufffd" and "body" not in dumped


def test_dump_failures_never_raise(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    dump = Dumper(str(blocker), "p", []).begin("id", "POST", "http://u/x", {}, b"{}", [])
    assert isinstance(dump, Dump)
    relay = [b"a", b"b"]
    assert dump.stream(relay, 200, []) is relay  # nothing to dump into: the relay as it is
    dump.whole(200, [], b"x")
    dump.close()


def _assert_no_secret(root: Path, users) -> None:
    files = [path for path in root.rglob("*") if path.is_file()]
    assert files
    for path in files:
        data = path.read_bytes()
        for secret in _secrets(users):
            assert secret.encode() not in data, f"{secret[:6]}... in {path}"
