"""A plain folder (or list) of images: no labels, just pictures to inspect."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from genad.errors import GenadError
from genad.io.images import IMAGE_SUFFIXES, is_image_file
from genad.types import ImageSample


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def list_files(root: Path, suffixes: Iterable[str], recursive: bool = True) -> list[Path]:
    """Files under `root` with one of `suffixes` (case-insensitive), sorted, hidden ones skipped."""
    wanted = {s.lower() for s in suffixes}
    walker = root.rglob("*") if recursive else root.glob("*")
    return sorted(p for p in walker if p.is_file() and p.suffix.lower() in wanted and not _hidden(p, root))


def sample_id(path: Path, root: Path | None) -> str:
    """A readable id: the path below the folder the user named, led by that folder's name."""
    if root is None:
        return path.name
    rel = path.relative_to(root).as_posix()
    return f"{root.name}/{rel}" if root.name else rel


def load_folder(root: str | Path, recursive: bool = True) -> list[ImageSample]:
    """All images under `root` (recursively by default) as ImageSamples, sorted by path.
    Pixels are read on demand. Raises GenadError if the folder is missing or has no images."""
    root = Path(root)
    if not root.exists():
        raise GenadError(f"no such folder: {root}")
    if root.is_file():
        if not is_image_file(root):
            raise GenadError(f"{root} is not an image ({', '.join(sorted(IMAGE_SUFFIXES))})")
        return [ImageSample(id=root.name, path=root)]
    files = list_files(root, IMAGE_SUFFIXES, recursive)
    if not files:
        how = "" if recursive else " (not looking in sub-folders)"
        raise GenadError(
            f"no images found in {root}{how}: expected files ending in {', '.join(sorted(IMAGE_SUFFIXES))}"
        )
    return [ImageSample(id=sample_id(p, root), path=p) for p in files]
