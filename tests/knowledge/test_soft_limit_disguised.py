"""An indexing run stopped by its soft time limit is reported as such even when the limit's signal
surfaced as another error (raised inside a C extension or a thread pool while the limit was handled)."""

from __future__ import annotations

from types import SimpleNamespace

from celery.exceptions import SoftTimeLimitExceeded

from knowledge.tasks import _stopped_by_soft_limit

MESSAGE = SimpleNamespace(timelimit=(660, 600))  # (hard, soft) as queue_indexing_turn sends them


def test_an_error_raised_while_the_limit_was_handled_is_the_limit() -> None:
    try:
        try:
            raise SoftTimeLimitExceeded()
        except SoftTimeLimitExceeded:
            raise RuntimeError("tokenizer interrupted") from None
    except RuntimeError as exc:
        disguised = exc
    assert disguised.__suppress_context__ and isinstance(disguised.__context__, SoftTimeLimitExceeded)
    assert _stopped_by_soft_limit(disguised, MESSAGE, elapsed=1.0)


def test_an_error_after_the_soft_limit_is_the_limit_and_one_before_it_is_a_crash() -> None:
    assert _stopped_by_soft_limit(RuntimeError("late"), MESSAGE, elapsed=601.0)
    assert not _stopped_by_soft_limit(RuntimeError("a bug"), MESSAGE, elapsed=3.0)
    assert not _stopped_by_soft_limit(RuntimeError("a bug"), SimpleNamespace(timelimit=None), elapsed=9999.0)
