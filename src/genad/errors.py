"""User-facing errors: the CLI and service print the message in one line, never a traceback."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class GenadError(Exception):
    """A mistake the user can fix (bad path, bad option, bad file). The message says what to do."""

    #: the results a predict() had when this error stopped it (see stop_with)
    partial_results: list[Any] | None = None


class ConfigError(GenadError):
    """Missing or wrong configuration (API key, base URL, model name)."""


def stop_with(error: GenadError, results: Sequence[Any]) -> GenadError:
    """`error`, carrying the Results a predict() had when it had to stop (one per sample of its
    batch, in order; those not scored carry an error), so that the run loop keeps them before
    it stops the run (genad.run.runner)."""
    error.partial_results = list(results)
    return error
