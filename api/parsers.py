"""The API's JSON parser: every body that cannot be parsed is a 400, never a 500.

DRF's parser turns a ValueError into a 400, but JSON nested deeper than the decoder can recurse
raised RecursionError, and a `\\ud800`-style escape (a lone surrogate) parsed into a string that no
UTF-8 text can hold: storing it or echoing it back in an error message failed with a 500.
"""
from __future__ import annotations

from rest_framework import parsers
from rest_framework.exceptions import ParseError


class JSONParser(parsers.JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError("JSON parse error - nested too deeply.") from None
        _refuse_lone_surrogates(data)
        return data


def _refuse_lone_surrogates(data) -> None:
    """Walk the parsed body (iteratively: its depth is what the decoder allowed) for unencodable text."""
    pending = [data]
    while pending:
        value = pending.pop()
        if isinstance(value, dict):
            pending.extend(value.keys())
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)
        elif isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise ParseError("JSON parse error - a string holds a lone surrogate escape (invalid Unicode).") from None
