"""Ctrl-C and SIGTERM for command-line runs: stop within moments, never mid-write.

    @stops_on_signals                # genad detect / genad eval: the whole command
    def detect(...): ...             # SIGINT or SIGTERM raise KeyboardInterrupt in it
        with deferred_interrupts():  # RunFolder.append: a result is written whole
            ...

Python turns SIGINT into KeyboardInterrupt by itself, but SIGTERM (what `kill`, a container
runtime or a job scheduler send) ends the process at once, without clean-up. Inside
`stop_on_signals` both raise KeyboardInterrupt in the main thread, wherever it is (waiting on
an LMM server, in a backbone call), except inside `deferred_interrupts`, where the interrupt
waits for the block's end: a results line is never torn and its map never half-written. A
second signal during such a block does not wait. Only the main thread handles signals; in
any other thread (the service's jobs, which stop through their `stop()` check instead) both
helpers do nothing.
"""

from __future__ import annotations

import functools
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """KeyboardInterrupt raised by SIGINT or SIGTERM; `signum` says which."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_deferring = 0
_pending: int | None = None


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _handler(signum: int, frame: FrameType | None) -> None:
    global _pending
    if _deferring and _pending is None:
        _pending = signum  # raised when the write in progress is complete
        return
    raise Interrupted(signum)


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within the block SIGINT and SIGTERM raise KeyboardInterrupt (see the module doc); the
    previous handlers come back afterwards."""
    global _pending
    if not _main_thread():
        yield
        return
    previous: dict[signal.Signals, Any] = {}
    try:
        for sig in SIGNALS:
            previous[sig] = signal.signal(sig, _handler)
    except (ValueError, OSError):  # not allowed here (an embedded interpreter): leave them alone
        for was, old in previous.items():
            signal.signal(was, old)
        previous = {}
    try:
        yield
    finally:
        for was, old in previous.items():
            signal.signal(was, old)
        _pending = None


def stops_on_signals(func: F) -> F:
    """`func` run inside `stop_on_signals` (a decorator; the signature is kept for typer)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with stop_on_signals():
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


@contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Hold back an interrupt (from `stop_on_signals`) until the block ends."""
    global _deferring, _pending
    if not _main_thread():
        yield
        return
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
        if not _deferring and _pending is not None:
            signum, _pending = _pending, None
            raise Interrupted(signum)
