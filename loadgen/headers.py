"""The rule for an HTTP header loadgen may send: the ground floor, importing nothing from loadgen.

Input: a header name and value. Output: whether they can go on the wire as
they are (``valid_header``), or the ``Name: value`` line itself
(``header_line``). Config validation and the connection pool both ask here, so
a header refused by one is refused by the other.
"""

from __future__ import annotations


def valid_header(name: str, value: str) -> bool:
    """Whether a header can go on the wire as it is: a name without colons or spaces, no line breaks."""
    return bool(name) and not any(c in name for c in ":\r\n \t") and "\r" not in value and "\n" not in value


def header_line(name: str, value: str) -> str:
    """``Name: value``; ValueError naming the header when it would break the request's framing."""
    if not valid_header(name, value):
        raise ValueError(f"invalid HTTP header {name!r}: {value[:60]!r} (no colon or space in the name, no line breaks)")
    return f"{name}: {value}"
