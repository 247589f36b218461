"""Faults, retries, circuit breakers and limits (SPEC §7), against a misbehaving upstream.

The gateway runs under gunicorn with one gevent worker, so that its per-process state (breakers,
limits) is deterministic. For each fault: what the client sees (the SDK's exception and status, or
the error event mid-stream), how often the upstream was called, the interception recorded and
ended, and the worker still serving the next request.
"""

from __future__ import annotations

import json
import threading
import time
from email.utils import format_datetime
from datetime import datetime, timedelta, timezone

import anthropic
import openai
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from bridge.config import CircuitBreakerSettings
from bridge.errors import GatewayError
from bridge.reliability import (CircuitBreaker, CircuitOpen, Limits, State, UpstreamFailure, backoff, retry_after,
                                send_with_retries)
from tests.conftest import ANTHROPIC_KEY, OPENAI_KEY
from tests.faultyupstream import Close, FaultyUpstream, Ok, Raw, Reset, Stall, Status, Stream, Truncated
from tests.harness import free_port, wait_for_records
from tests.sdk_calls import anthropic_client, call_anthropic, call_openai, openai_client

OPENAI_BODY = {"model": "gpt-4o-2024-08-06", "messages": [{"role": "user", "content": "Say hello in French."}]}
ANTHROPIC_BODY = {"model": "claude-sonnet-4-5-20250929", "max_tokens": 1024,
                  "messages": [{"role": "user", "content": "Write a haiku about the sea."}]}
ID_HEADER = "X-AIBridge-Interception-Id"


# ---------------------------------------------------------------- fixtures and helpers

@pytest.fixture(scope="module")
def faulty():
    server = FaultyUpstream().start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _fresh(request):
    """Every test starts with nothing planned and no requests seen (when it uses the faulty upstream)."""
    if "faulty" in request.fixturenames:
        request.getfixturevalue("faulty").reset_state()
    yield


def _env(faulty: FaultyUpstream, **extra: str) -> dict[str, str]:
    """oai (openai) and ant (anthropic) on the faulty upstream, dead (openai) on a port nobody listens on."""
    p = "CODER_AIBRIDGE_PROVIDER_"
    return {
        "CODER_AIBRIDGE_ENABLED": "true",
        f"{p}0_TYPE": "openai", f"{p}0_NAME": "oai", f"{p}0_KEY": OPENAI_KEY, f"{p}0_BASE_URL": f"{faulty.url}/v1/",
        f"{p}1_TYPE": "anthropic", f"{p}1_NAME": "ant", f"{p}1_KEY": ANTHROPIC_KEY, f"{p}1_BASE_URL": f"{faulty.url}/",
        f"{p}2_TYPE": "openai", f"{p}2_NAME": "dead", f"{p}2_KEY": OPENAI_KEY,
        f"{p}2_BASE_URL": f"http://127.0.0.1:{free_port()}/v1/",
        "CODER_AIBRIDGE_UPSTREAM_READ_TIMEOUT": "1s",
        "CODER_AIBRIDGE_UPSTREAM_CONNECT_TIMEOUT": "2s",
        **extra,
    }


@pytest.fixture(scope="module")
def faults_gateway(start_gateway, faulty):
    """Retries on (MAX_RETRIES 2, the default), no breaker, read timeout 1 s."""
    return start_gateway(_env(faulty), workers=1)


@pytest.fixture(scope="module")
def breaker_gateway(start_gateway, faulty):
    """Breaker after 3 failures, half-open after 1 s with 2 probes; oai/dead without retries, ant with 2."""
    p = "CODER_AIBRIDGE_PROVIDER_"
    return start_gateway(_env(faulty, **{
        "CODER_AIBRIDGE_CIRCUIT_BREAKER_ENABLED": "true",
        "CODER_AIBRIDGE_CIRCUIT_BREAKER_FAILURE_THRESHOLD": "3",
        "CODER_AIBRIDGE_CIRCUIT_BREAKER_INTERVAL": "60s",
        "CODER_AIBRIDGE_CIRCUIT_BREAKER_TIMEOUT": "1s",
        "CODER_AIBRIDGE_CIRCUIT_BREAKER_MAX_REQUESTS": "2",
        f"{p}0_MAX_RETRIES": "0", f"{p}2_MAX_RETRIES": "0",
    }), workers=1)


@pytest.fixture(scope="module")
def concurrency_gateway(start_gateway, faulty):
    return start_gateway(_env(faulty, CODER_AIBRIDGE_MAX_CONCURRENCY="2", CODER_AIBRIDGE_UPSTREAM_READ_TIMEOUT="30s"),
                         workers=1)


