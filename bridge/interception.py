"""One intercepted request's audit trail: its start, and at its end the records of what was seen.

The Interception is the one owner of that trail: the proxy hands it the upstream's answer (or the
failure), the stream relay reports the relayed bytes to it (bridge.relay.StreamObserver), and it
alone reads them with its interceptor, sets what the record says, and ends itself, once.
"""

from __future__ import annotations

import time
from typing import Callable, Mapping, TypeVar

import orjson
from loguru import logger

from bridge import auditlog, metrics
from bridge.auth import Caller, own_credential
from bridge.clients import capped_session_id, identify_client
from bridge.content_coding import Inflater
from bridge.intercept.base import Interceptor
from bridge.intercept.sse import Event
from bridge.masking import Masker, mask_secret, provider_secrets
from bridge.pricing import Prices
from bridge.providers.base import Provider
from bridge.records import (
    TRUNCATION_MARKER, InterceptionEndRecord, InterceptionRecord, PromptRecord, ThoughtRecord, TokenUsage,
    TokenUsageRecord, ToolUsageRecord, cut_text, json_text, new_id, size_text, text,
)
from bridge.timestamps import utc_now
from bridge.recorder import InterceptionEnd, InterceptionStart, Recorder

#: Characters a secret spans at most (keys and tokens are a few hundred at most): masked together with
#: a cut text, so that one running across the cut is masked whole.
_SECRET_SPAN_MAX = 1024
_T = TypeVar("_T")
_R = TypeVar("_R")


class Interception:
    def __init__(self, provider: Provider, interceptor: Interceptor, caller: Caller, headers: Mapping[str, str],
                 recorder: Recorder, structured_logging: bool, masker: Masker | None = None,
                 recorded_text_max: int = 64 * 1024, prices: Prices | None = None) -> None:
        """``masker`` masks the secrets of every provider (bridge.masking.configured_secrets); by
        default only those of this one. ``recorded_text_max``: bytes kept of each prompt, tool input
        and thought (CODER_AIBRIDGE_MAX_RECORDED_TEXT). ``prices`` prices the token usage (None:
        recorded without a cost)."""
        self.id = new_id()
        self.interceptor = interceptor
        self._shape = provider.shape
        self._recorder = recorder
        self._log = structured_logging
        self._ended = False
        self.status: int | None = None
        self.error: str | None = None
        self.attempts = 0  # upstream calls made (retries included; 0: refused before reaching it)
        self.unreadable = 0  # upstream events (or a body) the interceptor could not read for the record
        self.incomplete: str | None = None  # why the answer was not read to its end for the record
        self._text_max = recorded_text_max
        self._prices = prices
        client = identify_client(headers)
        credential = own_credential(headers) if caller.byok else provider.settings.key
        # Secrets a user may paste into a conversation: never stored, logged or shown back as they are.
        # The provider's key is among the masker's; a client's own key (BYOK; one under 8 characters
        # is no key: masking it would garble the records) joins it only for a text that holds it
        # (``_masked``): a masker with a new key takes ~16 ms to compile, and a text without the key
        # comes out the same from either.
        self._masker = masker or Masker(provider_secrets(provider.settings))
        self._own_key = credential if caller.byok and credential and len(credential) >= 8 else None
        masked = self._masked
        #: The model as the record, the logs and the circuit breaker name it. Like every client-chosen
        #: field of the row (user agent, session id, tool call id), masked: a client may put anything there.
        self.model: str = masked(interceptor.model)
        # The model label is bounded per provider (bridge.metrics): until the upstream serves the model
        # (end), the metrics count it as "other"; the client names are a fixed set.
        self._provider_name = provider.name
        self._client = client.name
        self._begin_labels = (provider.name, metrics.model_label(provider.name, self.model), client.name)
        self._served = False  # the upstream answered below 400: the model is a real one
        self.record = InterceptionRecord(
            id=self.id,
            initiator_id=caller.user_id,
            provider=provider.type,
            provider_name=provider.name,
            model=self.model,
            client=client.name,
            client_session_id=capped_session_id(masked(client.session_id)),  # masked, then capped: no key kept
            user_agent=masked(headers.get("User-Agent")),
            credential_kind="byok" if caller.byok else "centralized",
            credential_hint=mask_secret(credential),
            correlating_tool_call_id=masked(text(interceptor.correlating_tool_call_id())),
            started_at=utc_now(),
            owner=recorder.owner,  # the process serving it: its interceptions are ended if it stops
            metadata={"streaming": interceptor.streaming, **provider.interception_metadata(interceptor)},
        )
        # Taken now, cut: the request's body is let go once it is sent upstream (Interceptor.forget_request).
        self._prompt = self._cut(interceptor.prompt())

    def begin(self) -> None:
        self._started = time.monotonic()
        metrics.series(metrics.INFLIGHT, *self._begin_labels).inc()
        self._recorder.record(InterceptionStart(self.record))
        if self._log:
            auditlog.log_record("interception_start", self.record)

    # --- what the proxy hands it ---

    def attempted(self, number: int) -> None:
        """Upstream call ``number`` (1, 2, …; bridge.reliability.send_with_retries) is being made."""
        self.attempts = number

    def answered(self, status: int) -> None:
        """The status of the answer the client gets."""
        self.status = status
        if status < 400:
            self._served = True

    def failed(self, status: int | None, message: str) -> None:
        """No answer is relayed: the client gets the gateway's error (``status``; None for an internal
        error, which keeps the status known so far). Ends the interception."""
        if status is not None:
            self.status = status
        self.error = message
        self.end()

    def answer_sent(self, status: int, body: bytes, coding: str | None) -> None:
        """A whole answer went out to the client: show it to the interceptor, one the upstream
        compressed (unasked) inflated within a bound (bridge.content_coding) or not at all, and end."""
        if coding is not None:
            inflater = Inflater(coding)
            body = inflater.whole(body)
            if inflater.stopped:
                self.incomplete = f"not read for the record: {inflater.stopped}"
        try:
            if body is not None:
                self.interceptor.observe_response(status, body)
        except Exception as exc:  # a body the interceptor cannot read is still relayed (and the record says so)
            self.unreadable += 1
            logger.bind(interception_id=self.id).warning(
                "the upstream's answer could not be read for the record ({}); relayed unchanged", type(exc).__name__)
        self.end()

    # --- what a stream relay reports (bridge.relay.StreamObserver) ---
    # The interceptor only reads along: an event it cannot make sense of (wrong types, a provider's
    # new format) is relayed as it came and left out of the record, never a broken stream.

    @property
    def rewrites_stream(self) -> bool:
        return self.interceptor.rewrites_stream

    def rewrite(self, events: bytes) -> bytes:
        return self._reading(self.interceptor.rewrite, events, events)

    def observe(self, events: bytes) -> None:
        interceptor = self.interceptor
        observe = interceptor.observe_event
        for event in interceptor.events_for_record(events):
            try:
                observe(event)
            except Exception as exc:
                self._unreadable_event(exc)

    def ends_stream(self, event: Event) -> bool:
        return self._reading(self.interceptor.ends_stream, event, True)

    def read_stopped(self, reason: str) -> None:
        self.incomplete = f"read for the record up to where it stopped: {reason}"

    def on_failure(self, status: int, message: str) -> bytes:
        self.error = message
        return self.interceptor.stream_error(self._shape, status, message)

    def on_end(self, reason: str | None) -> None:
        if reason and not self._ended:
            self.error = reason
        self.end()

    def _reading(self, read: Callable[[_T], _R], what: _T, unread: _R) -> _R:
        """``read(what)``, or ``unread`` for what the interceptor cannot read (counted for the record)."""
        try:
            return read(what)
        except Exception as exc:
            self._unreadable_event(exc)
            return unread

    def _unreadable_event(self, exc: Exception) -> None:
        if not self.unreadable:
            logger.bind(provider=self._provider_name, interception_id=self.id).warning(
                "an upstream event could not be read for the record ({}); relayed unchanged", type(exc).__name__)
        self.unreadable += 1

    # --- the end ---

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
            metadata["error"] = self._masked(self.error)  # it may quote the client (e.g. its model)
        if self.unreadable:
            metadata["unreadable_events"] = self.unreadable
        if self.incomplete:
            metadata["record_incomplete"] = self.incomplete
        self._recorder.record(InterceptionEnd(self.id, ended_at, metadata, token_usages, user_prompts,
                                              tool_usages, model_thoughts))
        self._count(usage, token_usages, prompt is not None)
        if self._log:
            for kind, records in (("token_usage", token_usages), ("prompt_usage", user_prompts),
                                  ("tool_usage", tool_usages), ("model_thought", model_thoughts)):
                for record in records:
                    auditlog.log_record(kind, record)
            auditlog.log_record("interception_end", InterceptionEndRecord(id=self.id, ended_at=ended_at, metadata=metadata))

    def _children(self, created_at: str) -> tuple:
        """The usage, the prompt and the child records of everything the interceptor saw."""
        interceptor = self.interceptor
        interceptor.finish()
        interception_id = self.id
        response_id = text(interceptor.response_id)
        usage = interceptor.usage()
        token_usages = [TokenUsageRecord(
            id=new_id(), interception_id=interception_id, provider_response_id=response_id,
            input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
            cache_read_input_tokens=usage.cache_read_input_tokens,
            cache_write_input_tokens=usage.cache_write_input_tokens, metadata=usage.metadata, created_at=created_at,
            cost_usd=self._cost(usage),
        )] if usage else []
        prompt = self._recorded(self._prompt)
        user_prompts = [PromptRecord(id=new_id(), interception_id=interception_id, provider_response_id=response_id,
                                     prompt=prompt, created_at=created_at)] if prompt is not None else []
        tool_usages = [ToolUsageRecord(
            id=new_id(), interception_id=interception_id, provider_response_id=response_id,
            provider_tool_call_id=text(call.id), tool=self._masked(text(call.name)),
            input=self._recorded(self._cut(json_text(call.input)), json=True), created_at=created_at,
        ) for call in interceptor.tool_calls]
        model_thoughts = [ThoughtRecord(
            id=new_id(), interception_id=interception_id, content=self._recorded(self._cut(text(thought.content))),
            metadata={"source": thought.source}, created_at=created_at,
        ) for thought in interceptor.thoughts]
        return usage, prompt, token_usages, user_prompts, tool_usages, model_thoughts

    def _cost(self, usage: TokenUsage) -> float | None:
        if self._prices is None:
            return None
        return self._prices.cost(self.record.provider, self.model, usage.input_tokens, usage.output_tokens,
                                 usage.cache_read_input_tokens, usage.cache_write_input_tokens, usage.metadata)

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
        own_key = self._own_key
        if own_key is not None and text and own_key in text:
            return self._masker.including(own_key).text(text)
        return self._masker.text(text)

    def _count(self, usage, token_usages: list[TokenUsageRecord], prompted: bool) -> None:
        provider, model = self._provider_name, self.model
        # A model gets a label of its own only once the upstream served it: made-up ones never take a place.
        model_label = metrics.served_model_label(provider, model) if self._served else metrics.model_label(provider, model)
        labels = (provider, model_label, self._client)
        series = metrics.series
        series(metrics.INFLIGHT, *self._begin_labels).dec()
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
        for token_usage in token_usages:
            if token_usage.cost_usd:
                series(metrics.COST, *labels).inc(token_usage.cost_usd)
        for call in self.interceptor.tool_calls:
            tool = metrics.tool_label(provider, model_label, self._masked(text(call.name)) or "")
            series(metrics.TOOL_SELECTIONS, *labels, tool).inc()
