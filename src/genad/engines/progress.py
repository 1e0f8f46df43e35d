"""Progress and stop checks from inside a long fit() or predict().

A zero-shot batch is one predict() call, and a fit on hundreds of references one fit() call:
the run loop (genad.run) can neither report progress nor stop between samples there. So, for
the thread that runs the detector, it installs a tracker (`tracking`), and engines call

    step("features", done, total)     # between images, blocks, passes

which hands the step to the tracker's `on_step` and raises RunCancelled when the tracker's
`stop()` returns a status ("cancelled", "interrupted"). Without a tracker (a detector used
directly) a step costs one attribute lookup. Nested detectors (an image engine inside a
video or point-cloud detector) report through the same tracker, since it is per thread.

RunCancelled derives from BaseException, like KeyboardInterrupt: the `except Exception` that
turns one sample's failure into its error result must not turn a stop into one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

#: on_step(what, done, total): what the engine is doing ("features", "comparing"...), how far
OnStep = Callable[[str, int, int | None], None]


class RunCancelled(BaseException):
    """The run was stopped from outside (its `stop()` returned this status)."""

    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status


class _Tracker:
    __slots__ = ("on_step", "stop")

    def __init__(self, on_step: OnStep | None, stop: Callable[[], str | None] | None) -> None:
        self.on_step = on_step
        self.stop = stop


_local = threading.local()


@contextmanager
def tracking(on_step: OnStep | None = None, stop: Callable[[], str | None] | None = None) -> Iterator[None]:
    """Within the block, `step()` in this thread reports to `on_step` and checks `stop`."""
    previous = getattr(_local, "tracker", None)
    _local.tracker = _Tracker(on_step, stop)
    try:
        yield
    finally:
        _local.tracker = previous


def check() -> None:
    """Raise RunCancelled if the tracker of this thread says to stop."""
    tracker: _Tracker | None = getattr(_local, "tracker", None)
    if tracker is not None and tracker.stop is not None:
        status = tracker.stop()
        if status:
            raise RunCancelled(status)


def step(what: str, done: int, total: int | None = None) -> None:
    """Report a step of a long fit() or predict() and stop there if asked (see the module doc)."""
    tracker: _Tracker | None = getattr(_local, "tracker", None)
    if tracker is None:
        return
    check()
    if tracker.on_step is not None:
        tracker.on_step(what, int(done), None if total is None else int(total))