@pytest.fixture(scope="module")
def rate_gateway(start_gateway, faulty):
    return start_gateway(_env(faulty, CODER_AIBRIDGE_RATE_LIMIT="2"), workers=1)


def _openai(gateway, identities, provider: str = "oai") -> openai.OpenAI:
    return openai_client(f"{gateway.base(provider)}/v1", identities.alice)


def _anthropic(gateway, identities, provider: str = "ant") -> anthropic.Anthropic:
    return anthropic_client(gateway.base(provider), identities.alice)


def _post(gateway, identities, provider: str = "oai", body: dict | None = None, **kwargs) -> requests.Response:
    route = "v1/messages" if provider.startswith("ant") else "v1/chat/completions"
    return requests.post(f"{gateway.base(provider)}/{route}", json=body or OPENAI_BODY, timeout=30,
                         headers={"Authorization": f"Bearer {identities.alice}"}, **kwargs)


def _record(database, interception_id: str) -> dict:
    record = wait_for_records(database, [interception_id]).get(interception_id)
    assert record is not None, f"interception {interception_id} was not recorded and ended"
    return {**record, "metadata": json.loads(record["metadata"])}


def _interception_id(error: openai.APIStatusError | anthropic.APIStatusError) -> str:
    return error.response.headers[ID_HEADER]


def _assert_serving(gateway, identities, faulty) -> None:
    """The worker is still there (never restarted) and relays the next request."""
    faulty.plan()
    completion = _openai(gateway, identities).chat.completions.create(**OPENAI_BODY)
    assert completion.choices[0].message.content
    assert gateway.log().count("Booting worker") == 1, "the worker was restarted"


def _metrics(gateway) -> dict[tuple[str, frozenset], float]:
    text = requests.get(f"{gateway.url}/metrics", timeout=10).text
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def _metric(samples, name: str, **labels) -> float:
    wanted = set(labels.items())
    return sum(value for (sample, sample_labels), value in samples.items() if sample == name and wanted <= sample_labels)


# ---------------------------------------------------------------- units: breaker, retries, limits

class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _breaker(clock, threshold=3, interval=10.0, timeout=5.0, max_requests=2) -> CircuitBreaker:
    settings = CircuitBreakerSettings(True, threshold, interval, timeout, max_requests)
    return CircuitBreaker(settings, ("unit", "v1/messages", f"m-{id(clock)}"), clock)


def _fail(breaker, times=1) -> None:
    for _ in range(times):
        breaker.record(breaker.admit(), True)


def test_breaker_state_machine():
    clock = _Clock()
    breaker = _breaker(clock)
    _fail(breaker, 2)
    breaker.record(breaker.admit(), False)  # a success resets the consecutive count
    _fail(breaker, 2)
    assert breaker.state == State.CLOSED
    _fail(breaker)
    assert breaker.state == State.OPEN
    with pytest.raises(CircuitOpen) as raised:
        breaker.admit()
    assert raised.value.status == 503 and raised.value.headers == {"Retry-After": "5"}
    clock.now += 3.2
    with pytest.raises(CircuitOpen) as raised:
        breaker.admit()
    assert raised.value.headers == {"Retry-After": "2"}  # whole seconds until half-open, rounded up
    clock.now += 2
    first, second = breaker.admit(), breaker.admit()  # MAX_REQUESTS probes
    assert breaker.state == State.HALF_OPEN
    with pytest.raises(CircuitOpen) as raised:
        breaker.admit()
    assert raised.value.headers == {"Retry-After": "1"}
    breaker.record(first, False)
    assert breaker.state == State.HALF_OPEN
    breaker.record(second, False)
    assert breaker.state == State.CLOSED


def test_breaker_failed_probe_reopens_and_stale_outcomes_are_ignored():
    clock = _Clock()
    breaker = _breaker(clock, threshold=2, max_requests=3)
    early = breaker.admit()  # admitted while closed, answers after the breaker opened
    _fail(breaker, 2)
    breaker.record(early, False)
    assert breaker.state == State.OPEN
    clock.now += 5
    probe = breaker.admit()
    breaker.record(probe, True)
    assert breaker.state == State.OPEN
    with pytest.raises(CircuitOpen):
        breaker.admit()
    clock.now += 5
    probe = breaker.admit()
    breaker.record(probe, None)  # no verdict on the upstream: the probe slot is given back
    for _ in range(3):
        breaker.record(breaker.admit(), False)
    assert breaker.state == State.CLOSED


