"""The 20 qualitative cases of the GPT-4V anomaly-detection study (Cao et al. 2023).

Layout: <root>/<Task>/<Case>/label.json beside the case's images (MOOD2020 nests one level
deeper). Tasks: Industrial-AD/AL, Logical-AD, Medical-AD/AL, PCD-AD. A label.json holds
dataset, category, reference_normal_standards, reference_abnormal_states and either
zero-/one-shot prompts in three variants (naive / with class_information / with human
expertise), zero-/one-shot prompts as single strings (Logical-AD), or one localisation
`prompt` (the -AL tasks, which come with a set-of-mark image).

11 of the label.json files have trailing commas, so they are read leniently; missing images
(RetinaOCT_One-shot.png and the EndoTect set-of-mark image are absent upstream) and a missing
label.json are listed in `GPT4VCase.missing` instead of failing the whole suite.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from genad.errors import GenadError
from genad.io.images import is_image_file

# A JSON string literal (consumed whole so commas inside it are never touched) or a comma
# followed only by whitespace and a closing bracket.
_TRAILING_COMMA = re.compile(r'("(?:\\.|[^"\\])*")|,(\s*[}\]])')

# Medical-AD cases name images after their source datasets rather than normal/abnormal.
# Which is which follows each dataset's naming (Kaggle Brain MRI "no"/"Y", OCT2017
# NORMAL/CNV, chest X-ray IM-* normal / person*_bacteria pneumonia, and Head CT whose
# images 000-099 have a hemorrhage and 100-199 do not).
_MEDICAL_ROLES: dict[str, dict[str, str]] = {
    "Chest X-ray": {"IM-0320-0001": "normal", "person425_bacteria_1860": "abnormal"},
    "Head CT": {"162": "normal", "044": "abnormal"},
    "Head MRI": {"7 no": "normal", "Y90": "abnormal"},
    "Retina OCT": {"NORMAL-2567-4": "normal", "CNV-53018-1": "abnormal"},
}
# Images the upstream suite refers to but does not ship.
_KNOWN_ABSENT: dict[str, list[str]] = {
    "Retina OCT": [
        "RetinaOCT_One-shot.png (the upstream one-shot composite; build it from the normal and abnormal images)"
    ],
    "EndoTect": ["label.json", "set-of-mark image"],
}

VARIANTS = ("naive", "with class_information", "with human expertise")


def loads_lenient(text: str) -> Any:
    """json.loads that also accepts trailing commas before } and ] (outside strings)."""
    return json.loads(_TRAILING_COMMA.sub(lambda m: m.group(1) or m.group(2), text))


@dataclass
class GPT4VCase:
    """One case. `prompts` maps shot ("zero-shot", "one-shot") -> variant -> text; the
    Logical-AD cases have one text per shot, stored under the variant "with human expertise"
    (their prompts spell out the rules). Localisation cases (-AL) have `prompt` instead."""

    task: str
    case: str
    folder: Path
    dataset: str | None = None
    category: str | None = None
    normal_standards: str | None = None
    abnormal_states: str | None = None
    prompts: dict[str, dict[str, str]] = field(default_factory=dict)
    prompt: str | None = None
    normal: Path | None = None
    abnormal: Path | None = None
    som: Path | None = None
    mask: Path | None = None
    missing: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        return f"{self.task}/{self.case}"

    @property
    def is_localisation(self) -> bool:
        return self.task.endswith("-AL")

    @property
    def shots(self) -> list[str]:
        return list(self.prompts)

    @property
    def usable(self) -> bool:
        """True if the case can be run: it has a label.json, an image to inspect, and for
        localisation a set-of-mark image."""
        if "label.json" in self.missing or self.abnormal is None:
            return False
        return self.som is not None if self.is_localisation else True


def _role(path: Path, case_name: str) -> str | None:
    stem = path.stem
    low = stem.lower()
    if low.endswith("_som"):
        return "som"
    if low.endswith("_mask"):
        return "mask"
    if low in ("normal", "abnormal"):
        return low
    return _MEDICAL_ROLES.get(case_name, {}).get(stem)


def _prompts(label: dict[str, Any]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for shot in ("zero-shot", "one-shot"):
        for key in (f"{shot}-prompt", f"{shot} prompt", f"{shot}_prompt"):
            value = label.get(key)
            if isinstance(value, dict):
                out[shot] = {str(k).strip(): str(v).strip() for k, v in value.items()}
            elif isinstance(value, str):
                out[shot] = {"with human expertise": value.strip()}
            else:
                continue
            break
    return out


def _clean(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def load_case(folder: Path, task: str, case: str) -> GPT4VCase:
    """Read one case folder. Raises GenadError if its label.json is not JSON even leniently."""
    c = GPT4VCase(task=task, case=case, folder=folder)
    label_path = folder / "label.json"
    if label_path.is_file():
        try:
            label = loads_lenient(label_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise GenadError(f"cannot parse {label_path}: {e}") from e
        c.dataset = _clean(label.get("dataset"))
        c.category = _clean(label.get("category"))
        c.normal_standards = _clean(label.get("reference_normal_standards"))
        c.abnormal_states = _clean(label.get("reference_abnormal_states"))
        c.prompts = _prompts(label)
        c.prompt = _clean(label.get("prompt"))
    for p in sorted(folder.iterdir()):
        if not (p.is_file() and is_image_file(p)):
            continue
        role = _role(p, case)
        if role is None and c.is_localisation:
            role = "abnormal"  # the -AL cases' one plain image is the one to inspect
        if role is not None and getattr(c, role) is None:
            setattr(c, role, p)
    c.missing = list(_KNOWN_ABSENT.get(case, []))
    if not label_path.is_file() and "label.json" not in c.missing:
        c.missing.append("label.json")
    if c.abnormal is None:
        c.missing.append("image to inspect")
    if c.is_localisation and c.som is None and not any("set-of-mark" in m for m in c.missing):
        c.missing.append("set-of-mark image")
    if not c.is_localisation and "one-shot" in c.prompts and c.normal is None:
        c.missing.append("normal reference image")
    return c


def load_gpt4v_cases(root: str | Path) -> list[GPT4VCase]:
    """All cases under `root` (the suite's `Cases/` folder, or its parent), sorted by task and
    case. A case folder is any folder holding a label.json or images directly."""
    root = Path(root)
    if not root.is_dir():
        raise GenadError(f"no such folder: {root} (expected the GPT-4V suite's Cases/ folder)")
    if (root / "Cases").is_dir():
        root = root / "Cases"
    cases: list[GPT4VCase] = []
    for task_dir in sorted(d for d in root.iterdir() if d.is_dir()):
        for folder in sorted(d for d in task_dir.rglob("*") if d.is_dir()):
            has_label = (folder / "label.json").is_file()
            has_images = any(p.is_file() and is_image_file(p) for p in folder.iterdir())
            if has_label or has_images:
                case = folder.relative_to(task_dir).as_posix()
                cases.append(load_case(folder, task_dir.name, case))
    if not cases:
        raise GenadError(f"no cases found in {root}: expected <Task>/<Case>/label.json")
    return cases
