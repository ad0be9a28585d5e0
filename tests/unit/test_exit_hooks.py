"""Process hooks (app/exit_hooks.py): what a forked child runs first."""

from __future__ import annotations

import gc
import os
import weakref

import pytest

from app import exit_hooks
from tests.helpers import held_by_another_thread, in_forked_child

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")


class _Counter:
    def __init__(self) -> None:
        self.resets = 0

    def reset(self) -> None:
        self.resets += 1


def test_a_registered_method_runs_once_in_a_forked_child_and_not_in_the_parent() -> None:
    counter = _Counter()
    exit_hooks.reset_after_fork(counter.reset)
    exit_hooks.reset_after_fork(counter.reset)  # again: a no-op
    assert in_forked_child(lambda: counter.resets == 1) == 0
    assert counter.resets == 0


def test_registering_keeps_nothing_alive() -> None:
    counter = _Counter()
    exit_hooks.reset_after_fork(counter.reset)
    alive = weakref.ref(counter)
    del counter
    gc.collect()
    assert alive() is None
    assert in_forked_child(lambda: True) == 0  # a dead registration is skipped in the child


def test_a_child_forked_while_another_thread_held_the_hooks_lock_can_register() -> None:
    def child() -> bool:
        exit_hooks.reset_after_fork(_Counter().reset)
        return True

    with held_by_another_thread(exit_hooks._LOCK):
        assert in_forked_child(child, timeout=10) == 0
