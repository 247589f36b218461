"""The real Codex CLI through the gateway (Responses API), offline, on 127.0.0.1 only.

Codex is installed from the npm registry into tests/e2e/node_modules next to Claude Code (`npm ci --prefix
tests/e2e --no-audit --no-fund`; .ci/run does it). `@openai/codex` is a small node launcher; the native
binary comes in the optional dependency `@openai/codex-linux-x64` (an npm alias of
`@openai/codex@0.171.0-linux-x64`), which `npm ci` installs on linux x64 from the lock file.

Each run gets a fresh HOME and CODEX_HOME=$HOME/.codex whose config.toml points the model provider
"bridge" at the gateway (or, for the same-as-direct comparisons, at the fake upstream itself):
  - `http_headers = { "X-Fixture" = ... }`: Codex sends it on every request, so the fake picks the fixture;
  - `stream_max_retries = 0`, `request_max_retries = 0`: by default Codex re-sends the turn on any failure,
    even a 401 (stream_max_retries 5: "Reconnecting... 1/5" ... "5/5", 6 requests), and retries a 5xx
    within an attempt (request_max_retries 4: 5 requests); with 0 a failure shows at once, after one request;
  - `check_for_update_on_startup = false`, `[analytics] enabled = false`, `[otel] exporter = "none"` (and
    the metrics / trace exporters), `[features] plugins = false`: with the defaults Codex 0.171.0 looks up
    api.github.com (curated plugin sync) and ab.chatgpt.com (OTLP metrics) in the background. With these
    its only connections are to the base_url (checked with strace).
`--strict-config` makes Codex refuse a key it does not know, so a typo here cannot silently re-enable any
of that. Every run is bounded by RUN_TIMEOUT.

What Codex 0.171.0 sends (`codex exec`): `POST <base_url>/responses` with `stream: true`, `store: false`,
`reasoning: {"summary": "auto"}`, `include: ["reasoning.encrypted_content"]`, its tools, and as `input`
two developer messages, a user message with its <environment_context>, then the prompt as the last user
message (`[{"type": "input_text", "text": PROMPT}]`). Headers: `Authorization: Bearer $BRIDGE_TOKEN`,
`User-Agent: codex_exec/0.171.0 (...)`, `originator: codex_exec`, and the session as `session-id` (with a
hyphen; also `thread-id` and `x-client-request-id`, all the same id).

Codex has no "max turns": a function call it cannot run is answered with a function_call_output and the
next request goes out at once, so a fake that replays the same function_call forever makes it loop. The
tool-turn tests use a fake upstream of their own that answers a request ending with a tool output with
`openai_responses/tool_result` (the fixture continuing `function_call`).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import OPENAI_KEY, provider_env
from tests.fakeupstream import FakeUpstream, RecordedRequest, load_fixtures
from tests.fakeupstream import _Handler as _FakeHandler
from tests.harness import REPO, ClientRun, wait_for_session

E2E_DIR = REPO / "tests" / "e2e"
CODEX_VERSION = "0.171.0"
INSTALL = "npm ci --prefix tests/e2e --no-audit --no-fund"
RUN_TIMEOUT = 90.0
MODEL = "gpt-5"

FIXTURES = load_fixtures()
ANSWER = "Bonjour !"  # openai_responses/simple_text
DEFAULT_PROMPT = "Write a haiku about the sea."

_PROXY_VARIABLES = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}
_TOOL_OUTPUTS = {"function_call_output", "custom_tool_call_output"}


def _prompt(fixture: str) -> str:
    """The fixture's own user prompt when it has one, so the recorded prompt is the one Codex was given."""
    prompt = FIXTURES[fixture]["expect"].get("prompt")
    return prompt if isinstance(prompt, str) and "\n" not in prompt and len(prompt) < 200 else DEFAULT_PROMPT


def _output_text(fixture: str) -> str:
    """The text of the final answer in a Responses fixture."""
    body = FIXTURES[fixture]["blocking"]["body"]
    texts = [part["text"] for item in body["output"] if item["type"] == "message" and item.get("phase") != "commentary"
             for part in item["content"] if part["type"] == "output_text"]
    return texts[-1]


assert _output_text("openai_responses/simple_text") == ANSWER


# ---------------------------------------------------------------- running codex