def test_breaker_interval_clears_counts_while_closed_and_zero_never_does():
    clock = _Clock()
    breaker = _breaker(clock, interval=10.0)
    _fail(breaker, 2)
    clock.now += 10
    _fail(breaker, 2)
    assert breaker.state == State.CLOSED  # the window rolled over between the failures
    _fail(breaker)
    assert breaker.state == State.OPEN

    breaker = _breaker(clock, interval=0.0)
    _fail(breaker, 2)
    clock.now += 10_000
    _fail(breaker)
    assert breaker.state == State.OPEN


def test_retry_after_forms():
    assert retry_after({"retry-after": "3"}) == 3.0
    assert retry_after({"retry-after": "1.5"}) == 1.5
    assert retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    date = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=30), usegmt=True)
    assert 28 <= retry_after({"retry-after": date}) <= 30
    assert retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0  # in the past
    assert retry_after({"retry-after": "soon"}) is None and retry_after({}) is None
    assert all(0.375 <= backoff(1) <= 0.5 for _ in range(50))
    assert all(6.0 <= backoff(10) <= 8.0 for _ in range(50))  # capped


class _Tally:
    attempts = 0


def _response(status: int, **headers: str) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response.headers.update(headers)
    response._content, response._content_consumed = b"{}", True  # close() has no connection to release
    return response


def _run(answers, max_retries=2, breaker=None):
    answers = list(answers)
    sleeps: list[float] = []
    tally = _Tally()

    def send():
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    try:
        result = send_with_retries(send, provider="unit", breaker=breaker, max_retries=max_retries,
                                   on_attempt=lambda number: setattr(tally, "attempts", number), sleep=sleeps.append)
    except GatewayError as error:
        result = error
    return result, tally.attempts, sleeps


def test_retry_policy():
    result, attempts, sleeps = _run([_response(429, **{"Retry-After": "1"}), _response(200)])
    assert (result.status_code, attempts, sleeps) == (200, 2, [1.0])
    result, attempts, sleeps = _run([_response(500), _response(502), _response(529)])
    assert (result.status_code, attempts, len(sleeps)) == (529, 3, 2)  # the last answer, as it came
    result, attempts, _ = _run([_response(400), _response(200)])
    assert (result.status_code, attempts) == (400, 1)
    result, attempts, _ = _run([_response(501), _response(200)])
    assert (result.status_code, attempts) == (501, 1)
    result, attempts, _ = _run([_response(503, **{"x-should-retry": "false"}), _response(200)])
    assert (result.status_code, attempts) == (503, 1)
    result, attempts, _ = _run([_response(429, **{"Retry-After": "60"}), _response(200)])
    assert (result.status_code, attempts) == (429, 1)  # beyond the cap: the client gets it at once
    result, attempts, _ = _run([_response(503), _response(200)], max_retries=0)
    assert (result.status_code, attempts) == (503, 1)
    refused = UpstreamFailure(502, "refused", retryable=True, breaker_failure=True)
    result, attempts, sleeps = _run([refused, refused, refused])
    assert (result, attempts, len(sleeps)) == (refused, 3, 2)
    stalled = UpstreamFailure(504, "no answer", retryable=False, breaker_failure=True)
    result, attempts, _ = _run([stalled, _response(200)])
    assert (result, attempts) == (stalled, 1)


def test_retries_stop_when_the_breaker_opens():
    clock = _Clock()
    breaker = _breaker(clock, threshold=2)
    result, attempts, _ = _run([_response(503), _response(503), _response(200)], breaker=breaker)
    assert (result.status_code, attempts) == (503, 2)
    assert breaker.state == State.OPEN
    result, attempts, _ = _run([_response(200)], breaker=breaker)
    assert isinstance(result, CircuitOpen) and attempts == 0


def test_limits_units():
    clock = _Clock()
    limits = Limits(2, 0, clock)
    first, second = limits.acquire("unit"), limits.acquire("unit")
    with pytest.raises(GatewayError) as raised:
        limits.acquire("unit")
    assert raised.value.status == 429 and raised.value.headers == {"Retry-After": "1"}
    first.release()
    first.release()  # idempotent
    third = limits.acquire("unit")
    second.release(), third.release()
    assert limits.in_flight == 0

    bucket = Limits(0, 0.5, clock)  # one token, refilled every 2 s
    bucket.acquire("unit")
    with pytest.raises(GatewayError) as raised:
        bucket.acquire("unit")
    assert raised.value.headers == {"Retry-After": "2"}
    clock.now += 2
    bucket.acquire("unit")


# ---------------------------------------------------------------- faults before the first byte

