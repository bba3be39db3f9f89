"""Every error code a client can get is in one enum, once."""

import re
from enum import StrEnum
from pathlib import Path

from accounts.errors import AccountsErrorCode
from chats.errors import ChatsErrorCode
from chatserver.errors import ApplicationError, ErrorCode, FrontErrorCode

ENUMS: list[type[StrEnum]] = [ErrorCode, FrontErrorCode, AccountsErrorCode, ChatsErrorCode]


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def test_no_code_is_in_two_enums():
    codes = [code.value for enum in ENUMS for code in enum]
    assert len(codes) == len(set(codes))


def test_every_application_error_uses_a_code_of_an_enum():
    import accounts.services  # noqa: F401  (every module that declares errors is loaded)
    import chats.views  # noqa: F401

    members = {code for enum in ENUMS for code in enum}
    errors = list(_subclasses(ApplicationError))
    assert len(errors) > 20
    assert [e.__name__ for e in errors if e.code not in members] == []
    assert [e.__name__ for e in errors if not isinstance(e.code, StrEnum)] == []


def test_every_code_is_documented_and_every_documented_code_exists():
    from chatserver import exception_handler

    table = (Path(__file__).resolve().parents[2] / "docs" / "http-api.md").read_text()
    documented = set(re.findall(r"^\| \d{3} \| `([a-z_]+)` \|", table, re.M))
    codes = {code.value for enum in ENUMS for code in enum}
    # Django's and DRF's own refusals, as the exception handler names them, are codes too.
    assert set(exception_handler._CODE_NAMES.values()) <= codes
    assert sorted(codes - documented - {"conflict"}) == []  # `conflict` is only a base class
    assert sorted(documented - codes) == []


def test_the_front_servers_answers_use_codes_of_the_enums():
    conf = (Path(__file__).resolve().parents[2] / "front" / "nginx.conf").read_text()
    answered = set(re.findall(r'\{"error": \{"code": "([a-z_]+)"', conf))
    codes = {code.value for enum in ENUMS for code in enum}

    assert {code.value for code in FrontErrorCode} <= answered
    assert sorted(answered - codes) == []
