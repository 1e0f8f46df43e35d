"""Progress of a run on stderr, for the command line.

On a terminal: rich progress bars (the results scored so far, and below it what the detector
is doing inside a long call: "fitting: features 120/476", "scoring: comparing 40/100"),
removed when the run ends. Lines written to stdout meanwhile (`genad detect`'s rows) go above
the bars when stdout is the same terminal, and straight to stdout when it is a pipe or a file,
so machine-readable output never mixes with progress.

Elsewhere (a log file, a pipe, CI): a plain line at most every GENAD_PROGRESS_SECONDS seconds
(default 5), none in the first such interval, so a quick run, or one that stops at once with
a one-line error, prints no progress at all.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import IO, Any

#: seconds between plain progress lines when stderr is not a terminal
DEFAULT_INTERVAL = 5.0


@dataclass
class Phase:
    """What a run is doing: `name` "fitting" or "scoring"; `step` what the detector reports from
    inside a long call ("features", "comparing", "memory bank"...), None at the phase's start;
    `done` of `total` of that step or phase (references for the fit, samples for scoring; None
    where unknown); `scored` of `samples`: the run's results so far and its size, known from
    the first phase on (before a long fit)."""

    name: str
    step: str | None = None
    done: int | None = None
    total: int | None = None
    scored: int | None = None
    samples: int | None = None

    def __str__(self) -> str:
        text = self.name if self.step is None else f"{self.name}: {self.step}"
        if self.done is not None and self.total:
            text += f" {self.done}/{self.total}"
        return text


def _interval() -> float:
    raw = os.environ.get("GENAD_PROGRESS_SECONDS", "").strip()
    try:
        return max(0.0, float(raw)) if raw else DEFAULT_INTERVAL
    except ValueError:
        return DEFAULT_INTERVAL


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty()) and os.environ.get("TERM") != "dumb"
    except (AttributeError, ValueError):
        return False


class ProgressDisplay:
    """Progress bars (or plain lines) on stderr; a context manager. `on_progress(done, total)`
    and `on_phase(Phase)` are what genad.run's loop calls."""

    def __init__(self, desc: str = "genad", stream: IO[str] | None = None, interval: float | None = None) -> None:
        self.desc = desc
        self.stream = stream if stream is not None else sys.stderr
        self.interval = _interval() if interval is None else interval
        self.live = _is_terminal(self.stream)
        self._progress: Any = None
        self._main: Any = None
        self._sub: Any = None
        self._done: int | None = None
        self._total: int | None = None
        self._phase: Phase | None = None
        self._t0 = self._last = time.monotonic()

    # -- lifecycle ------------------------------------------------------------------------------
    def __enter__(self) -> ProgressDisplay:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._t0 = self._last = time.monotonic()
        if not self.live or self._progress is not None:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(file=self.stream),
            transient=True,
            # stdout on the same terminal: rows go above the bars; a pipe or a file: untouched
            redirect_stdout=_is_terminal(sys.stdout),
            redirect_stderr=False,
        )
        self._progress.start()
        self._main = self._progress.add_task(self.desc, total=None)
        self._sub = self._progress.add_task("", total=None, visible=False)

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    # -- what the run loop calls ---------------------------------------------------------------
    def on_progress(self, done: int, total: int) -> None:
        self._done, self._total = done, total
        if self._progress is not None:
            self._progress.update(self._main, completed=done, total=total)
            if self._phase is not None and self._phase.name == "scoring" and self._phase.step is not None:
                self._progress.update(self._sub, visible=False)
                self._phase = Phase("scoring")
            return
        self._maybe_line()

    def on_phase(self, phase: Phase) -> None:
        self._phase = phase
        if self._total is None and phase.samples is not None:
            self._done, self._total = phase.scored or 0, phase.samples
            if self._progress is not None:
                self._progress.update(self._main, completed=self._done, total=self._total)
        if self._progress is not None:
            if phase.name == "fitting" or phase.step is not None:
                self._progress.update(
                    self._sub,
                    description=f"  {phase.name}" + (f": {phase.step}" if phase.step else ""),
                    completed=phase.done or 0,
                    total=phase.total,
                    visible=True,
                )
            else:
                self._progress.update(self._sub, visible=False)
            return
        self._maybe_line()

    # -- plain lines ----------------------------------------------------------------------------
    def _maybe_line(self) -> None:
        now = time.monotonic()
        if now - self._t0 < self.interval or now - self._last < self.interval:
            return
        self._last = now
        parts = []
        if self._total is not None:
            parts.append(f"{self._done}/{self._total} scored")
        if self._phase is not None and (self._phase.name == "fitting" or self._phase.step is not None):
            parts.append(str(self._phase))
        if not parts:
            return
        try:
            self.stream.write(f"{self.desc}: {', '.join(parts)} ({now - self._t0:.0f} s)\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass
