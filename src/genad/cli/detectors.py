"""`genad detectors`: list the detectors this install can run."""

import typer

from genad import registry
from genad.cli.app import app


@app.command("detectors")
def list_detectors() -> None:
    """List detector names for --detector (the default is marked)."""
    for name in registry.available():
        mark = "  (default)" if name == registry.DEFAULT_DETECTOR else ""
        typer.echo(f"{name}{mark}")
