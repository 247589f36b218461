"""The real Claude Code CLI through the gateway, offline, on 127.0.0.1 only.

Claude Code is installed from the npm registry into tests/e2e/node_modules (`npm ci --prefix tests/e2e
--no-audit --no-fund`; .ci/run does it). The fake upstream picks its answer from the `X-Fixture`
header, which Claude Code sends on every request when told to by ANTHROPIC_CUSTOM_HEADERS.

Claude Code retries failed API calls itself (even a 401, for minutes); CLAUDE_CODE_MAX_RETRIES=0
makes a failure show at once. Every run is bounded by RUN_TIMEOUT.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ANTHROPIC_KEY
from tests.fakeupstream import FakeUpstream, RecordedRequest, load_fixtures
from tests.harness import REPO, ClientRun, wait_for_session

E2E_DIR = REPO / "tests" / "e2e"
CLAUDE_VERSION = "2.1.332"
INSTALL = "npm ci --prefix tests/e2e --no-audit --no-fund"
RUN_TIMEOUT = 90.0

FIXTURES = load_fixtures()
PROMPT = "Write a haiku about the sea."
ANSWER = FIXTURES["anthropic/simple_text"]["blocking"]["body"]["content"][0]["text"]

# Upstream paths Claude Code may use (one -p run sends only /v1/messages; interactive use also
# counts tokens and lists models). Claude Code adds ?beta=true.
CLAUDE_PATHS = {"/v1/messages", "/v1/messages/count_tokens", "/v1/models"}

_PROXY_VARIABLES = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}


# ---------------------------------------------------------------- running claude

def claude_env(home: Path, settings: dict[str, str]) -> dict[str, str]:
    """The machine's environment without anything that would point Claude Code elsewhere, plus ``settings``."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("ANTHROPIC_", "CLAUDE", "CODER_")) and key.lower() not in _PROXY_VARIABLES}
    env.update({
        "HOME": str(home),
        "NO_PROXY": "127.0.0.1,localhost",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_AUTOUPDATER": "1",
        "CLAUDE_CODE_MAX_RETRIES": "0",
    })
    env.update(settings)
    return env