def _toml(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def codex_config(base_url: str, fixture: str) -> str:
    return f"""\
model = {_toml(MODEL)}
model_provider = "bridge"
check_for_update_on_startup = false

[model_providers.bridge]
name = "bridge"
base_url = {_toml(base_url)}
env_key = "BRIDGE_TOKEN"
wire_api = "responses"
request_max_retries = 0
stream_max_retries = 0
http_headers = {{ "X-Fixture" = {_toml(fixture)} }}

[analytics]
enabled = false

[otel]
exporter = "none"
metrics_exporter = "none"
trace_exporter = "none"

[features]
plugins = false
"""


def codex_env(home: Path, settings: dict[str, str]) -> dict[str, str]:
    """The machine's environment without anything that would point Codex elsewhere, plus ``settings``."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("OPENAI_", "CODEX_", "CODER_", "BRIDGE_")) and key.lower() not in _PROXY_VARIABLES}
    env.update({"HOME": str(home), "CODEX_HOME": str(home / ".codex"), "NO_PROXY": "127.0.0.1,localhost"})
    env.update(settings)
    return env


@pytest.fixture(scope="session")
def codex(tmp_path_factory) -> list[str]:
    """The command that runs Codex; fails (never skips) when it is not installed."""
    home = tmp_path_factory.mktemp("codex-version")
    (home / ".codex").mkdir()
    argv = [str(E2E_DIR / "node_modules" / ".bin" / "codex")]
    problem = f"{argv[0]} does not exist"
    if Path(argv[0]).exists():
        try:
            done = subprocess.run([*argv, "--version"], env=codex_env(home, {}), cwd=home, capture_output=True,
                                  text=True, timeout=60, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as error:
            problem = f"{argv[0]} --version: {error}"
        else:
            if done.returncode == 0 and CODEX_VERSION in done.stdout:
                return argv
            text = (done.stdout + done.stderr).strip()
            # e.g. "Error: Missing optional dependency @openai/codex-linux-x64" when npm skipped the native binary
            detail = next((line for line in text.splitlines() if line.startswith("Error:")), text[:300])
            problem = f"{argv[0]} --version: exit {done.returncode}: {detail}"
    pytest.fail(f"Codex {CODEX_VERSION} is not installed in {E2E_DIR}/node_modules; install it with "
                f"`{INSTALL}` (.ci/run does). {problem}")


@dataclass
class CodexRun(ClientRun):
    run_dir: Path


def run_codex(codex: list[str], tmp_path: Path, upstream: FakeUpstream, base_url: str, token: str, fixture: str,
              prompt: str | None = None) -> CodexRun:
    """``codex exec PROMPT`` with a fresh HOME in an empty folder (not a git repository); bounded by RUN_TIMEOUT."""
    run_dir = Path(tmp_path) / f"codex-{len(list(Path(tmp_path).glob('codex-*')))}"
    home, work = run_dir / "home", run_dir / "work"
    (home / ".codex").mkdir(parents=True)
    work.mkdir()
    (home / ".codex" / "config.toml").write_text(codex_config(base_url, fixture))
    env = codex_env(home, {"BRIDGE_TOKEN": token})
    argv = [*codex, "exec", "--skip-git-repo-check", "--strict-config", prompt or _prompt(fixture)]
    before = len(upstream.requests)
    with open(run_dir / "stdout", "wb") as out, open(run_dir / "stderr", "wb") as err:
        process = subprocess.Popen(argv, env=env, cwd=work, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
        try:
            process.wait(timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # its own session: the node launcher and the native binary
            process.wait(timeout=10)
            pytest.fail(f"codex did not finish within {RUN_TIMEOUT}s:\n"
                        + CodexRun(-1, (run_dir / "stdout").read_text(errors="replace"),
                                   (run_dir / "stderr").read_text(errors="replace"),
                                   upstream.requests[before:], run_dir).describe())
    return CodexRun(process.returncode, (run_dir / "stdout").read_text(errors="replace"),
                    (run_dir / "stderr").read_text(errors="replace"), upstream.requests[before:], run_dir)


def _path(request: RecordedRequest) -> str:
    return request.path.split("?", 1)[0]


def _responses(run: CodexRun) -> list[RecordedRequest]:
    return [r for r in run.requests if r.method == "POST" and _path(r) == "/v1/responses"]


def assert_centralized(run: CodexRun, token: str, fixture: str) -> None:
    """Every request reached the fake as the gateway sends it: the provider key, never the gateway token."""
    assert run.requests, f"the fake upstream received nothing\n{run.describe()}"
    for request in run.requests:
        assert (request.method, _path(request)) == ("POST", "/v1/responses"), \
            f"unexpected upstream request {request.method} {request.path}"
        assert request.json["stream"] is True
        assert request.headers.get("x-fixture") == fixture  # Codex's http_headers went through
        assert request.headers.get("authorization") == f"Bearer {OPENAI_KEY}"
        leaked = [name for name, value in request.headers.items() if token in value]
        assert not leaked, f"the gateway token went upstream in {leaked}"
        assert token.encode() not in request.body



def _session_id(request: RecordedRequest) -> str:
    """Codex 0.171.0 names its session in `session-id` (hyphen); `thread-id` and `x-client-request-id` carry the same id."""
    return request.headers["session-id"]


def _tokens_used(fixture: str) -> str:
    """What Codex prints after "tokens used": input tokens not read from the cache plus output tokens
    (cached_tokens: 20,000 in, 18,000 cached, 412 out -> "2,412"), with thousands separators."""
    usage = FIXTURES[fixture]["expect"]["usage"]
    return f"tokens used\n{usage['input_tokens'] + usage['output_tokens']:,}\n"


# ---------------------------------------------------------------- a fake upstream that answers tool outputs

TOOL_RESULT = "openai_responses/tool_result"
TOOL_FIXTURES = ("custom_tool_call", "function_call", "parallel_function_calls")  # the model calls tools


class _ContinuingHandler(_FakeHandler):
    """The fake's handler, except that a request whose last input item is a tool output gets
    openai_responses/tool_result (whatever X-Fixture says): the model's answer after the tool ran."""

    def _serve_fixture(self, name: str, req: RecordedRequest) -> None:
        items = req.json.get("input") if isinstance(req.json, dict) else None
        if isinstance(items, list) and items and isinstance(items[-1], dict) and items[-1].get("type") in _TOOL_OUTPUTS:
            name = TOOL_RESULT
        super()._serve_fixture(name, req)


@pytest.fixture(scope="module")
def tool_upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream().start()
    fake._server.RequestHandlerClass = _ContinuingHandler
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def tool_gateway(start_gateway, tool_upstream):
    return start_gateway(provider_env(tool_upstream), workers=1)


# ---------------------------------------------------------------- through the gateway

def test_codex_answers_through_the_gateway(codex, tmp_path, gateway, upstream, identities):
    fixture = "openai_responses/simple_text"
    run = run_codex(codex, tmp_path, upstream, gateway.base("openai") + "/v1", identities.alice, fixture)
    assert run.returncode == 0, run.describe()
    assert run.stdout == ANSWER + "\n", run.describe()  # codex exec prints only the final answer on stdout
    assert _tokens_used(fixture) in run.stderr, run.describe()  # it read the relayed stream to the end (usage)

    [first] = _responses(run)
    assert first.json["stream"] is True
    assert first.json["model"] == MODEL
    assert first.headers["user-agent"].startswith(f"codex_exec/{CODEX_VERSION} "), first.headers["user-agent"]
    assert first.headers["originator"] == "codex_exec"
    assert re.fullmatch(r"[0-9a-f-]{36}", _session_id(first)), first.headers
    last = {key: value for key, value in first.json["input"][-1].items() if key != "id"}  # Codex numbers its items
    assert last == {"type": "message", "role": "user", "content": [{"type": "input_text", "text": _prompt(fixture)}]}, \
        json.dumps(first.json["input"])[-2000:]
    assert_centralized(run, identities.alice, fixture)


@pytest.mark.parametrize("name", ["simple_text", "cached_tokens", "reasoning_summary", "commentary"])
def test_codex_calls_are_recorded(name, codex, tmp_path, gateway, upstream, identities, database):
    fixture = f"openai_responses/{name}"
    run = run_codex(codex, tmp_path, upstream, gateway.base("openai") + "/v1", identities.bob, fixture)
    assert run.returncode == 0, run.describe()
    assert run.stdout == _output_text(fixture) + "\n", run.describe()
    assert _tokens_used(fixture) in run.stderr, run.describe()
    assert_centralized(run, identities.bob, fixture)

    [request] = _responses(run)
    records = wait_for_session(database, _session_id(request), 1)
    assert len(records) == 1, f"one interception expected for session {_session_id(request)}: {records}"
    record = records[0]
    assert record["initiator_id"] == identities.store.identity.get_user("bob")["id"]
    assert (record["provider"], record["provider_name"]) == ("openai", "openai")
    assert record["model"] == MODEL == request.json["model"]
    assert record["client"] == "Codex"
    assert record["client_session_id"] == _session_id(request)
    assert record["user_agent"] == request.headers["user-agent"]
    assert record["credential_kind"] == "centralized"
    assert record["correlating_tool_call_id"] is None
    assert identities.bob not in json.dumps(record) and OPENAI_KEY not in json.dumps(record)

    expect = FIXTURES[fixture]["expect"]
    usage = expect["usage"]
    assert [(u["input_tokens"], u["output_tokens"], u["cache_read_input_tokens"], u["cache_write_input_tokens"])
            for u in record["token_usages"]] == \
        [(usage["input_tokens"], usage["output_tokens"], usage["cache_read_input_tokens"],
          usage["cache_write_input_tokens"])]
    assert json.loads(record["token_usages"][0]["metadata"]) == usage["metadata"]
    # The prompt Codex was given, without its developer messages and <environment_context>.
    assert [p["prompt"] for p in record["user_prompts"]] == [_prompt(fixture)]
    assert [t["content"] for t in record["model_thoughts"]] == [t["content"] for t in expect["thoughts"]]
    assert record["tool_usages"] == []


@pytest.mark.parametrize("name", TOOL_FIXTURES)
def test_codex_tool_turns_go_through_the_gateway(name, codex, tmp_path, tool_gateway, tool_upstream, identities,
                                                 database):
    """The model calls a tool Codex does not have; Codex answers each call with an output in a second
    request (through the gateway), and the fake answers that with openai_responses/tool_result."""
    fixture = f"openai_responses/{name}"
    run = run_codex(codex, tmp_path, tool_upstream, tool_gateway.base("openai") + "/v1", identities.alice, fixture)
    assert run.returncode == 0, run.describe()
    assert run.stdout == _output_text(TOOL_RESULT) + "\n", run.describe()
    requests = _responses(run)
    assert len(requests) == 2, run.describe()
    assert_centralized(run, identities.alice, fixture)

    calls = FIXTURES[fixture]["expect"]["tool_calls"]
    outputs = [item for item in requests[1].json["input"] if item.get("type") in _TOOL_OUTPUTS]
    assert [o["call_id"] for o in outputs] == [c["id"] for c in calls], json.dumps(requests[1].json["input"])[-3000:]
    assert {_session_id(r) for r in requests} == {_session_id(requests[0])}

    records = wait_for_session(database, _session_id(requests[0]), 2)
    assert len(records) == 2, records
    first, second = records
    assert [(t["provider_tool_call_id"], t["tool"], t["input"]) for t in first["tool_usages"]] == \
        [(c["id"], c["name"], c["input"]) for c in calls]
    assert first["correlating_tool_call_id"] is None
    assert second["correlating_tool_call_id"] == calls[-1]["id"]
    assert [p["prompt"] for p in first["user_prompts"]] == [_prompt(fixture)]
    assert second["user_prompts"] == []  # a turn that only returns tool outputs has no prompt
    for record in records:
        assert (record["client"], record["client_session_id"], record["model"]) == \
            ("Codex", _session_id(requests[0]), MODEL)
    usage = FIXTURES[TOOL_RESULT]["expect"]["usage"]
    assert [(u["input_tokens"], u["output_tokens"]) for u in second["token_usages"]] == \
        [(usage["input_tokens"], usage["output_tokens"])]


@pytest.mark.parametrize("case", ["unknown", "revoked"])
def test_invalid_gateway_token_is_an_authentication_error(case, codex, tmp_path, gateway, upstream, identities):
    if case == "unknown":
        token = "bridge-not-a-real-token-0123456789abcdef"
    else:
        token, row = identities.token("bob")
        assert identities.store.identity.revoke_token(row["id"])
    run = run_codex(codex, tmp_path, upstream, gateway.base("openai") + "/v1", token, "openai_responses/simple_text")
    assert run.returncode != 0, run.describe()
    # What Codex 0.171.0 prints (twice): "ERROR: unexpected status 401 Unauthorized: invalid gateway token: ..., url: ..."
    assert "unexpected status 401 Unauthorized: invalid gateway token" in run.stderr, run.describe()
    assert ANSWER not in run.stdout
    assert token not in run.output
    assert run.requests == [], "a request with a bad gateway token must not reach the upstream"


# ---------------------------------------------------------------- the gateway is invisible to Codex

SAME_AS_DIRECT = [
    "simple_text", "reasoning_summary", "commentary", "cached_tokens", "input_items", "conversation", "tool_result",
    "max_output_tokens", "http_400", "http_401", "http_429", "http_500", "error_midstream", "failed_midstream",
    *TOOL_FIXTURES,
]


def shown(run: CodexRun, base_url: str) -> tuple[int, str, str]:
    """Exit code, stdout and stderr, with what differs from one run to the next replaced:
    the run's own folder (workdir, CODEX_HOME), the session id Codex makes up, log timestamps, and the
    configured base_url (it is in Codex's HTTP error messages: "url: <base_url>/responses")."""
    def normalize(text: str) -> str:
        text = text.replace(str(run.run_dir), "<run>").replace(base_url, "<base_url>")
        text = re.sub(r"(?m)^session id: [0-9a-f-]{36}$", "session id: <session>", text)
        return re.sub(r"\b\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z\b", "<time>", text)
    return run.returncode, normalize(run.stdout), normalize(run.stderr)


GATEWAY_RETRIES = 2  # the default MAX_RETRIES of a provider (SPEC §7)


@pytest.mark.parametrize("name", SAME_AS_DIRECT)
def test_codex_prints_the_same_through_the_gateway_as_direct(name, codex, tmp_path, identities, request):
    """What the user sees (exit code, stdout, stderr) is the same as with Codex talking to the upstream itself.

    A stream cut short (openai_responses/cut_stream) is not in the list: the gateway ends it with an error
    event instead of a broken connection, so Codex words its error differently (see
    test_codex_sees_a_stream_cut_short_the_same_way)."""
    fixture = f"openai_responses/{name}"
    if name in TOOL_FIXTURES:
        fake, gateway = request.getfixturevalue("tool_upstream"), request.getfixturevalue("tool_gateway")
    else:
        fake, gateway = request.getfixturevalue("upstream"), request.getfixturevalue("gateway")
    direct_url, relayed_url = fake.url + "/v1", gateway.base("openai") + "/v1"
    direct = run_codex(codex, tmp_path, fake, direct_url, OPENAI_KEY, fixture)
    relayed = run_codex(codex, tmp_path, fake, relayed_url, identities.alice, fixture)

    assert shown(relayed, relayed_url) == shown(direct, direct_url), \
        f"direct:\n{direct.describe()}\n\nthrough the gateway:\n{relayed.describe()}"
    assert relayed.stdout.strip() or relayed.returncode != 0, "Codex printed nothing"
    # Codex makes the same calls; the gateway itself retries a 429/5xx (twice by default) before answering.
    retried = 1 + GATEWAY_RETRIES if name in ("http_429", "http_500") else 1
    assert len(_responses(relayed)) == retried * len(_responses(direct)), f"{direct.describe()}\n\n{relayed.describe()}"
    assert_centralized(relayed, identities.alice, fixture)


def test_codex_sees_a_stream_cut_short_the_same_way(codex, tmp_path, gateway, upstream, identities):
    """openai_responses/cut_stream: the connection drops after the first reasoning summary. Straight from
    the upstream Codex reports a transport error; through the gateway, which ends the relayed stream
    with an error event instead, it reports the stream ended before `response.completed`. Everything
    else it shows (the summary streamed before the cut, exit status 1) is the same."""
    fixture = "openai_responses/cut_stream"
    direct_url, relayed_url = upstream.url + "/v1", gateway.base("openai") + "/v1"
    direct = run_codex(codex, tmp_path, upstream, direct_url, OPENAI_KEY, fixture)
    relayed = run_codex(codex, tmp_path, upstream, relayed_url, identities.alice, fixture)
    failure = re.compile(r"(?m)^ERROR: stream disconnected before completion: (.*)$")
    assert failure.findall(direct.stderr) == ["Transport error: network error: error decoding response body"] * 2, \
        direct.describe()
    assert failure.findall(relayed.stderr) == ["stream closed before response.completed"] * 2, relayed.describe()

    def without_failure(run: CodexRun, base_url: str) -> tuple[int, str, str]:
        code, out, err = shown(run, base_url)
        return code, out, failure.sub("ERROR: stream disconnected before completion: <why>", err)

    assert without_failure(relayed, relayed_url) == without_failure(direct, direct_url), \
        f"direct:\n{direct.describe()}\n\nthrough the gateway:\n{relayed.describe()}"
    assert relayed.returncode == 1 and relayed.stdout == ""
    summary = FIXTURES[fixture]["expect"]["thoughts"][0]["content"]
    assert summary in relayed.stderr, relayed.describe()
    assert_centralized(relayed, identities.alice, fixture)
