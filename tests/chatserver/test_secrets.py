"""The generated secrets (chatserver.settings.secret): made once, whole, whichever of the
processes starting at once gets there first."""

import multiprocessing

import pytest

from chatserver import settings as project_settings


def _read_secret(barrier, answers) -> None:
    barrier.wait()
    answers.put(project_settings.secret("race", "CHAT_TEST_NO_SUCH_SECRET"))


@pytest.mark.parametrize("round_", range(20))
def test_processes_starting_at_once_all_get_the_same_whole_secret(tmp_path, monkeypatch, round_):
    # given: no secret yet, and 8 processes (both test passes, granian's workers, the
    # workers: `make test` and `make run` start several at once)
    monkeypatch.setattr(project_settings, "SECRETS_DIR", tmp_path / "secrets")
    context = multiprocessing.get_context("fork")
    barrier, answers = context.Barrier(8), context.Queue()
    processes = [context.Process(target=_read_secret, args=(barrier, answers)) for _ in range(8)]

    # when
    for process in processes:
        process.start()
    values = [answers.get(timeout=30) for _ in processes]
    for process in processes:
        process.join(10)

    # then: one secret, never an empty or partial one
    assert len(set(values)) == 1, values
    assert len(values[0]) == 43  # 32 bytes, URL-safe base64
    assert (tmp_path / "secrets" / "race").read_text() == values[0] + "\n"
    assert (tmp_path / "secrets" / "race").stat().st_mode & 0o777 == 0o600
    assert [p.name for p in (tmp_path / "secrets").iterdir()] == ["race"]


def test_an_empty_secret_file_is_refused_by_name(tmp_path, monkeypatch):
    # A file left empty (by a crash while it was written, before it was made whole).
    monkeypatch.setattr(project_settings, "SECRETS_DIR", tmp_path)
    (tmp_path / "race").write_text("")

    with pytest.raises(project_settings.ImproperlyConfigured, match="race"):
        project_settings.secret("race", "CHAT_TEST_NO_SUCH_SECRET")