def test_refused_connection_is_retried_then_502(faults_gateway, faulty, identities, database):
    started = time.monotonic()
    with pytest.raises(openai.InternalServerError) as raised:
        _openai(faults_gateway, identities, "dead").chat.completions.create(**OPENAI_BODY)
    assert raised.value.status_code == 502
    assert raised.value.body["code"] == "upstream_unreachable"
    assert "connection refused" in raised.value.message
    assert time.monotonic() - started >= 1.0  # two backoffs (0.375-0.5 s, then 0.75-1 s)
    record = _record(database, _interception_id(raised.value))
    assert record["metadata"]["attempts"] == 3 and record["metadata"]["status"] == 502
    assert "unreachable" in record["metadata"]["error"]
    assert "retry 2/2" in faults_gateway.log()
    _assert_serving(faults_gateway, identities, faulty)


def test_upstream_back_during_retries_is_invisible_to_the_client(faults_gateway, faulty, identities, database):
    refused = "failed (upstream of provider 'oai' is unreachable (connection refused)); retry 1/2"
    seen = faults_gateway.log().count(refused)

    def back_when_refused() -> None:  # listen again once the first attempt was refused
        deadline = time.monotonic() + 10
        while faults_gateway.log().count(refused) == seen and time.monotonic() < deadline:
            time.sleep(0.01)
        faulty.listen()

    faulty.refuse()
    waiter = threading.Thread(target=back_when_refused)
    waiter.start()
    completion = _openai(faults_gateway, identities).chat.completions.with_raw_response.create(**OPENAI_BODY)
    waiter.join()
    assert completion.parse().choices[0].message.content
    record = _record(database, completion.headers[ID_HEADER])
    assert record["metadata"]["attempts"] in (2, 3) and record["metadata"]["status"] == 200
    _assert_serving(faults_gateway, identities, faulty)


def test_reset_and_close_before_the_answer_are_retried(faults_gateway, faulty, identities, database):
    faulty.plan(Reset(), Close())
    message = _anthropic(faults_gateway, identities).messages.with_raw_response.create(**ANTHROPIC_BODY)
    assert message.parse().content[0].text
    assert faulty.count == 3
    record = _record(database, message.headers[ID_HEADER])
    assert record["metadata"]["attempts"] == 3 and record["metadata"]["status"] == 200
    assert record["token_usages"] and record["user_prompts"]
    _assert_serving(faults_gateway, identities, faulty)


def test_429_with_retry_after_then_200(faults_gateway, faulty, identities, database):
    faulty.plan(Status(429, retry_after="1"))
    started = time.monotonic()
    completion = _openai(faults_gateway, identities).chat.completions.with_raw_response.create(**OPENAI_BODY)
    assert completion.http_response.status_code == 200
    assert time.monotonic() - started >= 0.9  # Retry-After was honoured
    assert faulty.count == 2
    record = _record(database, completion.headers[ID_HEADER])
    assert record["metadata"]["attempts"] == 2 and record["metadata"]["status"] == 200
    assert record["token_usages"][0]["output_tokens"] > 0  # recorded once, from the answer relayed
    assert "upstream attempt 1 answered 429; retry 1/2 in 1.0s" in faults_gateway.log()
    _assert_serving(faults_gateway, identities, faulty)


def test_a_retry_wait_does_not_hold_up_the_worker(faults_gateway, faulty, identities):
    faulty.plan(Status(429, retry_after="3"))
    waiting: dict = {}
    thread = threading.Thread(target=lambda: waiting.setdefault("response", _post(faults_gateway, identities)))
    thread.start()
    faulty.wait_requests(1)
    started = time.monotonic()
    assert _post(faults_gateway, identities).status_code == 200  # served while the other one waits
    assert time.monotonic() - started < 2
    assert "response" not in waiting
    thread.join(timeout=20)
    assert waiting["response"].status_code == 200 and faulty.count == 3


def test_500_three_times_gives_the_upstream_500(faults_gateway, faulty, identities, database):
    faulty.plan(*[Status(500, message=f"boom {i}") for i in range(3)])
    with pytest.raises(openai.InternalServerError) as raised:
        _openai(faults_gateway, identities).chat.completions.create(**OPENAI_BODY)
    assert raised.value.status_code == 500
    assert raised.value.body == {"message": "boom 2", "type": "server_error", "param": None, "code": None}
    assert faulty.count == 3
    record = _record(database, _interception_id(raised.value))
    assert record["metadata"]["attempts"] == 3 and record["metadata"]["status"] == 500
    _assert_serving(faults_gateway, identities, faulty)


def test_529_without_retry_after_is_retried_with_backoff(faults_gateway, faulty, identities, database):
    faulty.plan(Status(529), Status(529))
    message = _anthropic(faults_gateway, identities).messages.with_raw_response.create(**ANTHROPIC_BODY)
    assert message.http_response.status_code == 200
    assert faulty.count == 3
    assert _record(database, message.headers[ID_HEADER])["metadata"]["attempts"] == 3


