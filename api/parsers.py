"""The API's JSON parser: every body that cannot be parsed is a 400, never a 500.

DRF's parser turns a ValueError into a 400, but JSON nested deeper than the decoder can recurse
raises RecursionError, which escaped as a 500.
"""
from __future__ import annotations

from rest_framework import parsers
from rest_framework.exceptions import ParseError


class JSONParser(parsers.JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError("JSON parse error - nested too deeply.") from None