@pytest.fixture(scope="session")
def claude(tmp_path_factory) -> list[str]:
    """The command that runs Claude Code; fails (never skips) when it is not installed."""
    home = tmp_path_factory.mktemp("claude-version")
    candidates = [
        [str(E2E_DIR / "node_modules" / ".bin" / "claude")],
        # If npm did not run the package's postinstall (which puts the native binary in place),
        # the package's own wrapper finds and runs it.
        ["node", str(E2E_DIR / "node_modules" / "@anthropic-ai" / "claude-code" / "cli-wrapper.cjs")],
    ]
    problems = []
    for argv in candidates:
        if not Path(argv[-1]).exists():
            problems.append(f"{argv[-1]} does not exist")
            continue
        try:
            done = subprocess.run([*argv, "--version"], env=claude_env(home, {}), cwd=home, capture_output=True,
                                  text=True, timeout=60, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as error:
            problems.append(f"{' '.join(argv)} --version: {error}")
            continue
        if done.returncode == 0 and CLAUDE_VERSION in done.stdout:
            return argv
        problems.append(f"{' '.join(argv)} --version: exit {done.returncode}: {(done.stdout + done.stderr).strip()[:300]}")
    pytest.fail(f"Claude Code {CLAUDE_VERSION} is not installed in {E2E_DIR}/node_modules; install it with "
                f"`{INSTALL}` (.ci/run does). Tried: " + "; ".join(problems))


ClaudeRun = ClientRun


def run_claude(claude: list[str], tmp_path: Path, upstream: FakeUpstream, base_url: str, credentials: dict[str, str],
               fixture: str, *args: str, prompt: str = PROMPT) -> ClaudeRun:
    """``claude -p PROMPT ARGS`` with a fresh HOME in an empty folder; bounded by RUN_TIMEOUT."""
    run_dir = Path(tmp_path) / f"claude-{len(list(Path(tmp_path).glob('claude-*')))}"
    home, work = run_dir / "home", run_dir / "work"
    home.mkdir(parents=True)
    work.mkdir()
    env = claude_env(home, {"ANTHROPIC_BASE_URL": base_url, "ANTHROPIC_CUSTOM_HEADERS": f"X-Fixture: {fixture}",
                            **credentials})
    before = len(upstream.requests)
    with open(run_dir / "stdout", "wb") as out, open(run_dir / "stderr", "wb") as err:
        process = subprocess.Popen([*claude, "-p", prompt, *args], env=env, cwd=work, stdout=out, stderr=err,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            process.wait(timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # its own session: claude and whatever it started
            process.wait(timeout=10)
            pytest.fail(f"claude did not finish within {RUN_TIMEOUT}s:\n"
                        + ClaudeRun(-1, (run_dir / "stdout").read_text(errors="replace"),
                                    (run_dir / "stderr").read_text(errors="replace"),
                                    upstream.requests[before:]).describe())
    return ClaudeRun(process.returncode, (run_dir / "stdout").read_text(errors="replace"),
                     (run_dir / "stderr").read_text(errors="replace"), upstream.requests[before:])


def _path(request: RecordedRequest) -> str:
    return request.path.split("?", 1)[0]


def _credentials(kind: str, token: str) -> dict[str, str]:
    return {"api_key": {"ANTHROPIC_API_KEY": token}, "auth_token": {"ANTHROPIC_AUTH_TOKEN": token}}[kind]


def assert_centralized(run: ClaudeRun, token: str, fixture: str) -> None:
    """Every request reached the fake as the gateway sends it: provider key, no gateway token."""
    assert run.requests, f"the fake upstream received nothing\n{run.describe()}"
    for request in run.requests:
        assert _path(request) in CLAUDE_PATHS, f"unexpected upstream request {request.method} {request.path}"
        assert request.headers.get("x-fixture") == fixture  # ANTHROPIC_CUSTOM_HEADERS went through
        assert request.headers.get("x-api-key") == ANTHROPIC_KEY
        assert "authorization" not in request.headers
        leaked = [name for name, value in request.headers.items() if token in value]
        assert not leaked, f"the gateway token went upstream in {leaked}"
        assert token.encode() not in request.body


# ---------------------------------------------------------------- through the gateway

@pytest.mark.parametrize("kind", ["api_key", "auth_token"])
def test_claude_code_answers_through_the_gateway(kind, claude, tmp_path, gateway, upstream, identities):
    token = identities.alice if kind == "api_key" else identities.bob
    run = run_claude(claude, tmp_path, upstream, gateway.base("anthropic"), _credentials(kind, token),
                     "anthropic/simple_text")
    assert run.returncode == 0, run.describe()
    assert ANSWER in run.stdout, run.describe()

    messages = [r for r in run.requests if _path(r) == "/v1/messages"]
    assert messages, run.describe()
    first = messages[0]
    assert first.method == "POST"
    assert first.json["stream"] is True
    assert first.headers["user-agent"].startswith("claude-cli/"), first.headers["user-agent"]
    # Claude Code 2.1.332 sends the prompt as the last text part of the last *user* message; a
    # message with role "system" (its environment block) follows it.
    users = [m for m in first.json["messages"] if m["role"] == "user"]
    assert users and users[-1]["content"][-1] == {"type": "text", "text": PROMPT}, json.dumps(first.json["messages"])[:3000]
    assert_centralized(run, token, "anthropic/simple_text")


def test_claude_code_reports_the_upstream_usage(claude, tmp_path, gateway, upstream, identities):
    """--output-format json: Claude Code read the whole relayed stream, usage included."""
    run = run_claude(claude, tmp_path, upstream, gateway.base("anthropic"), _credentials("api_key", identities.alice),
                     "anthropic/cached_tokens", "--output-format", "json")
    assert run.returncode == 0, run.describe()
    result = json.loads(run.stdout)
    expected = FIXTURES["anthropic/cached_tokens"]["expect"]["usage"]
    assert result["is_error"] is False
    assert result["result"].strip() == FIXTURES["anthropic/cached_tokens"]["blocking"]["body"]["content"][0]["text"].strip()
    assert result["usage"]["input_tokens"] == expected["input_tokens"]
    assert result["usage"]["output_tokens"] == expected["output_tokens"]
    assert result["usage"]["cache_read_input_tokens"] == expected["cache_read_input_tokens"]
    assert result["usage"]["cache_creation_input_tokens"] == expected["cache_write_input_tokens"]
    assert_centralized(run, identities.alice, "anthropic/cached_tokens")


def test_claude_code_tool_turns_go_through_the_gateway(claude, tmp_path, gateway, upstream, identities):
    """The model asks for a tool Claude Code does not have; Claude Code answers with a tool_result
    in a second request, then stops at --max-turns."""
    run = run_claude(claude, tmp_path, upstream, gateway.base("anthropic"), _credentials("api_key", identities.alice),
                     "anthropic/tool_use", "--max-turns", "2")
    assert run.returncode != 0 and "max turns" in run.output.lower(), run.describe()
    messages = [r for r in run.requests if _path(r) == "/v1/messages"]
    assert len(messages) >= 2, run.describe()
    tool_use_ids = re.findall(r'"id":"(toolu_[A-Za-z0-9]+)"', "".join(FIXTURES["anthropic/tool_use"]["streaming"]["events"]))
    second = json.dumps(messages[1].json["messages"])
    assert tool_use_ids and all(f'"tool_use_id": "{i}"' in second for i in tool_use_ids), second[-2000:]
    assert_centralized(run, identities.alice, "anthropic/tool_use")


@pytest.mark.parametrize("kind, case", [("api_key", "unknown"), ("auth_token", "unknown"), ("api_key", "revoked")])
def test_invalid_gateway_token_is_an_authentication_error(kind, case, claude, tmp_path, gateway, upstream, identities):
    if case == "unknown":
        token = "bridge-not-a-real-token-0123456789abcdef"
    else:
        token, row = identities.token("bob")
        assert identities.store.identity.revoke_token(row["id"])
    run = run_claude(claude, tmp_path, upstream, gateway.base("anthropic"), _credentials(kind, token),
                     "anthropic/simple_text")
    assert run.returncode != 0, run.describe()
    # What Claude Code 2.1.332 prints: "Failed to authenticate. API Error: 401 invalid gateway token: ..."
    assert re.search(r"authenticat|\b401\b|invalid", run.output, re.IGNORECASE), run.describe()
    assert ANSWER not in run.stdout
    assert token not in run.output
    assert run.requests == [], "a request with a bad gateway token must not reach the upstream"



def test_claude_code_calls_are_recorded(claude, tmp_path, gateway, upstream, identities, database):
    run = run_claude(claude, tmp_path, upstream, gateway.base("anthropic"), _credentials("api_key", identities.alice),
                     "anthropic/simple_text")
    assert run.returncode == 0, run.describe()
    messages = [r for r in run.requests if _path(r) == "/v1/messages"]
    session_id = messages[0].headers["x-claude-code-session-id"]
    records = wait_for_session(database, session_id, len(messages))
    assert len(records) == len(messages), f"{len(messages)} interception(s) expected for session {session_id}: {records}"
    record = records[0]
    alice = identities.store.identity.get_user("alice")
    assert record["initiator_id"] == alice["id"]
    assert (record["provider"], record["provider_name"]) == ("anthropic", "anthropic")
    assert record["model"] == messages[0].json["model"]
    assert record["client"] == "Claude Code"
    assert record["user_agent"] == messages[0].headers["user-agent"]
    assert record["credential_kind"] == "centralized"
    assert identities.alice not in json.dumps(record) and ANTHROPIC_KEY not in json.dumps(record)
    expected = FIXTURES["anthropic/simple_text"]["expect"]["usage"]
    assert [(u["input_tokens"], u["output_tokens"]) for u in record["token_usages"]] == \
        [(expected["input_tokens"], expected["output_tokens"])]


def test_claude_code_prompt_is_recorded(claude, tmp_path, gateway, upstream, identities, database):
    """Claude Code 2.1.332 ends `messages` with a role "system" message (its environment block)
    after the user's; the prompt is still the user's last message, and its last text part."""
    run = run_claude(claude, tmp_path, upstream, gateway.base("anthropic"), _credentials("api_key", identities.alice),
                     "anthropic/simple_text")
    assert run.returncode == 0, run.describe()
    messages = [r for r in run.requests if _path(r) == "/v1/messages"]
    records = wait_for_session(database, messages[0].headers["x-claude-code-session-id"], len(messages))
    assert records, run.describe()
    prompts = [p["prompt"] for p in records[0]["user_prompts"]]
    assert prompts == [PROMPT]  # what the user typed, without the client's system reminders


# ---------------------------------------------------------------- the gateway is invisible to Claude Code

SAME_AS_DIRECT = [
    "simple_text", "thinking", "redacted_thinking", "cached_tokens", "multiturn_image", "web_search", "tool_result",
    "max_tokens", "http_400", "http_401", "http_429", "http_500", "http_529", "error_midstream", "cut_stream",
    "tool_use", "parallel_tool_use",
]


@pytest.mark.parametrize("name", SAME_AS_DIRECT)
def test_claude_code_prints_the_same_through_the_gateway_as_direct(name, claude, tmp_path, gateway, upstream, identities):
    """What the user sees (exit code, output) is the same as with Claude Code talking to the upstream
    itself. (A stream cut short differs on the wire by design: the gateway ends it with an error event
    instead of a broken connection; Claude Code handles both the same way.)"""
    fixture = f"anthropic/{name}"
    extra = ["--max-turns", "2"] if "tool_use" in name else []
    direct = run_claude(claude, tmp_path, upstream, upstream.url, {"ANTHROPIC_API_KEY": ANTHROPIC_KEY}, fixture, *extra)
    relayed = run_claude(claude, tmp_path, upstream, gateway.base("anthropic"),
                         _credentials("api_key", identities.alice), fixture, *extra)

    def shown(run: ClaudeRun) -> tuple[int, str]:
        return run.returncode, re.sub(r"127\.0\.0\.1:\d+", "HOST", run.output).strip()

    assert shown(relayed) == shown(direct), f"direct:\n{direct.describe()}\n\nthrough the gateway:\n{relayed.describe()}"
    assert shown(relayed)[1], "Claude Code printed nothing"
    assert_centralized(relayed, identities.alice, fixture)
