"""Workers: the framework's rules (pure), and chatserver/ staying free of the apps."""

import ast
from pathlib import Path

import pytest

from chatserver import workers

CHATSERVER = Path(__file__).resolve().parents[1] / "chatserver"
APPS = {"accounts", "chats"}


def imported_modules(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module)
    return modules


def test_no_module_of_chatserver_imports_an_app():
    # given
    files = sorted(CHATSERVER.rglob("*.py"))
    assert CHATSERVER / "relay.py" in files and CHATSERVER / "workers.py" in files

    # when
    offending = {
        str(path.relative_to(CHATSERVER)): sorted(m for m in imported_modules(path) if m.split(".")[0] in APPS)
        for path in files
    }

    # then
    assert {path: modules for path, modules in offending.items() if modules} == {}


def test_the_apps_register_the_relay_and_the_presence_worker():
    registered = workers.registered()

    assert sorted(registered) == ["presence", "relay"]


def test_a_name_cannot_be_registered_twice_with_another_factory():
    # given
    factory = workers.registered()["relay"]

    # when / then: the same factory again is harmless, another one is refused
    workers.register(name="relay", factory=factory)
    with pytest.raises(ValueError, match="'relay' is already registered"):
        workers.register(name="relay", factory=lambda **kwargs: None)
    assert workers.registered()["relay"] is factory


def test_an_unknown_worker_name_is_refused_before_anything_runs():
    with pytest.raises(LookupError, match="no worker named 'push'"):
        workers.run_forever(name="push")
