"""The one batching loop: a detector over many samples, in chunks, with progress, cancellation,
results handed on as they come and resume.

    for sample, result in run_detector(det, samples, refs=normals, sink=write):
        ...

* Chunks follow what the detector says it can do (`Detector.capabilities()`): a detector that
  scores samples against each other (zero-shot) gets every sample in one predict() call, even
  those already done when resuming (they are compared with, not recorded again); any other
  gets chunks of its `chunk_size` (DEFAULT_CHUNK when it names none), so results are written
  as they come and memory stays bounded.
* `refs` are fitted first (`fit_detector`), and only when something is left to score.
* A chunk that fails with an unexpected exception gives an error result for each of its
  samples and the run goes on (one broken chunk must not end a paid run); a GenadError (a
  user mistake, a spent budget, a failing LMM server) or KeyboardInterrupt stops the run,
  keeping everything already handed to `sink`. A GenadError may carry the chunk's results so
  far (`partial_results`, set by genad.errors.stop_with): they are handed on first (those not scored
  carry an error, so that resume scores them again).
* A non-finite score becomes an error result.
* `on_progress(done, total)` is called after each result (once, when nothing is left to do).
* `on_phase(Phase)` says what the run is doing, from before a long fit on: Phase("fitting",
  None, 0, n_refs) before the fit, Phase("scoring", None, done, total) before the first
  predict(), and in between the steps that a detector reports from inside a long fit() or
  predict() (genad.engines.progress.step: the embedded engine reports each image's features,
  the zero-shot comparisons and the maps) as Phase("fitting" or "scoring", step, done, total);
  every phase also carries the run's results so far and its size (`scored`, `samples`).
* `stop()` is asked before the fit, before each chunk, after each result and at each step
  inside a long fit() or predict() (so a zero-shot batch or a fit on hundreds of references
  stops within moments too); a status it returns ("cancelled", "interrupted") ends the run
  with RunCancelled(status).
* `progress_bar=True` shows all of it on stderr (genad.run.display.ProgressDisplay).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import Any

from genad.detector import Detector
from genad.engines.progress import RunCancelled, tracking
from genad.errors import GenadError
from genad.run.display import Phase, ProgressDisplay
from genad.run.rundir import RunFolder, pending
from genad.types import Result, Sample

__all__ = ["DEFAULT_CHUNK", "Phase", "RunCancelled", "chunks", "fit_detector", "run_detector", "run_into"]

#: samples per predict() call for a detector that names no chunk size
DEFAULT_CHUNK = 32

StopFn = Callable[[], str | None]
OnPhase = Callable[[Phase], None]


def _check(stop: StopFn | None) -> None:
    status = stop() if stop is not None else None
    if status:
        raise RunCancelled(status)


def _steps(name: str, on_phase: OnPhase | None) -> Callable[[str, int, int | None], None] | None:
    if on_phase is None:
        return None

    def on_step(what: str, done: int, total: int | None) -> None:
        on_phase(Phase(name, what, done, total))

    return on_step


def fit_detector(
    det: Detector, refs: Sequence[Sample], *, on_phase: OnPhase | None = None, stop: StopFn | None = None
) -> Detector:
    """`det.fit(refs)` as a run does it: Phase("fitting", ...) reported to `on_phase`, with the
    steps the detector reports from inside, and `stop()` checked before and at each step."""
    refs = list(refs)
    _check(stop)
    if on_phase is not None:
        on_phase(Phase("fitting", None, 0, len(refs)))
    with tracking(_steps("fitting", on_phase), stop):
        det.fit(refs)
    return det


def chunks(det: Detector, samples: Sequence[Sample], todo: Sequence[Sample]) -> Iterator[tuple[list[Sample], set[str]]]:
    """(batch to predict, ids in it to record), as the detector's capabilities ask."""
    caps = det.capabilities()
    if caps.whole_batch:
        yield list(samples), {s.id for s in todo}
        return
    size = max(1, int(caps.chunk_size or DEFAULT_CHUNK))
    todo = list(todo)
    for i in range(0, len(todo), size):
        chunk = todo[i : i + size]
        yield chunk, {s.id for s in chunk}


def _predict(det: Detector, batch: list[Sample]) -> list[Result]:
    try:
        results = det.predict(batch)
        if len(results) != len(batch):
            raise RuntimeError(f"predict returned {len(results)} results for {len(batch)} samples")
    except (GenadError, KeyboardInterrupt):
        raise
    except Exception as e:
        msg = f"{type(e).__name__}: {e}"
        return [Result(s.id, error=msg) for s in batch]
    for r in results:
        if r.score is not None and not math.isfinite(float(r.score)):
            r.error = r.error or f"non-finite score {r.score}"
            r.score = None
    return results


