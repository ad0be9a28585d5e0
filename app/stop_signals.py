"""Signals that stop a command-line tool, handled for the length of a block, then given back.

``deploy-docker.py`` (its run, and its rollback) and ``monitor-docker.py`` each take SIGINT,
SIGTERM and SIGHUP (a terminal or SSH session closed) over while they run, and set back the
handlers they found when they are done: an in-process caller (the test suite) otherwise kept a
handler of a deployment or a monitor long gone, and ignored its Ctrl-C for the rest of the
process. Standard library only: the deploy script runs on the host.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

STOPS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextmanager
def handled(
    handler: Callable[[int, Any], Any], signums: Sequence[int] = STOPS, *, keep_nohup: bool = True
) -> Iterator[None]:
    """``handler`` for each of ``signums`` while the block runs, then the handlers found again.

    Only the main thread may set a handler (and signals land there): elsewhere nothing is set.
    ``keep_nohup``: a SIGHUP found ignored (``nohup``) stays ignored, its terminal gone by design.
    """
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in signums:
            found = signal.getsignal(signum)
            if keep_nohup and signum == signal.SIGHUP and found == signal.SIG_IGN:
                continue
            previous[signum] = found
            signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, found in previous.items():
            signal.signal(signum, signal.SIG_DFL if found is None else found)


def like_ctrl_c() -> AbstractContextManager[None]:
    """SIGTERM (a CI job's timeout, ``docker stop``) and SIGHUP (the terminal closed) raise
    ``KeyboardInterrupt`` in the block, as Ctrl-C does: what cleans up after a Ctrl-C (a staged
    snapshot, a directory a command created for its result) cleans up after them too, where
    they killed the process on the spot. A SIGHUP found ignored (``nohup``) stays ignored."""
    return handled(signal.default_int_handler, (signal.SIGTERM, signal.SIGHUP))
