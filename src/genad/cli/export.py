"""`genad export MODEL --onnx OUT.onnx`: a saved embedded model as one ONNX graph.

    genad fit golden/ --save station.genad
    genad export station.genad --onnx station.onnx

The graph holds the backbone, the nearest-neighbour distances to the memory bank, the map
upsampling and the image score; its preprocessing is in the graph's metadata
(genad.engines.embedded.export)."""

from __future__ import annotations

from pathlib import Path

import typer

from genad.cli.app import app
from genad.errors import GenadError


@app.command("export")
def export(
    model: Path = typer.Argument(..., show_default=False, help="A model file written by `genad fit --save`."),
    onnx: Path = typer.Option(..., "--onnx", show_default=False, help="Write the ONNX graph here."),
) -> None:
    """Export a saved embedded model to ONNX (run it with onnxruntime, no genad needed)."""
    import genad
    from genad.engines.embedded.export import export_onnx

    det = genad.load(model)
    if det.name != "embedded":
        raise GenadError(f"only embedded models export to ONNX; {model} holds a {det.name!r} model")
    out = export_onnx(det, onnx)
    typer.echo(f"wrote {out}")
