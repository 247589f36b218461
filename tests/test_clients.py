"""Client and session detection from request headers (SPEC §6)."""

from __future__ import annotations

import pytest
from werkzeug.datastructures import Headers

from bridge.clients import SESSION_ID_MAX, capped_session_id, identify_client


@pytest.mark.parametrize("headers, client, session", [
    ({"User-Agent": "claude-cli/2.1.332 (external, sdk-cli)", "X-Claude-Code-Session-Id": "s-1"}, "Claude Code", "s-1"),
    ({"User-Agent": "codex_cli_rs/0.171.0 (Debian 12; x86_64) xterm", "session_id": "0199-abc"}, "Codex", "0199-abc"),
    ({"User-Agent": "codex_exec/0.171.0 (Debian 12; x86_64)", "originator": "codex_exec", "session_id": "x"}, "Codex", "x"),
    ({"User-Agent": "OpenAI/Python 3.57.0", "originator": "codex_cli_rs"}, "Codex", None),
    ({"User-Agent": "GitHubCopilotChat/0.31.0", "Copilot-Integration-Id": "vscode-chat", "Vscode-Sessionid": "v-9"},
     "GitHub Copilot", "v-9"),
    ({"User-Agent": "copilot/0.0.339 (linux v22) term/xterm"}, "GitHub Copilot CLI", None),
    ({"User-Agent": "Zed/0.205.1 (linux; x86_64)"}, "Zed", None),
    ({"User-Agent": "OpenAI/JS 5.0", "X-Title": "Kilo Code"}, "Kilo Code", None),
    ({"User-Agent": "OpenAI/JS 5.0", "X-Title": "Roo Code"}, "Roo Code", None),
    ({"User-Agent": "Cursor/1.7 (darwin)"}, "Cursor", None),
    ({"User-Agent": "OpenAI/Python 3.57.0"}, "openai-python", None),
    ({"User-Agent": "Anthropic/Python 2.14.0"}, "anthropic-python", None),
    ({"User-Agent": "Anthropic/JS 0.60.0"}, "anthropic-typescript", None),
    ({"User-Agent": "curl/8.5.0"}, "Unknown", None),
    ({}, "Unknown", None),
])
def test_identify_client(headers, client, session):
    assert identify_client(Headers(headers)) == (client, session)


@pytest.mark.parametrize("key, default, type_", [
    ("User-Agent", None, None), ("user-agent", None, None), ("USER_AGENT", None, None),
    ("Content-Type", None, None), ("content-length", None, None), ("Content-Length", 0, int),
    ("X-Title", None, None), ("X-Title", "none", None), ("Content-Type", None, int),
    ("X-Claude-Code-Session-Id", None, None), ("Authorization", "", None), ("", None, None),
])
def test_request_headers_read_as_werkzeug_reads_them(key, default, type_):
    """The gateway's cheaper header lookup gives what werkzeug's own gives, present or absent."""
    from werkzeug.datastructures import EnvironHeaders

    from bridge.app import GatewayRequest

    environ = {"HTTP_USER_AGENT": "claude-cli/2.0", "CONTENT_TYPE": "application/json", "CONTENT_LENGTH": "42",
               "HTTP_X_CLAUDE_CODE_SESSION_ID": "s-1", "HTTP_AUTHORIZATION": "Bearer t", "REQUEST_METHOD": "POST",
               "wsgi.input": None}
    headers = GatewayRequest(environ).headers
    assert headers.get(key, default, type_) == EnvironHeaders(environ).get(key, default, type_)
    assert dict(headers.items()) == dict(EnvironHeaders(environ).items())


def test_a_session_id_past_the_cap_is_shortened_distinctly_and_the_same_way_each_time() -> None:
    assert capped_session_id(None) is None
    at_cap = "x" * SESSION_ID_MAX
    assert capped_session_id(at_cap) == at_cap
    longer, other = at_cap + "y", at_cap + "z"
    capped = capped_session_id(longer)
    assert capped == capped_session_id(longer) and len(capped) == 217 and capped.startswith("x" * 200 + "…")
    assert capped_session_id(other) != capped and capped_session_id(other)[:201] == capped[:201]
