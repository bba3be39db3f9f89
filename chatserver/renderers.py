"""JSON rendering with orjson, for the hottest endpoint (the message POST).

The same bytes as DRF's `JSONRenderer` with this project's settings (compact, UTF-8, not
ASCII-escaped) for what the API returns: dicts of strings, numbers, booleans, None and
lists. What orjson does not know, or formats otherwise, goes to DRF's own encoder
(`default`): datetimes (DRF writes UTC as `Z`, orjson as `+00:00`), decimals, UUIDs,
lazy translations. Two differences remain, both valid JSON that every parser reads alike:
U+2028 and U+2029 are written as themselves (DRF escapes them for JavaScript's `eval`),
and a float NaN would be `null` (DRF refuses it; the API has no floats). A client asking
for indented JSON (`Accept: application/json; indent=2`) gets DRF's renderer.
"""

import orjson
from rest_framework.renderers import JSONRenderer
from rest_framework.utils.encoders import JSONEncoder

_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_NON_STR_KEYS
_default = JSONEncoder().default


class OrjsonRenderer(JSONRenderer):
    def render(self, data, accepted_media_type=None, renderer_context=None):
        if data is None:
            return b""
        if accepted_media_type and "indent" in accepted_media_type:
            return super().render(data, accepted_media_type, renderer_context)
        return orjson.dumps(data, default=_default, option=_OPTIONS)