def run_into(
    folder: RunFolder,
    det: Detector,
    samples: Sequence[Sample],
    done: dict[str, dict[str, Any]],
    *,
    runner: Callable[..., Iterator[tuple[Sample, Result]]] | None = None,
    **options: Any,
) -> list[dict[str, Any]]:
    """Score into `folder` the samples that `done` (its records by id, from RunFolder.start)
    lacks or has failed; `done` gains each new record as it is written. Returns the records
    in sample order. `options` as for run_detector (refs, on_progress, stop, progress_bar...);
    `runner`: run_detector's twin that scores elsewhere (genad.run.ray_backend.runner)."""
    index = {s.id: n for n, s in enumerate(samples)}

    def keep(s: Sample, r: Result) -> None:
        done[s.id] = folder.append(s, r, index[s.id])

    run = run_detector if runner is None else runner
    with folder:
        for _ in run(det, samples, todo=pending(samples, done), sink=keep, **options):
            pass
    return [done[s.id] for s in samples]


class Reporter:
    """A run's progress, as its caller and an optional progress bar hear it: `done` of `total`
    samples; `phase(p)` stamps a Phase with them; `advance()` after each result. One home for
    the local loop (run_detector) and the Ray one (genad.run.ray_backend)."""

    def __init__(
        self,
        total: int,
        done: int,
        on_progress: Callable[[int, int], None] | None,
        on_phase: Callable[[Phase], None] | None,
        progress_bar: bool,
        desc: str,
    ) -> None:
        self.total, self.done = total, done
        self.on_progress, self.on_phase = on_progress, on_phase
        self.display = ProgressDisplay(desc) if progress_bar else None

    def progress(self) -> None:
        if self.on_progress is not None:
            self.on_progress(self.done, self.total)
        if self.display is not None:
            self.display.on_progress(self.done, self.total)

    def advance(self) -> None:
        self.done += 1
        self.progress()

    def phase(self, p: Phase) -> None:
        p.scored, p.samples = self.done, self.total
        if self.on_phase is not None:
            self.on_phase(p)
        if self.display is not None:
            self.display.on_phase(p)

    def start(self) -> None:
        if self.display is not None:
            self.display.start()

    def stop(self) -> None:
        if self.display is not None:
            self.display.stop()


def run_detector(
    det: Detector,
    samples: Sequence[Sample],
    *,
    todo: Sequence[Sample] | None = None,
    refs: Sequence[Sample] = (),
    sink: Callable[[Sample, Result], Any] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    on_phase: OnPhase | None = None,
    stop: StopFn | None = None,
    progress_bar: bool = False,
    desc: str = "genad",
) -> Generator[tuple[Sample, Result], None, None]:
    """Score `todo` (default: all of `samples`) with `det`, yielding (sample, result) in the
    order they are scored; see the module doc. `samples` is the whole set (a zero-shot
    detector compares the samples of it with each other)."""
    samples = list(samples)
    todo = samples if todo is None else list(todo)
    rep = Reporter(len(samples), len(samples) - len(todo), on_progress, on_phase, progress_bar, desc)
    if not todo:
        rep.progress()
        return
    _check(stop)
    rep.start()
    try:
        if refs:
            fit_detector(det, refs, on_phase=rep.phase, stop=stop)
        rep.phase(Phase("scoring", None, rep.done, rep.total))
        on_step = _steps("scoring", rep.phase)
        for batch, want in chunks(det, samples, todo):
            _check(stop)
            stopped: GenadError | None = None
            try:
                # the tracker only around the call: never across a yield to the caller
                with tracking(on_step, stop):
                    results = _predict(det, batch)
            except GenadError as e:
                partial = e.partial_results
                if partial is None or len(partial) != len(batch):
                    raise
                results, stopped = partial, e
            yield from hand_on(batch, want, results, sink, rep, None if stopped else stop)
            if stopped is not None:
                raise stopped
    finally:
        rep.stop()


def hand_on(
    batch: Sequence[Sample],
    want: set[str],
    results: Sequence[Result],
    sink: Callable[[Sample, Result], None] | None,
    rep: Reporter,
    stop: StopFn | None,
) -> Iterator[tuple[Sample, Result]]:
    """A chunk's results that the run wants (`want`: ids not done before): each to `sink`,
    counted, yielded; `stop()` asked after each (None: the run is already stopping)."""
    for s, r in zip(batch, results):
        if s.id not in want:
            continue
        if sink is not None:
            sink(s, r)
        rep.advance()
        yield s, r
        _check(stop)
