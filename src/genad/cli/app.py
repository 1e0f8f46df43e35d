"""The typer app that every command module adds itself to."""

import typer

app = typer.Typer(
    name="genad",
    help=(
        "Generic anomaly detection and understanding.\n\n"
        "Find and explain anomalies in images, time series, point clouds and video, with an "
        "embedded visual engine (no API key) or any OpenAI-compatible multimodal model.\n\n"
        "Start with:  genad detect IMAGES... --out report/"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Keeps `genad` a group of commands even while only one is installed."""
