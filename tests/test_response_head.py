"""The upstream response-head reader (bridge/response_head.py) gives exactly what http.client's own
``email``-based parser gives, for plain provider heads and for every odd block it hands back to it.
"""

from __future__ import annotations

import email.parser
import http.client
import io

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge import response_head

REAL_HEAD = (b"Date: Fri, 27 Nov 2026 10:00:00 GMT\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
             b"Transfer-Encoding: chunked\r\nConnection: keep-alive\r\nrequest-id: req_011\r\n"
             b"anthropic-ratelimit-requests-remaining: 49\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n"
             b"x-empty:\r\nx-spaced: \t value with trailing space \r\nx-latin: caf\xe9\r\n\r\n")


def email_parse(block: bytes) -> tuple[dict, bytes]:
    """http.client's own way (Python 3.11): the email package on the header lines."""
    fp = io.BytesIO(block)
    lines = http.client._read_headers(fp)
    message = email.parser.Parser(_class=http.client.HTTPMessage).parsestr(b"".join(lines).decode("iso-8859-1"))
    return _state(message), fp.read()


def fast_parse(block: bytes) -> tuple[dict, bytes]:
    fp = io.BytesIO(block)
    message = response_head.parse_headers(fp)
    assert type(message) is http.client.HTTPMessage
    return _state(message), fp.read()


def _state(message: http.client.HTTPMessage) -> dict:
    state = dict(vars(message))
    state["defects"] = [type(defect) for defect in message.defects]
    return state


def test_a_provider_head_parses_as_the_email_parser_does_and_leaves_the_body_unread(monkeypatch):
    expected = email_parse(REAL_HEAD + b"data: {}\n\n")

    def no_email_parser(*args, **kwargs):
        raise AssertionError("a plain provider head went to the email parser")

    monkeypatch.setattr(email.parser, "Parser", no_email_parser)  # the point of the module: it is not needed here
    state, rest = fast_parse(REAL_HEAD + b"data: {}\n\n")
    assert (state, rest) == expected
    assert rest == b"data: {}\n\n"
    assert state["_headers"][-3:] == [("x-empty", ""), ("x-spaced", "value with trailing space "),
                                       ("x-latin", "caf\xe9")]


def test_odd_blocks_get_the_email_parsers_reading():
    for block in (b"X-Folded: a\r\n b\r\n\r\n",  # obsolete line folding
                  b"X-Cr: a\rb\r\n\r\n",  # a bare CR splits a line for the email parser
                  b"No colon here\r\nX-After: 1\r\n\r\n",  # the rest becomes the unparsed payload
                  b": no name\r\n\r\n",
                  b"X-Cut-Off: 1\r\n",  # no blank line before EOF
                  b"\r\n",
                  b"X-Lf-Only: 1\n\n"):
        assert fast_parse(block) == email_parse(block), block


_names = st.one_of(st.sampled_from([b"Content-Type", b"x-request-id", b"From", b"Set-Cookie"]),
                   st.binary(min_size=0, max_size=12))
_values = st.binary(max_size=40)
_line_ends = st.sampled_from([b"\r\n", b"\n", b"\r", b""])


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(lines=st.lists(st.tuples(_names, st.sampled_from([b":", b": ", b":\t", b" :", b""]), _values, _line_ends),
                      max_size=8),
       end=st.sampled_from([b"\r\n", b"\n", b""]), body=st.binary(max_size=8))
def test_any_block_parses_as_the_email_parser_does(lines, end, body):
    block = b"".join(name + sep + value + line_end for name, sep, value, line_end in lines) + end + body
    assert fast_parse(block) == email_parse(block)