def test_529_with_a_long_retry_after_goes_back_to_the_client_at_once(faults_gateway, faulty, identities, database):
    faulty.plan(Status(529, retry_after="120"))
    started = time.monotonic()
    with pytest.raises(anthropic.OverloadedError) as raised:
        _anthropic(faults_gateway, identities).messages.create(**ANTHROPIC_BODY)
    assert time.monotonic() - started < 5
    assert raised.value.status_code == 529
    assert raised.value.response.headers["retry-after"] == "120"  # for the client's own retry
    assert raised.value.body["error"] == {"type": "overloaded_error", "message": "faulty upstream says 529"}
    assert faulty.count == 1
    assert _record(database, _interception_id(raised.value))["metadata"]["attempts"] == 1


def test_retry_after_as_http_date(faults_gateway, faulty, identities):
    when = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=2), usegmt=True)
    faulty.plan(Status(503, retry_after=when))
    started = time.monotonic()
    completion = _openai(faults_gateway, identities).chat.completions.create(**OPENAI_BODY)
    assert completion.choices[0].message.content
    assert time.monotonic() - started >= 0.5 and faulty.count == 2


def test_x_should_retry_false_is_not_retried(faults_gateway, faulty, identities):
    faulty.plan(Status(503, headers={"x-should-retry": "false"}))
    with pytest.raises(anthropic.ServiceUnavailableError):
        _anthropic(faults_gateway, identities).messages.create(**ANTHROPIC_BODY)
    assert faulty.count == 1


def test_stream_503_then_sse_streams_fine(faults_gateway, faulty, identities, database):
    faulty.plan(Status(503))
    result = call_openai(_openai(faults_gateway, identities), OPENAI_BODY, stream=True)
    assert "error" not in result
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in result["chunks"]) == "Bonjour !"
    assert faulty.count == 2
    faulty.plan(Status(503))  # again, for the interception id
    response = _post(faults_gateway, identities, body={**OPENAI_BODY, "stream": True})
    assert response.status_code == 200 and response.content.endswith(b"data: [DONE]\n\n")
    record = _record(database, response.headers[ID_HEADER])
    assert record["metadata"]["attempts"] == 2 and record["metadata"]["streaming"] is True
    assert record["token_usages"][0]["output_tokens"] > 0


def test_stall_before_headers_is_504_and_not_retried(faults_gateway, faulty, identities, database):
    faulty.plan(Stall(4))
    with pytest.raises(anthropic.GatewayTimeoutError) as raised:
        _anthropic(faults_gateway, identities).messages.create(**ANTHROPIC_BODY)
    assert raised.value.body["error"]["type"] == "timeout_error"
    assert faulty.count == 1
    record = _record(database, _interception_id(raised.value))
    assert record["metadata"]["attempts"] == 1 and record["metadata"]["status"] == 504
    _assert_serving(faults_gateway, identities, faulty)


def test_truncated_json_is_502_and_not_retried(faults_gateway, faulty, identities, database):
    faulty.plan(Truncated())
    with pytest.raises(openai.InternalServerError) as raised:
        _openai(faults_gateway, identities).chat.completions.create(**OPENAI_BODY)
    assert raised.value.status_code == 502
    assert "broke off the response" in raised.value.message
    assert faulty.count == 1
    record = _record(database, _interception_id(raised.value))
    assert record["metadata"]["status"] == 502 and "broke off" in record["metadata"]["error"]
    _assert_serving(faults_gateway, identities, faulty)


def test_invalid_json_with_200_is_relayed_as_it_came(faults_gateway, faulty, identities, database):
    faulty.plan(Raw(200, b'{"id": "chatcmpl-x", "choi'))
    response = _post(faults_gateway, identities)
    assert response.status_code == 200 and response.content == b'{"id": "chatcmpl-x", "choi'
    record = _record(database, response.headers[ID_HEADER])
    assert record["metadata"]["status"] == 200 and record["token_usages"] == []
    _assert_serving(faults_gateway, identities, faulty)


# ---------------------------------------------------------------- faults after the first byte

