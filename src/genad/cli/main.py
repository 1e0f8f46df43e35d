"""Entry point: load every command module, run, and turn user mistakes into one-line errors."""

from __future__ import annotations

import importlib
import os
import sys

import typer

from genad.cli.app import app
from genad.errors import GenadError

# Each module registers its commands on `app` when imported.
COMMAND_MODULES = [
    "genad.cli.detect",
    "genad.cli.evaluate",
    "genad.cli.calibrate",
    "genad.cli.fit",
    "genad.cli.info",
    "genad.cli.export",
    "genad.cli.detectors",
    "genad.cli.cases",
    "genad.cli.ask",
    "genad.cli.serve",
]


def _load_commands() -> None:
    for name in COMMAND_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # command not built in this install
                continue
            raise


def main(argv: list[str] | None = None) -> None:
    _load_commands()
    try:
        rc = app(args=argv, standalone_mode=False)
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except GenadError as e:
        typer.secho(f"error: {e}", err=True, fg=typer.colors.RED)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.secho("interrupted: results written so far are kept", err=True)
        sys.exit(130)
    except BrokenPipeError:
        # the reader of stdout went away (`genad detect ... --format jsonl | head`): stop quietly
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        sys.exit(1)
    except typer.Exit as e:  # raised by commands that exit on purpose
        sys.exit(e.exit_code)
    except typer.Abort:
        sys.exit(1)
    except Exception as e:
        # Usage errors (typer's vendored click) carry their own message and exit code.
        if hasattr(e, "show") and hasattr(e, "exit_code"):
            e.show()
            sys.exit(e.exit_code)
        raise


if __name__ == "__main__":
    main()
