"""What is measured: one scenario = one API, blocking or streamed, served by one mock base URL."""

from __future__ import annotations

from dataclasses import dataclass

import bodies


@dataclass(frozen=True)
class Scenario:
    name: str        # also the provider name in bridge and the model alias in LiteLLM
    api: str         # openai | anthropic | responses
    stream: bool
    kind: str = "canned"  # canned (nginx, whole body at once) | paced (mockserver, one event per interval)
    events: int = bodies.STREAM_EVENTS
    interval_ms: int = 0

    def mock_prefix(self) -> str:
        """The path prefix on the mock that plays the role of the provider's base URL (without v1/)."""
        if self.kind == "paced":
            return f"/p/{self.api}/{self.events}/{self.interval_ms}/"
        return f"/s/{self.name}/"

    def api_path(self) -> str:
        return bodies.API_PATHS[self.api]

    def request_body(self) -> dict:
        return bodies.REQUEST_BUILDERS[self.api](self.stream)


CANNED = [
    Scenario("oai-block", "openai", False),
    Scenario("oai-stream", "openai", True),
    Scenario("ant-block", "anthropic", False),
    Scenario("ant-stream", "anthropic", True),
    Scenario("resp-block", "responses", False),
    Scenario("resp-stream", "responses", True),
]
CANNED_BY_NAME = {s.name: s for s in CANNED}
#: The four the issue's CPU target is judged on.
CPU_TARGET_SCENARIOS = ("oai-block", "oai-stream", "ant-block", "ant-stream")


def paced(api: str, events: int, interval_ms: int, name: str) -> Scenario:
    return Scenario(name, api, True, kind="paced", events=events, interval_ms=interval_ms)
