"""One intercepted request's audit trail: its start, and at its end the records of what was seen."""

from __future__ import annotations

import time
from typing import Mapping

import orjson
from loguru import logger

from bridge import auditlog, metrics
from bridge.auth import Caller, own_credential
from bridge.clients import identify_client
from bridge.intercept.base import Interceptor
from bridge.masking import Masker, mask_secret, provider_secrets
from bridge.providers.base import Provider
from bridge.records import TRUNCATION_MARKER, cut_text, json_text, new_id, size_text, text
from bridge.timestamps import utc_now
from bridge.recorder import InterceptionEnd, InterceptionStart, Recorder

#: Characters a secret spans at most (keys and tokens are a few hundred at most): masked together with
#: a cut text, so that one running across the cut is masked whole.
_SECRET_SPAN_MAX = 1024


class Interception:
    def __init__(self, provider: Provider, interceptor: Interceptor, caller: Caller, headers: Mapping[str, str],
                 recorder: Recorder, structured_logging: bool, masker: Masker | None = None,
                 recorded_text_max: int = 64 * 1024) -> None:
        """``masker`` masks the secrets of every provider (bridge.masking.configured_secrets); by
        default only those of this one. ``recorded_text_max``: bytes kept of each prompt, tool input
        and thought (CODER_AIBRIDGE_MAX_RECORDED_TEXT)."""
        self.id = new_id()
        self.interceptor = interceptor
        self._recorder = recorder
        self._log = structured_logging
        self._ended = False
        self.status: int | None = None
        self.error: str | None = None
        self.attempts = 0  # upstream calls made (retries included; 0: refused before reaching it)
        self.unreadable = 0  # upstream events (or a body) the interceptor could not read for the record
        self.incomplete: str | None = None  # why the answer was not read to its end for the record
        self._text_max = recorded_text_max
        client = identify_client(headers)
        # the model is client-chosen: bounded per provider (bridge.metrics); the client names are a fixed set
        self._labels = (provider.name, metrics.model_label(provider.name, interceptor.model), client.name)
        credential = own_credential(headers) if caller.byok else provider.settings.key
        # Secrets a user may paste into a conversation: never stored, logged or shown back as they are
        # (a client's own key under 8 characters is no key: masking it would garble the records).
        masker = masker or Masker(provider_secrets(provider.settings))
        self._masker = masker.including(credential) if credential and len(credential) >= 8 else masker
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
            "owner": recorder.owner,  # the process serving it: its interceptions are ended if it stops
            "metadata": json_text({"streaming": interceptor.streaming, **provider.interception_metadata(interceptor)}),
        }
        # Taken now, cut: the request's body is let go once it is sent upstream (Interceptor.forget_request).
        self._prompt = self._cut(interceptor.prompt())

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
        if self.incomplete:
            metadata["record_incomplete"] = self.incomplete
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
        prompt = self._recorded(self._prompt)
        user_prompts = [{
            **base, "id": new_id(), "provider_response_id": response_id, "prompt": prompt, "metadata": "{}",
        }] if prompt is not None else []
        tool_usages = [{
            **base, "id": new_id(), "provider_response_id": response_id, "provider_tool_call_id": text(call.id),
            "tool": text(call.name), "input": self._recorded(self._cut(json_text(call.input)), json=True), "server_url": None,
            "injected": False, "invocation_error": None, "metadata": "{}",
        } for call in interceptor.tool_calls]
        model_thoughts = [{
            **base, "id": new_id(), "content": self._recorded(self._cut(text(thought.content))),
            "metadata": json_text({"source": thought.source}),
        } for thought in interceptor.thoughts]
        return usage, prompt, token_usages, user_prompts, tool_usages, model_thoughts

    def _cut(self, value: str | None) -> tuple[str | None, int]:
        """``value`` as the record may keep it, and the bytes of it left out: whole if it fits
        MAX_RECORDED_TEXT, else its start followed by as much as a secret spans (so that masking, which
        comes next and reads little more than is kept, masks a secret running across the cut whole)."""
        if value is None:
            return None, 0
        head, more = cut_text(value, self._text_max)
        return (value, 0) if not more else (value[:len(head) + _SECRET_SPAN_MAX], more)

    def _recorded(self, cut: tuple[str | None, int], json: bool = False) -> str | None:
        """A text (``_cut``) as the record keeps it: masked, and if it was cut, ended by a marker saying
        how much more there was. A cut tool input (``json``) is kept as a JSON string of its start:
        the column stays JSON text."""
        value, more = cut
        if not more:
            return self._masked(value)
        head, _ = cut_text(self._masked(value), self._text_max)
        kept = head + TRUNCATION_MARKER.format(size_text(more))
        return orjson.dumps(kept).decode() if json else kept

    def _masked(self, text: str | None) -> str | None:
        return self._masker.text(text)

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
        provider, model, _ = labels
        for call in self.interceptor.tool_calls:
            series(metrics.TOOL_SELECTIONS, *labels, metrics.tool_label(provider, model, call.name)).inc()