def test_midstream_reset_is_not_retried_and_ends_with_an_error_event(faults_gateway, faulty, identities, database):
    faulty.plan(Stream(reset_after=3))
    result = call_openai(_openai(faults_gateway, identities), OPENAI_BODY, stream=True)
    assert len(result["chunks"]) == 3
    assert result["error"][0] == "APIError"
    assert "broke off the stream (connection reset)" in str(result["error"][2])
    assert faulty.count == 1

    faulty.plan(Stream(reset_after=2))
    result = call_anthropic(_anthropic(faults_gateway, identities), ANTHROPIC_BODY, stream=True)
    assert [e["type"] for e in result["events"]] == ["message_start", "content_block_start"]
    assert result["error"][0] == "APIStatusError"
    assert result["error"][2]["error"]["type"] == "api_error"
    assert faulty.count == 2

    faulty.plan(Stream(reset_after=2))
    response = _post(faults_gateway, identities, "ant", {**ANTHROPIC_BODY, "stream": True})
    assert response.status_code == 200 and b"event: error" in response.content
    record = _record(database, response.headers[ID_HEADER])
    assert record["metadata"]["attempts"] == 1 and "broke off the stream" in record["metadata"]["error"]
    assert record["token_usages"][0]["input_tokens"] > 0  # what was seen before the cut is kept
    _assert_serving(faults_gateway, identities, faulty)


def test_midstream_stall_ends_with_an_error_event(faults_gateway, faulty, identities, database):
    faulty.plan(Stream(stall_after=2, stall=4))
    started = time.monotonic()
    response = _post(faults_gateway, identities, "ant", {**ANTHROPIC_BODY, "stream": True})
    assert response.status_code == 200
    events = [e for e in response.content.split(b"\n\n") if e]
    assert len(events) == 3 and events[-1].startswith(b"event: error\ndata: ")
    error = json.loads(events[-1].split(b"data: ", 1)[1])
    assert error["error"]["type"] == "timeout_error" and "stopped sending mid-stream" in error["error"]["message"]
    assert time.monotonic() - started < 4  # the read timeout (1 s), not the upstream, ended it
    assert faulty.count == 1
    record = _record(database, response.headers[ID_HEADER])
    assert "stopped sending mid-stream" in record["metadata"]["error"]
    _assert_serving(faults_gateway, identities, faulty)


MALFORMED = [b"data: {not json\n\n", b": a comment\n\n", b"event: weird\ndata: \xff\xfe not utf-8\n\n",
             b"data: {\"choices\": 7, \"usage\": \"many\"}\n\n", b"data: [DONE]\n\n"]


@pytest.mark.parametrize("provider, body", [("oai", OPENAI_BODY), ("ant", ANTHROPIC_BODY)])
def test_malformed_sse_is_relayed_byte_for_byte(provider, body, faults_gateway, faulty, identities, database):
    # Each ends as its provider ends a stream (else the gateway adds an error event: a cut stream).
    events = MALFORMED + ([b'event: message_stop\ndata: {"type":"message_stop"}\n\n'] if provider == "ant" else [])
    faulty.plan(Stream(events=events))
    response = _post(faults_gateway, identities, provider, {**body, "stream": True})
    assert response.status_code == 200
    assert response.content == b"".join(events)
    record = _record(database, response.headers[ID_HEADER])
    assert record["metadata"]["status"] == 200 and "error" not in record["metadata"]
    assert record["token_usages"] == []
    _assert_serving(faults_gateway, identities, faulty)


# ---------------------------------------------------------------- circuit breaker

def test_breaker_opens_rejects_without_upstream_then_half_opens_and_closes(breaker_gateway, faulty, identities, database):
    model = "gpt-breaker-open"
    body = {**OPENAI_BODY, "model": model}
    client = _openai(breaker_gateway, identities)
    # served once: the model has a metrics label of its own (a model never served counts as "other")
    assert client.chat.completions.create(**body).choices
    faulty.plan(Status(503), Status(429), Status(504))  # each kind counts
    for _ in range(3):
        with pytest.raises((openai.InternalServerError, openai.RateLimitError)) as raised:
            client.chat.completions.create(**body)
        assert raised.value.body["message"].startswith("faulty upstream says")  # the upstream's own answers
    assert faulty.count == 4
    labels = dict(provider="oai", endpoint="v1/chat/completions", model=model)
    assert f"circuit breaker open: provider oai, endpoint v1/chat/completions, model {model}" in breaker_gateway.log()

    # open: refused by the gateway, the upstream is not called
    with pytest.raises(openai.InternalServerError) as raised:
        client.chat.completions.create(**body)
    assert raised.value.status_code == 503
    assert raised.value.body["code"] == "service_unavailable"
    assert "circuit breaker open" in raised.value.message
    assert raised.value.response.headers["Retry-After"] == "1"
    assert faulty.count == 4
    record = _record(database, _interception_id(raised.value))
    assert record["metadata"]["attempts"] == 0 and record["metadata"]["status"] == 503
    assert "circuit breaker open" in record["metadata"]["error"]
    # another model on the same provider has its own breaker
    assert client.chat.completions.create(**{**body, "model": "gpt-breaker-other"}).choices
    assert faulty.count == 5

    samples = _metrics(breaker_gateway)
    assert _metric(samples, "circuit_breaker_state", **labels) == 2
    assert _metric(samples, "circuit_breaker_trips_total", **labels) == 1
    assert _metric(samples, "circuit_breaker_rejects_total", **labels) == 1
    assert _metric(samples, "circuit_breaker_state", model="gpt-breaker-other") == 0

    time.sleep(1.2)  # TIMEOUT: half-open
    assert client.chat.completions.create(**body).choices  # probe 1 of 2
    assert _metric(_metrics(breaker_gateway), "circuit_breaker_state", **labels) == 1
    assert client.chat.completions.create(**body).choices  # probe 2 of 2: closed
    assert _metric(_metrics(breaker_gateway), "circuit_breaker_state", **labels) == 0
    assert client.chat.completions.create(**body).choices
    assert faulty.count == 8
    log = breaker_gateway.log()
    assert f"circuit breaker half-open: provider oai, endpoint v1/chat/completions, model {model}" in log
    assert f"circuit breaker closed: provider oai, endpoint v1/chat/completions, model {model}" in log
    _assert_serving(breaker_gateway, identities, faulty)


