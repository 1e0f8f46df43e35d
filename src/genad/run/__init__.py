"""Running a detector over many samples: the one batching loop (`runner`) and the one run
folder format (`rundir`) that `genad detect`, `genad eval`, the service's jobs, the reports and
resume all write and read; progress on stderr (`display`) and Ctrl-C / SIGTERM handling
(`signals`) for the command line."""

from genad.run.display import Phase, ProgressDisplay
from genad.run.rundir import RunFolder, pending
from genad.run.runner import RunCancelled, fit_detector, run_detector, run_into
from genad.run.signals import deferred_interrupts, stop_on_signals, stops_on_signals

__all__ = [
    "Phase",
    "ProgressDisplay",
    "RunFolder",
    "RunCancelled",
    "deferred_interrupts",
    "fit_detector",
    "pending",
    "run_detector",
    "run_into",
    "stop_on_signals",
    "stops_on_signals",
]
