"""Which client made a request, and its session, from the User-Agent and the client's own headers."""

from __future__ import annotations

import hashlib
from typing import Mapping, NamedTuple


class ClientInfo(NamedTuple):
    name: str
    session_id: str | None


# (client name, User-Agent prefixes or fragments, identifying header names), most specific first.
_CLIENTS: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("Claude Code", ("claude-cli/", "claude-code/"), ("x-claude-code-session-id",)),
    ("Codex", ("codex_cli_rs/", "codex_exec/", "codex-tui/", "codex_vscode/"), ()),
    ("Cursor", ("cursor/",), ("x-cursor-client-version",)),
    ("GitHub Copilot CLI", ("copilot/", "github-copilot-cli/"), ()),
    ("GitHub Copilot", ("githubcopilotchat/", "githubcopilot/"), ("copilot-integration-id",)),
    ("Zed", ("zed/",), ()),
    ("Kilo Code", ("kilo-code/", "kilocode/"), ()),
    ("Roo Code", ("roo-code/", "roocode/"), ()),
    ("Cline", ("cline/",), ()),
    ("openai-python", ("openai/python",), ()),
    ("openai-node", ("openai/js",), ()),
    ("anthropic-python", ("anthropic/python",), ()),
    ("anthropic-typescript", ("anthropic/js",), ()),
)
# Apps built on an SDK name themselves in X-Title (OpenRouter convention) or Codex's "originator".
_TITLES = {"kilo code": "Kilo Code", "roo code": "Roo Code", "cline": "Cline", "zed": "Zed"}
_SESSION_HEADERS = ("x-claude-code-session-id", "session_id", "session-id", "x-session-id", "vscode-sessionid")


#: A client session id longer than this is recorded shortened (``capped_session_id``).
SESSION_ID_MAX = 256
_SESSION_ID_HEAD = 200


_MARKER_HEADERS = tuple(dict.fromkeys(marker for _, _, markers in _CLIENTS for marker in markers))
_ANY_AGENT = tuple(agent for _, agents, _ in _CLIENTS for agent in agents)


def identify_client(headers: Mapping[str, str]) -> ClientInfo:
    user_agent = (headers.get("User-Agent") or "").lower()
    session_id = next((headers[name] for name in _SESSION_HEADERS if headers.get(name)), None)
    originator = (headers.get("originator") or "").lower()
    if originator.startswith("codex"):
        return ClientInfo("Codex", session_id)
    title = _TITLES.get((headers.get("X-Title") or "").strip().lower())
    if title:
        return ClientInfo(title, session_id)
    markers = {marker for marker in _MARKER_HEADERS if headers.get(marker)}
    if markers or user_agent.startswith(_ANY_AGENT):
        for name, agents, marker_headers in _CLIENTS:
            if user_agent.startswith(agents) or not markers.isdisjoint(marker_headers):
                return ClientInfo(name, session_id)
    return ClientInfo("Unknown", session_id)


def capped_session_id(session_id: str | None) -> str | None:
    """A session id of at most SESSION_ID_MAX characters: a longer one is its first 200, "…" and 16 hex
    of its sha256. It is copied into every row and index of its session, and the API must open it by
    URL: an 8,000-character id would cost 24 times its interception's storage and never open (414).
    Two long ids stay distinct, and the same one is always the same session."""
    if session_id is None or len(session_id) <= SESSION_ID_MAX:
        return session_id
    digest = hashlib.sha256(session_id.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{session_id[:_SESSION_ID_HEAD]}…{digest}"
