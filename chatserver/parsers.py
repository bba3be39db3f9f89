"""The JSON parser of every endpoint.

DRF's own, except for one input it turns into a 500: a body nested so deeply (some
thousand `[` or `{`) that Python's decoder runs out of recursion depth. That is a
malformed body like any other, so it answers 400 `malformed_body` too.
"""

from rest_framework import parsers
from rest_framework.exceptions import ParseError


class JSONParser(parsers.JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError("JSON parse error - nested too deeply.") from None
