"""The one batching loop: a detector over many samples, in chunks, with progress, cancellation,
results handed on as they come and resume.

    for sample, result in run_detector(det, samples, refs=normals, sink=write):
        ...

* Chunks follow what the detector says it can do (`Detector.capabilities()`): a detector that
  scores samples against each other (zero-shot) gets every sample in one predict() call, even
  those already done when resuming (they are compared with, not recorded again); any other
  gets chunks of its `chunk_size` (DEFAULT_CHUNK when it names none), so results are written
  as they come and memory stays bounded.
* `refs` are fitted first, and only when something is left to score.
* A chunk that fails with an unexpected exception gives an error result for each of its
  samples and the run goes on (one broken chunk must not end a paid run); a GenadError (a
  user mistake, a spent budget, a failing LMM server) or KeyboardInterrupt stops the run,
  keeping everything already handed to `sink`. A GenadError may carry the chunk's results so
  far (`partial_results`, set by genad.errors.stop_with): they are handed on first (those not scored
  carry an error, so that resume scores them again).
* A non-finite score becomes an error result.
* `on_progress(done, total)` is called after each result (once, when nothing is left to do);
  `stop()` is asked
  before each chunk and after each result, and a status it returns ("cancelled",
  "interrupted") ends the run with RunCancelled(status).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from genad.detector import Detector
from genad.errors import GenadError
from genad.run.rundir import RunFolder, pending
from genad.types import Result, Sample

#: samples per predict() call for a detector that names no chunk size
DEFAULT_CHUNK = 32


class RunCancelled(Exception):
    """The run was stopped from outside (`stop()` returned this status)."""

    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status


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
    folder: RunFolder, det: Detector, samples: Sequence[Sample], done: dict[str, dict[str, Any]], **options: Any
) -> list[dict[str, Any]]:
    """Score into `folder` the samples that `done` (its records by id, from RunFolder.start)
    lacks or has failed; `done` gains each new record as it is written. Returns the records
    in sample order. `options` as for run_detector (refs, on_progress, stop, progress_bar...)."""
    index = {s.id: n for n, s in enumerate(samples)}

    def keep(s: Sample, r: Result) -> None:
        done[s.id] = folder.append(s, r, index[s.id])

    with folder:
        for _ in run_detector(det, samples, todo=pending(samples, done), sink=keep, **options):
            pass
    return [done[s.id] for s in samples]


def run_detector(
    det: Detector,
    samples: Sequence[Sample],
    *,
    todo: Sequence[Sample] | None = None,
    refs: Sequence[Sample] = (),
    sink: Callable[[Sample, Result], Any] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    stop: Callable[[], str | None] | None = None,
    progress_bar: bool = False,
    desc: str = "genad",
) -> Iterator[tuple[Sample, Result]]:
    """Score `todo` (default: all of `samples`) with `det`, yielding (sample, result) in the
    order they are scored; see the module doc. `samples` is the whole set (a zero-shot
    detector compares the samples of it with each other)."""
    samples = list(samples)
    todo = samples if todo is None else list(todo)
    total = len(samples)
    done = total - len(todo)
    if not todo:
        if on_progress is not None:
            on_progress(done, total)
        return

    def check() -> None:
        status = stop() if stop is not None else None
        if status:
            raise RunCancelled(status)

    check()
    if refs:
        det.fit(list(refs))
    from tqdm.auto import tqdm

    bar = tqdm(total=total, initial=done, disable=not progress_bar, unit="sample", desc=desc, leave=False)
    try:
        for batch, want in chunks(det, samples, todo):
            check()
            stopped: GenadError | None = None
            try:
                results = _predict(det, batch)
            except GenadError as e:
                partial = e.partial_results
                if partial is None or len(partial) != len(batch):
                    raise
                results, stopped = partial, e
            for s, r in zip(batch, results):
                if s.id not in want:
                    continue
                if sink is not None:
                    sink(s, r)
                done += 1
                bar.update(1)
                if on_progress is not None:
                    on_progress(done, total)
                yield s, r
                if stopped is None:
                    check()
            if stopped is not None:
                raise stopped
    finally:
        bar.close()
