"""`genad info MODEL`: what a saved model holds (without loading its state)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from genad.cli.app import app


@app.command("info")
def info(
    model: Path = typer.Argument(..., show_default=False, help="A model file written by `genad fit --save`."),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON (without the fitted state)."),
) -> None:
    """Show a saved model: detector, options, backbone weights, preprocessing, threshold, references."""
    from genad.model_file import describe, read_manifest

    manifest = read_manifest(model)
    if as_json:
        shown = {k: v for k, v in manifest.items() if k not in ("model", "arrays")}
        shown["arrays"] = len(manifest.get("arrays") or {})
        typer.echo(json.dumps(shown, indent=2))
        return
    width = max(len(k) for k, _ in describe(manifest))
    for label, text in describe(manifest):
        typer.echo(f"{label:<{width}}  {text}")