def test_failed_probe_reopens_the_breaker(breaker_gateway, faulty, identities, database):
    body = {**ANTHROPIC_BODY, "model": "claude-breaker-reopen"}
    client = _anthropic(breaker_gateway, identities)
    assert client.messages.create(**body).content  # served once: a metrics label of its own
    no_retry = {"x-should-retry": "false"}  # one attempt per request (ant retries otherwise)
    faulty.plan(*[Status(529, headers=no_retry) for _ in range(3)])
    for _ in range(3):
        with pytest.raises(anthropic.OverloadedError):
            client.messages.create(**body)
    with pytest.raises(anthropic.ServiceUnavailableError) as raised:
        client.messages.create(**body)
    assert raised.value.body["error"]["type"] == "overloaded_error"
    assert "circuit breaker open" in raised.value.body["error"]["message"]
    retry_in = int(raised.value.response.headers["Retry-After"])
    assert retry_in == 1
    time.sleep(retry_in + 0.2)
    faulty.plan(Status(529, headers=no_retry))
    with pytest.raises(anthropic.OverloadedError):  # the probe reaches the upstream and fails
        client.messages.create(**body)
    assert faulty.count == 5
    with pytest.raises(anthropic.ServiceUnavailableError):  # open again at once
        client.messages.create(**body)
    assert faulty.count == 5
    labels = dict(provider="ant", endpoint="v1/messages", model=body["model"])
    samples = _metrics(breaker_gateway)
    assert _metric(samples, "circuit_breaker_trips_total", **labels) == 2
    assert _metric(samples, "circuit_breaker_rejects_total", **labels) == 2
    assert _metric(samples, "circuit_breaker_state", **labels) == 2
    time.sleep(1.2)
    assert client.messages.create(**body).content and client.messages.create(**body).content
    assert _metric(_metrics(breaker_gateway), "circuit_breaker_state", **labels) == 0


def _trip_openai_breaker(client: openai.OpenAI, body: dict, status: int) -> openai.InternalServerError:
    """Three chat calls failing with `status` (the breaker's threshold), then the fourth refused by
    the open breaker: returns that refusal."""
    for _ in range(3):
        with pytest.raises(openai.InternalServerError) as raised:
            client.chat.completions.create(**body)
        assert raised.value.status_code == status
    with pytest.raises(openai.InternalServerError) as raised:
        client.chat.completions.create(**body)
    assert raised.value.status_code == 503 and "circuit breaker open" in raised.value.message
    return raised.value


def test_unreachable_upstream_trips_the_breaker(breaker_gateway, identities, database):
    refused = _trip_openai_breaker(_openai(breaker_gateway, identities, "dead"), OPENAI_BODY, 502)
    record = _record(database, _interception_id(refused))
    assert record["metadata"]["attempts"] == 0


def test_timeouts_trip_the_breaker_and_500s_do_not(breaker_gateway, faulty, identities):
    client = _openai(breaker_gateway, identities)
    body = {**OPENAI_BODY, "model": "gpt-breaker-500"}
    faulty.plan(*[Status(500) for _ in range(4)])
    for _ in range(4):
        with pytest.raises(openai.InternalServerError) as raised:
            client.chat.completions.create(**body)
        assert raised.value.status_code == 500
    assert faulty.count == 4  # a 500 is the upstream answering, not overload: no breaker

    faulty.plan(Stall(3), Stall(3), Stall(3))
    _trip_openai_breaker(client, {**OPENAI_BODY, "model": "gpt-breaker-stall"}, 504)
    assert faulty.count == 7


