"""One intercepted request's audit trail: its start, and at its end the records of what was seen."""

from __future__ import annotations

import time
from typing import Mapping

from loguru import logger

from bridge import auditlog, metrics
from bridge.auth import Caller
from bridge.clients import identify_client
from bridge.intercept.base import Interceptor
from bridge.masking import mask_secret
from bridge.providers.base import Provider
from bridge.records import json_text, new_id, text
from bridge.timestamps import utc_now
from bridge.recorder import InterceptionEnd, InterceptionStart, Recorder


def _client_credential(headers: Mapping[str, str]) -> str | None:
    """The provider key a BYOK client sent (to be masked)."""
    authorization = headers.get("Authorization") or ""
    return authorization.partition(" ")[2].strip() or headers.get("X-Api-Key")


class Interception:
    def __init__(self, provider: Provider, interceptor: Interceptor, caller: Caller, headers: Mapping[str, str],
                 recorder: Recorder, structured_logging: bool) -> None:
        self.id = new_id()
        self.interceptor = interceptor
        self._recorder = recorder
        self._log = structured_logging
        self._ended = False
        self.status: int | None = None
        self.error: str | None = None
        self.attempts = 0  # upstream calls made (retries included; 0: refused before reaching it)
        self.unreadable = 0  # upstream events (or a body) the interceptor could not read for the record
        client = identify_client(headers)
        self._labels = (provider.name, interceptor.model[:200], client.name)  # a client-chosen label: bounded
        credential = _client_credential(headers) if caller.byok else provider.settings.key
        # Secrets a user may paste into a conversation: never stored, logged or shown back as they are.
        self._secrets = tuple(secret for secret in (caller.token, credential) if secret and len(secret) >= 8)
        self.row = {
            "id": self.id,
            "initiator_id": caller.user_id,
            "provider": provider.type,
            "provider_name": provider.name,
            "model": interceptor.model,
            "client": client.name,
            "client_session_id": client.session_id,
            "user_agent": headers.get("User-Agent"),
            "credential_kind": "byok" if caller.byok else "centralized",
            "credential_hint": mask_secret(credential),
            "correlating_tool_call_id": text(interceptor.correlating_tool_call_id()),
            "started_at": utc_now(),
            "ended_at": None,
            "metadata": json_text({"streaming": interceptor.streaming, **provider.interception_metadata(interceptor)}),
        }

    def begin(self) -> None:
        self._started = time.monotonic()
        metrics.series(metrics.INFLIGHT, *self._labels).inc()
        self._recorder.record(InterceptionStart(self.row))
        if self._log:
            auditlog.log_record("interception_start", self.row)

    def end(self) -> None:
        """Record everything seen (also of a failed or cut response); only the first call counts."""
        if self._ended:
            return
        self._ended = True
        interceptor = self.interceptor
        ended_at = utc_now()
        try:
            usage, prompt, token_usages, user_prompts, tool_usages, model_thoughts = self._children(ended_at)
        except Exception as exc:  # a response the interceptor cannot read: the interception is still ended
            logger.bind(interception_id=self.id).warning("the response could not be read for the record ({})",
                                                         type(exc).__name__)
            self.unreadable += 1
            usage, prompt, token_usages, user_prompts, tool_usages, model_thoughts = None, None, [], [], [], []
        metadata = {"streaming": interceptor.streaming, "status": self.status, "stop_reason": interceptor.stop_reason,
                    "attempts": self.attempts}
        if self.error:
            metadata["error"] = self.error
        if self.unreadable:
            metadata["unreadable_events"] = self.unreadable
        self._recorder.record(InterceptionEnd(self.id, ended_at, metadata, token_usages, user_prompts,
                                              tool_usages, model_thoughts))
        self._count(usage, prompt is not None)
        if self._log:
            for kind, rows in (("token_usage", token_usages), ("prompt_usage", user_prompts),
                               ("tool_usage", tool_usages), ("model_thought", model_thoughts)):
                for row in rows:
                    auditlog.log_record(kind, row)
            auditlog.log_record("interception_end", {"interception_id": self.id, "ended_at": ended_at,
                                                     "metadata": metadata})

    def _children(self, created_at: str) -> tuple:
        """The usage, the prompt and the child rows of everything the interceptor saw."""
        interceptor = self.interceptor
        interceptor.finish()
        base = {"interception_id": self.id, "created_at": created_at}
        response_id = text(interceptor.response_id)
        usage = interceptor.usage()
        token_usages = [{
            **base, "id": new_id(), "provider_response_id": response_id, "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens, "cache_read_input_tokens": usage.cache_read_input_tokens,
            "cache_write_input_tokens": usage.cache_write_input_tokens, "metadata": json_text(usage.metadata),
        }] if usage else []
        prompt = self._masked(interceptor.prompt())
        user_prompts = [{
            **base, "id": new_id(), "provider_response_id": response_id, "prompt": prompt, "metadata": "{}",
        }] if prompt is not None else []
        tool_usages = [{
            **base, "id": new_id(), "provider_response_id": response_id, "provider_tool_call_id": text(call.id),
            "tool": text(call.name), "input": self._masked(json_text(call.input)), "server_url": None,
            "injected": False, "invocation_error": None, "metadata": "{}",
        } for call in interceptor.tool_calls]
        model_thoughts = [{
            **base, "id": new_id(), "content": self._masked(text(thought.content)),
            "metadata": json_text({"source": thought.source}),
        } for thought in interceptor.thoughts]
        return usage, prompt, token_usages, user_prompts, tool_usages, model_thoughts

    def _masked(self, text: str | None) -> str | None:
        for secret in self._secrets:
            if text and secret in text:
                text = text.replace(secret, mask_secret(secret))
        return text

    def _count(self, usage, prompted: bool) -> None:
        labels = self._labels
        series = metrics.series
        series(metrics.INFLIGHT, *labels).dec()
        series(metrics.INTERCEPTIONS, *labels, str(self.status or "none")).inc()
        series(metrics.DURATION, *labels).observe(time.monotonic() - self._started)
        if prompted:
            series(metrics.PROMPTS, *labels).inc()
        if usage:
            for kind, count in (("input", usage.input_tokens), ("output", usage.output_tokens),
                                ("cache_read", usage.cache_read_input_tokens),
                                ("cache_write", usage.cache_write_input_tokens)):
                if count:
                    series(metrics.TOKENS, *labels, kind).inc(count)
        for call in self.interceptor.tool_calls:
            series(metrics.TOOL_SELECTIONS, *labels, call.name).inc()
