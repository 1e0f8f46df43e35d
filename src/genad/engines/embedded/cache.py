"""On-disk cache of reference features, so that refitting on the same files skips the backbone.

A fit on the 476 magnetic_tile train images spends most of its time in the backbone; refitting
them (another `few_shot_k`, `bank_cap`, `sigma`, a re-run of a benchmark) would recompute the
very same features. Here each image's features (every aggregation size r, and the global vector)
are kept in one uncompressed .npz file (NumPy arrays only, read with allow_pickle=False) under

    $GENAD_CACHE_DIR/features/    (else ~/.cache/genad/features/)

The key is a SHA-256 of the image file's bytes and of every setting the features depend on:
backbone, its weights' SHA-256, strides, resolution, the working scale, aggregation sizes, dims,
the augmentation view (orig, hflip, ...), plus a format version and the torch and Pillow
versions (which decode and compute the pixels and features). Entries
are written atomically (temp file + rename), so a killed run never leaves a torn file, and an
unreadable entry is a miss (it is removed). The folder is bounded: after a fit that wrote
entries, the least recently used ones (by modification time, which a hit refreshes) are removed
until the total is under the limit, GENAD_FEATURE_CACHE_MB megabytes (default 2048).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genad.atomic import atomic_write
from genad.engines.embedded.features import ImageFeatures

#: bump when features computed from the same settings change
FORMAT_VERSION = 1
DEFAULT_LIMIT_MB = 2048
#: feature_cache="auto" caches the references of a fit from this many images up
AUTO_MIN_REFS = 32


def default_dir() -> Path:
    env = os.environ.get("GENAD_CACHE_DIR")
    root = Path(env).expanduser() if env else Path.home() / ".cache" / "genad"
    return root / "features"


def default_limit_bytes() -> int:
    env = os.environ.get("GENAD_FEATURE_CACHE_MB", "").strip()
    try:
        mb = float(env) if env else DEFAULT_LIMIT_MB
    except ValueError:
        mb = DEFAULT_LIMIT_MB
    return max(0, int(mb * 2**20))


def file_digest(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def settings_key(settings: dict[str, Any]) -> str:
    import PIL

    blob = json.dumps(  # the decoder's and the network library's versions may move the numbers
        {"format": FORMAT_VERSION, "torch": torch.__version__, "pillow": PIL.__version__, **settings},
        sort_keys=True,
        separators=(",", ":"),
        default=repr,
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class FeatureCache:
    """Features of images by key (see the module's doc). `get` and `put` never raise on a bad
    or unwritable folder: the cache is an optimisation, a failure is a miss."""

    def __init__(self, root: Path | str | None = None, limit_bytes: int | None = None) -> None:
        self.root = Path(root) if root is not None else default_dir()
        self.limit_bytes = default_limit_bytes() if limit_bytes is None else int(limit_bytes)
        self.hits = 0
        self.misses = 0
        self.writes = 0

    @staticmethod
    def key(content: str, settings_digest: str) -> str:
        """Entry key from an image's content digest (plus its view) and `settings_key(...)`."""
        return hashlib.sha256(f"{content}|{settings_digest}".encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.npz"

    def get(self, key: str) -> ImageFeatures | None:
        path = self._path(key)
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = z["meta"]
                gvec = z["global"]
                by_r = {int(n[1:]): torch.from_numpy(np.array(z[n], dtype=np.float32)) for n in z.files if n[0] == "r"}
            oh, ow, wh, ww, gh, gw = (int(v) for v in meta)
            if not by_r or any(t.ndim != 2 or t.shape[0] != gh * gw for t in by_r.values()):
                raise ValueError("bad shapes")
        except FileNotFoundError:
            self.misses += 1
            return None
        except Exception:  # torn, truncated or foreign file: drop it and recompute
            self.misses += 1
            try:
                path.unlink()
            except OSError:
                pass
            return None
        try:
            os.utime(path)  # least recently used goes first
        except OSError:
            pass
        self.hits += 1
        return ImageFeatures(
            orig=(oh, ow),
            work=(wh, ww),
            grid=(gh, gw),
            by_r=by_r,
            global_vec=torch.from_numpy(np.array(gvec, dtype=np.float32)),
        )

    def put(self, key: str, f: ImageFeatures) -> None:
        arrays = {f"r{r}": np.ascontiguousarray(t.numpy(), dtype=np.float32) for r, t in f.by_r.items()}
        arrays["global"] = np.ascontiguousarray(f.global_vec.numpy(), dtype=np.float32)
        arrays["meta"] = np.array([*f.orig, *f.work, *f.grid], dtype=np.int64)
        if sum(a.nbytes for a in arrays.values()) > self.limit_bytes:
            return
        path = self._path(key)
        try:
            atomic_write(path, lambda fh: np.savez(fh, **arrays))  # type: ignore[arg-type]
        except OSError:
            return
        self.writes += 1

    def entries(self) -> list[tuple[float, int, Path]]:
        """(modification time, bytes, path) of every entry."""
        out = []
        try:
            subdirs = [d for d in self.root.iterdir() if d.is_dir()]
        except OSError:
            return []
        for d in subdirs:
            try:
                with os.scandir(d) as it:
                    for e in it:
                        if e.name.endswith(".npz"):
                            try:
                                st = e.stat()
                            except OSError:
                                continue
                            out.append((st.st_mtime, st.st_size, Path(e.path)))
            except OSError:
                continue
        return out

    def _remove_stale_temps(self, age_s: float = 3600.0) -> None:
        import time

        try:
            temps = list(self.root.glob("*/.*.tmp"))
        except OSError:
            return
        now = time.time()
        for t in temps:
            try:
                if now - t.stat().st_mtime > age_s:
                    t.unlink()
            except OSError:
                continue

    def size_bytes(self) -> int:
        return sum(b for _, b, _ in self.entries())

    def evict(self) -> int:
        """Remove the least recently used entries until the total is within the limit (and
        temp files that a killed run left over an hour ago); returns how many were removed."""
        self._remove_stale_temps()
        entries = sorted(self.entries())
        total = sum(b for _, b, _ in entries)
        removed = 0
        for _, b, path in entries:
            if total <= self.limit_bytes:
                break
            try:
                path.unlink()
            except OSError:
                continue
            total -= b
            removed += 1
        return removed
