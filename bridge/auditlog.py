"""Structured logging of audit records (SPEC §6): one ``interception log`` line per record, with its
``record_type`` and the fields of the record, for SIEM pipelines."""

from __future__ import annotations

from typing import Any

from loguru import logger

MESSAGE = "interception log"

# record_type → (record field → log field). Fields follow the public documentation's table, plus the
# ones an auditor filters on (provider name, session, cache tokens, thought source).
_FIELDS = {
    "interception_start": {"id": "interception_id", "initiator_id": "initiator_id", "provider": "provider",
                           "provider_name": "provider_name", "model": "model", "client": "client",
                           "client_session_id": "client_session_id", "user_agent": "user_agent",
                           "credential_kind": "credential_kind", "credential_hint": "credential_hint",
                           "correlating_tool_call_id": "correlating_tool_call_id", "started_at": "started_at"},
    "interception_end": {"id": "interception_id", "ended_at": "ended_at", "metadata": "metadata"},
    "token_usage": {"interception_id": "interception_id", "provider_response_id": "provider_response_id",
                    "input_tokens": "input_tokens", "output_tokens": "output_tokens",
                    "cache_read_input_tokens": "cache_read_input_tokens",
                    "cache_write_input_tokens": "cache_write_input_tokens", "metadata": "metadata",
                    "created_at": "created_at"},
    "prompt_usage": {"interception_id": "interception_id", "prompt": "prompt", "created_at": "created_at"},
    "tool_usage": {"interception_id": "interception_id", "provider_tool_call_id": "provider_tool_call_id",
                   "tool": "tool", "input": "input", "server_url": "server_url", "injected": "injected",
                   "invocation_error": "invocation_error", "created_at": "created_at"},
    "model_thought": {"interception_id": "interception_id", "content": "content", "metadata": "metadata",
                      "created_at": "created_at"},
}


def log_record(record_type: str, record: Any) -> None:
    """Log one record (bridge.records: an ``InterceptionRecord``, ``TokenUsageRecord``, ...)."""
    fields = {log_name: getattr(record, field) for field, log_name in _FIELDS[record_type].items()}
    logger.bind(record_type=record_type, **fields).info(MESSAGE)
