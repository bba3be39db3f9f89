# The largest id a BIGINT column holds: a larger number in a path or body must be a
# clean 404 or 400, never a database error.
MAX_ID = 2**63 - 1


class IdConverter:
    """`<id:name>`: a positive integer that fits the database's BIGINT ids."""

    regex = "[0-9]{1,19}"

    def to_python(self, value: str) -> int:
        number = int(value)
        if not 1 <= number <= MAX_ID:
            raise ValueError("id out of range")  # makes the URL not match: 404 (ids start at 1)
        return number

    def to_url(self, value: int) -> str:
        return str(value)
