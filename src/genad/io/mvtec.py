"""MVTec-AD-style datasets: the layout MVTec AD, VisA (converted), MPDD, BTAD and the
magnetic-tile set share.

    <root>/train/good/*.png                  normal references
    <root>/test/good/*.png                   normal test images
    <root>/test/<defect>/*.png               anomalous test images
    <root>/ground_truth/<defect>/<stem>_mask.png   (or <stem>.png) pixel masks, > 127 = anomalous

`good`, `ok` (BTAD) and `normal` all name the defect-free folder. A root that holds several
categories (e.g. mvtec_ad/bottle, mvtec_ad/cable, ...) loads all of them, each sample with
its class_name and an id led by the category.
"""

from __future__ import annotations

from pathlib import Path

from genad.errors import GenadError
from genad.io.folder import list_files
from genad.io.images import IMAGE_SUFFIXES
from genad.types import GroundTruth, ImageSample

NORMAL_DIRS = ("good", "ok", "normal")


def is_mvtec_root(root: Path) -> bool:
    """True if `root` looks like one MVTec-style category (has test/<type>/ folders)."""
    test = root / "test"
    return test.is_dir() and any(d.is_dir() for d in test.iterdir())


def categories(root: Path) -> list[Path]:
    """The category folders of `root`: [root] itself, or its MVTec-style sub-folders."""
    root = Path(root)
    if is_mvtec_root(root):
        return [root]
    if not root.is_dir():
        return []
    return sorted(d for d in root.iterdir() if d.is_dir() and is_mvtec_root(d))


def find_mask(root: Path, defect: str, stem: str) -> Path | None:
    """The ground-truth mask of test/<defect>/<stem>.*, accepting <stem>_mask.* and <stem>.*."""
    gt = root / "ground_truth" / defect
    if not gt.is_dir():
        return None
    for name in (f"{stem}_mask", stem, f"{stem}_Mask", f"{stem}_gt"):
        for suffix in (".png", ".bmp", ".tif", ".tiff", ".jpg", ".PNG"):
            p = gt / f"{name}{suffix}"
            if p.is_file():
                return p
    return None


def _check_root(root: Path) -> list[Path]:
    if not root.exists():
        raise GenadError(f"no such folder: {root}")
    cats = categories(root)
    if not cats:
        raise GenadError(
            f"{root} is not an MVTec-style dataset: expected {root}/test/<type>/<images> "
            f"(with test/good for normal images), see `genad eval --help`"
        )
    return cats


def _load_category(cat: Path, split: str, id_root: Path) -> list[ImageSample]:
    split_dir = cat / split
    if not split_dir.is_dir():
        return []
    class_name = cat.name
    out: list[ImageSample] = []
    for type_dir in sorted(d for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith(".")):
        defect = type_dir.name
        normal = defect.lower() in NORMAL_DIRS
        for p in list_files(type_dir, IMAGE_SUFFIXES, recursive=True):
            mask = None if normal else find_mask(cat, defect, p.stem)
            truth = GroundTruth(label=0 if normal else 1, defect_type="good" if normal else defect, mask_path=mask)
            out.append(
                ImageSample(
                    id=p.relative_to(id_root).as_posix(),
                    path=p,
                    class_name=class_name,
                    truth=truth,
                )
            )
    return out


def load_mvtec(root: str | Path, split: str = "test") -> list[ImageSample]:
    """Images of `split` with truth.label (0 good, 1 defect), truth.defect_type ("good" for the
    normal folder) and truth.mask_path where a mask exists. Pixels and masks load lazily."""
    root = Path(root)
    cats = _check_root(root)
    samples = [s for cat in cats for s in _load_category(cat, split, root)]
    if not samples:
        raise GenadError(f"no images found in {root}/{split}/<type>/: is this the dataset root?")
    return samples


def load_mvtec_train(root: str | Path) -> list[ImageSample]:
    """The normal references in train/good (train/ok, train/normal); [] if there is no train split."""
    root = Path(root)
    cats = _check_root(root)
    return [s for cat in cats for s in _load_category(cat, "train", root) if s.label == 0]