def test_an_opening_breaker_stops_the_retries(breaker_gateway, faulty, identities, database):
    """ant retries twice, but once its breaker opens no further attempt is made: the client gets the
    upstream's own last answer."""
    client = _anthropic(breaker_gateway, identities)
    body = {**ANTHROPIC_BODY, "model": "claude-breaker-retries"}
    faulty.plan(Status(503, headers={"x-should-retry": "false"}), Status(503, headers={"x-should-retry": "false"}))
    for _ in range(2):
        with pytest.raises(anthropic.ServiceUnavailableError):
            client.messages.create(**body)
    faulty.plan(Status(503, message="third strike"), Status(503), Status(503))
    with pytest.raises(anthropic.ServiceUnavailableError) as raised:
        client.messages.create(**body)
    assert raised.value.body["error"]["message"] == "third strike"
    assert faulty.count == 3
    assert _record(database, _interception_id(raised.value))["metadata"]["attempts"] == 1
    _assert_serving(breaker_gateway, identities, faulty)


# ---------------------------------------------------------------- limits

def test_max_concurrency_refuses_the_third_stream(concurrency_gateway, faulty, identities, database):
    hold = threading.Event()
    faulty.default = Ok(hold=hold)
    streams = [_post(concurrency_gateway, identities, body={**OPENAI_BODY, "stream": True}, stream=True)
               for _ in range(2)]
    try:
        assert [s.status_code for s in streams] == [200, 200]
        faulty.wait_requests(2)
        with pytest.raises(openai.RateLimitError) as raised:
            _openai(concurrency_gateway, identities).chat.completions.create(**OPENAI_BODY, stream=True)
        assert raised.value.body["code"] == "rate_limit_exceeded"
        assert "at most 2 at once" in raised.value.message
        assert raised.value.response.headers["Retry-After"] == "1"
        assert ID_HEADER not in raised.value.response.headers  # refused before anything was recorded
        with pytest.raises(anthropic.RateLimitError) as raised:  # blocking calls count the same
            _anthropic(concurrency_gateway, identities).messages.create(**ANTHROPIC_BODY)
        assert raised.value.body["error"]["type"] == "rate_limit_error"
        assert faulty.count == 2
    finally:
        hold.set()
    for stream in streams:  # the held streams finish normally
        assert stream.content.endswith(b"data: [DONE]\n\n")
        assert _record(database, stream.headers[ID_HEADER])["metadata"]["status"] == 200
    faulty.default = Ok()
    # their slots are free again
    deadline = time.monotonic() + 10
    while True:
        try:
            _openai(concurrency_gateway, identities).chat.completions.create(**OPENAI_BODY)
            _openai(concurrency_gateway, identities).chat.completions.create(**OPENAI_BODY)
            break
        except openai.RateLimitError:
            assert time.monotonic() < deadline, "the finished streams never gave their slots back"
            time.sleep(0.1)
    assert _metric(_metrics(concurrency_gateway), "limit_rejects_total", limit="concurrency") >= 2


def test_rate_limit_refuses_a_burst_beyond_the_rate(rate_gateway, faulty, identities):
    statuses, waits = [], []
    started = time.monotonic()
    for _ in range(10):
        response = _post(rate_gateway, identities)
        statuses.append(response.status_code)
        if response.status_code == 429:
            assert response.json()["error"]["type"] == "rate_limit_error"
            assert "at most 2 requests per second" in response.json()["error"]["message"]
            waits.append(int(response.headers["Retry-After"]))
    elapsed = time.monotonic() - started
    assert statuses[:2] == [200, 200]  # the burst (2 tokens)
    assert 429 in statuses and set(statuses) == {200, 429}
    assert statuses.count(200) <= 2 + 2 * elapsed + 1  # the burst, then 2 per second
    assert all(wait == 1 for wait in waits)
    assert faulty.count == statuses.count(200)  # refusals never reach the upstream
    # passthrough routes do not count
    for _ in range(5):
        assert requests.get(f"{rate_gateway.base('oai')}/v1/models", timeout=10,
                            headers={"Authorization": f"Bearer {identities.alice}"}).status_code == 200
    time.sleep(max(waits) + 0.1)
    assert _post(rate_gateway, identities).status_code == 200


def test_a_body_of_wrong_types_is_relayed_and_recorded(faults_gateway, faulty, identities, database):
    odd = b'{"id": 5, "choices": 7, "usage": "many"}'
    faulty.plan(Raw(200, odd))
    response = _post(faults_gateway, identities)
    assert response.status_code == 200 and response.content == odd
    record = _record(database, response.headers[ID_HEADER])
    assert record["metadata"]["unreadable_events"] >= 1 and record["token_usages"] == []
    _assert_serving(faults_gateway, identities, faulty)
