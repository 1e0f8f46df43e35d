"""Files written whole or not at all: a reader (or a resumed run) never sees half a file.

    atomic_write(path, lambda f: np.save(f, a))       # any writer of a binary file object
    atomic_write_text(path, json.dumps(entry))

The data go to a temporary file beside `path` (same folder, so the rename stays on one file
system), which then replaces `path` in one step; on any failure the temporary file is removed
and the error is raised. Used by every cache, the run folder, sessions and saved models.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object], *, fsync: bool = False) -> Path:
    """Call `write(f)` on a temporary binary file beside `path`, then move it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def atomic_write_text(path: str | Path, text: str, *, fsync: bool = True) -> Path:
    """`text` (UTF-8) written to `path` whole or not at all."""
    data = text.encode("utf-8")
    return atomic_write(path, lambda f: f.write(data), fsync=fsync)
