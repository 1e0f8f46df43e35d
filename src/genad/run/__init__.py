"""Running a detector over many samples: the one batching loop (`runner`) and the one run
folder format (`rundir`) that `genad detect`, `genad eval`, the service's jobs, the reports and
resume all write and read."""

from genad.run.rundir import RunFolder, pending
from genad.run.runner import RunCancelled, run_detector, run_into

__all__ = ["RunFolder", "RunCancelled", "pending", "run_detector", "run_into"]
