import unicodedata

from rest_framework import serializers


class StrictCharField(serializers.CharField):
    """A CharField that takes strings only: DRF's own turns 42 or true into "42"/"True",
    which would let a client's type bug pass unnoticed."""

    default_error_messages = {"not_a_string": "Not a string."}

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("not_a_string")
        return super().to_internal_value(data)


class StrictBooleanField(serializers.BooleanField):
    """A BooleanField that takes JSON's true and false only: DRF's own also takes 1, 0,
    "yes", "off" and the like, which the schema (a boolean) does not allow."""

    default_error_messages = {"not_a_boolean": "Must be true or false."}

    def to_internal_value(self, data):
        if not isinstance(data, bool):
            self.fail("not_a_boolean")
        return data


class QueryIntegerField(serializers.IntegerField):
    """An integer query parameter: DRF takes an empty one (`?limit=`) as absent, which
    hides a client's bug (and is no integer); here it is refused like any non-number."""

    def get_value(self, dictionary):
        if dictionary.get(self.field_name) == "":
            return ""
        return super().get_value(dictionary)
class StrictInput(serializers.Serializer):
    """An input serializer that refuses fields it does not take, instead of ignoring them:
    a client that sends `{"password": ...}` to the wrong endpoint learns so (400 naming
    the field) rather than getting a 200 that changed nothing. `read_only_names` are the
    fields of the object that exist but cannot be written here (a clearer message)."""

    read_only_names: frozenset[str] = frozenset()

    def to_internal_value(self, data):
        if isinstance(data, dict):
            extra = sorted(set(data) - set(self.fields))
            if extra:
                raise serializers.ValidationError(
                    {
                        name: [
                            "This field cannot be changed here."
                            if name in self.read_only_names
                            else "Unknown field."
                        ]
                        for name in extra
                    }
                )
        return super().to_internal_value(data)


# Letters that render as nothing: the Hangul fillers (a well-known way to post "blank"
# messages in Korean apps) and the braille blank.
_INVISIBLE_LETTERS = frozenset("\u115f\u1160\u3164\uffa0\u2800")


def is_blank(text: str) -> bool:
    """Whether `text` shows nothing: only whitespace, control and format characters
    (zero-width space and joiners, BOM, direction marks), separators and invisible
    letters. A message like that is refused as blank content is."""
    return all(
        ch.isspace() or ch in _INVISIBLE_LETTERS or unicodedata.category(ch) in {"Cc", "Cf", "Zs", "Zl", "Zp"}
        for ch in text
    )

