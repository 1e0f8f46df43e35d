"""`genad serve`: the inspection service and its web page."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Annotated

import typer

from genad.cli.app import app
from genad.errors import GenadError


def default_storage() -> Path:
    env = os.environ.get("GENAD_STORAGE_DIR")
    if env:
        return Path(env)
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "genad" / "service"


@app.command("serve")
def serve(
    host: Annotated[
        str,
        typer.Option(help="interface to listen on; any other than loopback needs a token (or --allow-no-token)"),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    storage: Annotated[
        Path | None,
        typer.Option(
            help="folder for the database, uploads and job outputs [default: $GENAD_STORAGE_DIR or ~/.local/share/genad/service]"
        ),
    ] = None,
    db: Annotated[Path | None, typer.Option(help="SQLite file [default: STORAGE/genad.sqlite3]")] = None,
    data_root: Annotated[
        list[Path] | None,
        typer.Option("--data-root", help="folder that jobs may read (repeatable); jobs name folders under it"),
    ] = None,
    max_upload_mb: Annotated[float, typer.Option(help="largest accepted file, in MB")] = 20.0,
    max_files: Annotated[int, typer.Option(help="most files in one detect request")] = 16,
    max_megapixels: Annotated[float, typer.Option(help="largest accepted image, in megapixels")] = 40.0,
    workers: Annotated[int, typer.Option(help="detections run at once (each uses all cores)")] = 1,
    max_models: Annotated[int, typer.Option(help="stored models kept at most (POST /v1/models)")] = 100,
    model_cache: Annotated[int, typer.Option(help="stored models kept loaded in memory at once")] = 3,
    max_folder_images: Annotated[
        int, typer.Option(help="most images a stored model is fitted on from a data-root folder")
    ] = 1000,
    models_dir: Annotated[
        Path | None,
        typer.Option(help="folder of .onnx backbones a request may name as backbone onnx:NAME (NAME.onnx in it)"),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            help="bearer token every /v1 request must send [default: $GENAD_SERVICE_TOKEN]; prefer the "
            "environment variable (a command line is visible to other users)",
            show_default=False,
        ),
    ] = None,
    allow_no_token: Annotated[
        bool, typer.Option("--allow-no-token", help="listen on a non-loopback interface without a token")
    ] = False,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "info",
) -> None:
    """Run the inspection service: JSON API under /v1, the web page at /, API docs at /docs."""
    try:
        import uvicorn

        from genad.service.app import create_app
    except ModuleNotFoundError as e:
        raise GenadError(f"`genad serve` needs {e.name!r}: pip install 'genad[serve]'") from e
    roots = list(data_root or [])
    for r in roots:
        if not r.is_dir():
            raise GenadError(f"--data-root {r} is not a folder")
    if max_upload_mb <= 0 or max_files < 1 or workers < 1 or max_megapixels <= 0:
        raise GenadError("--max-upload-mb, --max-files, --max-megapixels and --workers must be positive")
    if max_models < 1 or model_cache < 1 or max_folder_images < 1:
        raise GenadError("--max-models, --model-cache and --max-folder-images must be at least 1")
    if models_dir is not None and not models_dir.is_dir():
        raise GenadError(f"--models-dir {models_dir} is not a folder")
    token = token or os.environ.get("GENAD_SERVICE_TOKEN") or None
    if token is not None:
        from genad.service.auth import check_token

        check_token(token)
    elif not is_loopback(host) and not allow_no_token:
        raise GenadError(
            f"refusing to listen on {host} without a token: anyone who reaches it could use the service; "
            "set GENAD_SERVICE_TOKEN (or --token), or pass --allow-no-token"
        )
    storage_dir = (storage or default_storage()).expanduser().resolve()
    from genad.service.lock import StorageLock

    # first of all: a second service on this storage stops here, before it touches a job
    lock = StorageLock.acquire(storage_dir)
    application = create_app(
        storage_dir,
        data_roots=roots,
        max_upload_mb=max_upload_mb,
        max_files=max_files,
        max_pixels=int(max_megapixels * 1e6),
        db_path=db,
        detect_workers=workers,
        max_models=max_models,
        model_cache=model_cache,
        max_folder_images=max_folder_images,
        token=token,
        models_dir=models_dir,
        lock=lock,
    )
    login = "bearer token required on /v1" if token else "no login"
    typer.echo(f"genad service on http://{host}:{port}/  (storage: {storage_dir}; {login})")
    if token is None and not is_loopback(host):
        typer.secho(
            "warning: the service has no login; anyone who can reach this port can use it",
            err=True,
            fg=typer.colors.YELLOW,
        )
    try:
        uvicorn.run(application, host=host, port=port, log_level=log_level)
    finally:
        lock.release()


def is_loopback(host: str) -> bool:
    """Whether `host` is only reachable from this machine (127.0.0.0/8, ::1, localhost)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface
