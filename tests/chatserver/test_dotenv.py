"""`.env` is read by the settings themselves, so `manage.py` run by hand honours it."""

import os
import subprocess
import sys

from chatserver.dotenv import parse
from tests.support.stack import ROOT


def test_parse_reads_names_values_quotes_and_skips_the_rest():
    text = "\n".join([
        "# a comment",
        "",
        "A=1",
        "export B=two words",
        'C="quoted # not a comment"',
        "D='single'",
        "E=value # a comment",
        "not a line",
        "F=",
    ])
    assert parse(text) == {
        "A": "1", "B": "two words", "C": "quoted # not a comment", "D": "single", "E": "value", "F": "",
    }


def _setting(name: str, *, env_file, **env) -> str:
    environ = {k: v for k, v in os.environ.items() if k not in {"DJANGO_SETTINGS_MODULE", "MESSAGE_MAX_LENGTH"}}
    environ.update(ENV_FILE=str(env_file), **env)
    code = f"from django.conf import settings; print(settings.{name})"
    done = subprocess.run(
        [sys.executable, "manage.py", "shell", "--no-imports", "-c", code],
        cwd=ROOT, env=environ, capture_output=True, text=True, timeout=60, check=True,
    )
    return done.stdout.strip()


def test_manage_py_takes_values_from_the_file_and_the_environment_wins(tmp_path):
    # given
    env_file = tmp_path / ".env"
    env_file.write_text(f"MESSAGE_MAX_LENGTH=123\nDATA_DIR={tmp_path}\n")

    # when / then
    assert _setting("MESSAGE_MAX_LENGTH", env_file=env_file) == "123"
    assert _setting("MESSAGE_MAX_LENGTH", env_file=env_file, MESSAGE_MAX_LENGTH="77") == "77"
    assert _setting("DATA_DIR", env_file=env_file) == str(tmp_path)
