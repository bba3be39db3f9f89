"""`.env`: values for the environment variables the environment does not set itself.

The settings load it (so `manage.py`, run by hand, honours it as `make run` does), and
`scripts/run.sh` asks this module for the same values as shell exports, for the processes
of the Procfile that are not Python (the broker). Lines are `NAME=value`, optionally
`export NAME=value`, with the value optionally in single or double quotes; blank lines and
`#` comments are skipped. No interpolation.

    python -m chatserver.dotenv [FILE]   # prints `export NAME='value'` for each unset NAME
"""

import os
import re
import shlex
import sys
from pathlib import Path

_LINE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$")


def parse(text: str) -> dict[str, str]:
    values = {}
    for line in text.splitlines():
        match = _LINE.match(line)
        if match is None:
            continue  # a comment, a blank line
        name, value = match.group(1), match.group(2).strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()  # a trailing comment
        values[name] = value
    return values


def load(path: Path) -> dict[str, str]:
    """Set, from the file if it exists, every variable the environment lacks; return
    what was set."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    missing = {k: v for k, v in parse(text).items() if k not in os.environ}
    os.environ.update(missing)
    return missing


if __name__ == "__main__":
    file = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / ".env"
    for name, value in load(file).items():
        print(f"export {name}={shlex.quote(value)}")
