"""A faster reader of an upstream response's header block, for http.client (and so urllib3 and requests).

http.client hands every response's header block to the ``email`` package's feed parser, a general
MIME parser: in profiles of a relayed call it cost about 4% of the gateway's CPU, as much as the
rest of reading the response. Provider answers have plain ``Name: value`` lines, which one regular
expression parses into the very same ``HTTPMessage``. Anything else (folded lines, a bare CR, a
malformed line, a block cut off before its blank line) still goes to the ``email`` parser, so every
response gets exactly the headers it got before; ``tests/test_response_head.py`` checks that against
the ``email`` parser on generated blocks. bridge.patches installs it in http.client.
"""

from __future__ import annotations

import email.parser
import http.client
import re
from typing import BinaryIO

# A block the email parser would read as plain "Name: value" lines, one per line, ending with an empty
# line: names of printable ASCII but the colon, values without control characters other than tab.
_PLAIN_BLOCK = re.compile(rb"(?:[\x21-\x39\x3b-\x7e]+:[^\x00-\x08\x0a-\x1f]*\r?\n)*\r?\n")
_PLAIN_LINE = re.compile(rb"([\x21-\x39\x3b-\x7e]+):[ \t]*([^\r\n]*)\r?\n")


def parse_headers(fp: BinaryIO, _class: type = http.client.HTTPMessage) -> http.client.HTTPMessage:
    """``http.client.parse_headers``, same arguments and result."""
    block = b"".join(http.client._read_headers(fp))  # the same limits on line length and count
    if _class is http.client.HTTPMessage and _PLAIN_BLOCK.fullmatch(block):
        message = http.client.HTTPMessage()
        message._headers = [(name.decode("iso-8859-1"), value.decode("iso-8859-1"))
                            for name, value in _PLAIN_LINE.findall(block)]
        message.set_payload("")  # what the email parser leaves: no unparsed rest
        return message
    return email.parser.Parser(_class=_class).parsestr(block.decode("iso-8859-1"))
