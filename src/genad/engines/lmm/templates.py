"""Prompt templates as data: TOML files in genad/engines/lmm/prompts/, overridable per key.

A domain is one file (industrial, medical, logical, depth; add your own, e.g. textile.toml) with
[zero_shot] and [few_shot] tables holding the three prompt variants of the GPT-4V study:
naive, class (with class information) and expertise (with human expertise: normal standards and
known defect types). A user folder (LMMConfig.prompts_dir, `--prompts DIR`) holding files of
the same names overrides the packaged ones key by key. Templates use $placeholders
(string.Template), so JSON braces in them need no escaping.

The other LMM-backed detectors keep their prompts in files of their own, read with
Templates.text(file, key, **fields): look_twice.toml ("lmm+embedded"), localize.toml
(text2seg.localize, and the knowledge phrases look twice shares), series.toml ("ts-lmm") and
video_rules.toml ("video-rules"). They have no zero_shot/few_shot tables, so they are not
domains. Each file's header comment lists its keys and placeholders.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

from genad.errors import GenadError
from genad.types import Knowledge

VARIANTS = ("naive", "class", "expertise")
# the GPT-4V study's own names for the variants
VARIANT_ALIASES = {
    "with class_information": "class",
    "with class information": "class",
    "with human expertise": "expertise",
    "human": "expertise",
    "zero": "naive",
}
_ORDINALS = ["first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth"]


def class_words(name: str | None) -> str | None:
    """A class name as words for a prompt: folder names such as "magnetic_tile" or "screw-bag"
    become "magnetic tile", "screw bag" (the GPT-4V study prompts with the object's name)."""
    if name is None:
        return None
    words = re.sub(r"[_\-]+", " ", str(name)).strip()
    return re.sub(r"\s+", " ", words) or None


def normalise_variant(variant: str) -> str:
    v = VARIANT_ALIASES.get(variant.strip().lower(), variant.strip().lower())
    if v not in VARIANTS:
        raise GenadError(f"unknown prompt variant {variant!r}: choose one of {', '.join(VARIANTS)}")
    return v


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _read_toml(text: str, where: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise GenadError(f"cannot read prompt file {where}: {e} (it must be TOML)") from e


@dataclass
class Templates:
    """All prompt files, packaged defaults merged with the user's overrides."""

    files: dict[str, dict[str, Any]]
    source_dir: Path | None = None

    @property
    def domains(self) -> list[str]:
        return sorted(k for k, v in self.files.items() if "zero_shot" in v or "few_shot" in v)

    def domain(self, name: str) -> dict[str, Any]:
        if name not in self.files or name not in self.domains:
            raise GenadError(
                f"unknown prompt domain {name!r}: choose one of {', '.join(self.domains)} "
                "(or add NAME.toml to your prompts folder)"
            )
        return self.files[name]

    def text(self, file: str, key: str, **fields: Any) -> str:
        """Template `key` of prompt file `file` (NAME.toml without .toml; a dotted key reaches
        into a table) with its $placeholders filled from `fields`; placeholders without a field
        stay as written. Nothing else is changed: no whitespace is tidied."""
        if file not in self.files:
            raise GenadError(
                f"no prompt file {file}.toml among the packaged prompts"
                + (f" or in {self.source_dir}" if self.source_dir else "")
            )
        node: Any = self.files[file]
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                raise GenadError(f"prompt file {file}.toml has no key {key!r}: add it (see the packaged {file}.toml)")
            node = node[part]
        if not isinstance(node, str):
            raise GenadError(f"key {key!r} of prompt file {file}.toml must be a string, not {type(node).__name__}")
        return Template(node).safe_substitute(fields)

    def answer_instruction(self, json_answer: bool) -> str:
        return str(self.files.get("answer", {}).get("json" if json_answer else "text", ""))

    def system_prompt(self, domain: str) -> str:
        return str(self.domain(domain).get("system", "") or "")

    def render(
        self,
        domain: str,
        variant: str,
        n_refs: int = 0,
        class_name: str | None = None,
        knowledge: Knowledge | None = None,
    ) -> tuple[str, str | None]:
        """The task prompt and a note when it had to fall back (e.g. expertise asked for but no
        knowledge known: the class prompt is used). Raises GenadError when the variant needs a
        class name and none is given."""
        variant = normalise_variant(variant)
        class_name = class_words(class_name)
        d = self.domain(domain)
        note = None
        if variant == "expertise" and (knowledge is None or knowledge.is_empty()):
            note = f"no normal standards or defect types known for {class_name or 'this class'}: used the class prompt"
            variant = "class"
        if variant in ("class", "expertise") and not (class_name and class_name.strip()):
            raise GenadError(f"the {variant!r} prompt needs a class name: pass class_name=... or use variant=naive")
        table = d.get("few_shot" if n_refs else "zero_shot", {})
        if (
            variant == "expertise"
            and "$standards" in str(table.get(variant, ""))
            and not (knowledge and knowledge.normal_standards)
        ):
            note = f"the {domain} expertise prompt needs normal standards (rules): used the class prompt"
            variant = "class"
        tmpl = table.get(variant)
        if not isinstance(tmpl, str):
            raise GenadError(
                f"prompt domain {domain!r} has no {variant!r} template for {'few' if n_refs else 'zero'}-shot"
            )
        word = str(d.get("words", {}).get("image", "image"))
        fields = {
            "object": (class_name or "object").strip(),
            "references": f"The first {word}" if n_refs == 1 else f"The first {n_refs} {word}s",
            "are": "is" if n_refs == 1 else "are",
            "meet": "meets" if n_refs == 1 else "meet",
            "target": _target(n_refs, word),
            "standards": (knowledge.normal_standards or "").strip() if knowledge else "",
            "defects": _or_list(knowledge.defect_types) if knowledge else "",
            "classes": _or_list(["normal", *knowledge.defect_types]) if knowledge else "normal",
        }
        fields["expertise"] = _expertise(d, knowledge, fields)
        text = Template(tmpl).safe_substitute(fields)
        return _tidy(text), note


def _target(n_refs: int, word: str) -> str:
    if n_refs == 0:
        return f"the {word}"
    i = n_refs  # 0-based position of the image to judge
    return f"the {_ORDINALS[i]} {word}" if i < len(_ORDINALS) else f"the last {word}"


def _or_list(items: list[str]) -> str:
    items = [s.strip() for s in items if s and s.strip()]
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " or " + items[-1]


def _expertise(d: dict[str, Any], knowledge: Knowledge | None, fields: dict[str, str]) -> str:
    if knowledge is None or knowledge.is_empty():
        return ""
    spec = d.get("expertise_text", {})
    parts = []
    if knowledge.normal_standards:
        parts.append(Template(str(spec.get("standards", "$standards"))).safe_substitute(fields))
    if knowledge.defect_types:
        parts.append(
            Template(str(spec.get("defects", "It may have defects such as $defects."))).safe_substitute(fields)
        )
    if knowledge.notes:
        parts.append(knowledge.notes.strip())
    return " ".join(p.strip() for p in parts if p.strip())


def _tidy(text: str) -> str:
    text = re.sub(r"[ \t]+", " ", text)
    text = re.sub(r"\s+([.,;:])", r"\1", text)
    return re.sub(r"\.\.+", ".", text).strip()


@lru_cache(maxsize=8)
def _packaged() -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for entry in resources.files("genad.engines.lmm").joinpath("prompts").iterdir():
        if entry.name.endswith(".toml"):
            out[entry.name[:-5]] = _read_toml(entry.read_text(encoding="utf-8"), entry.name)
    return out


def load_templates(prompts_dir: str | Path | None = None) -> Templates:
    """Packaged templates, with every NAME.toml of `prompts_dir` merged over them key by key."""
    files = {k: dict(v) for k, v in _packaged().items()}
    src = None
    if prompts_dir is not None:
        src = Path(prompts_dir).expanduser()
        if not src.is_dir():
            raise GenadError(f"prompts folder {src} does not exist: pass a folder of NAME.toml files")
        for p in sorted(src.glob("*.toml")):
            files[p.stem] = _merge(files.get(p.stem, {}), _read_toml(p.read_text(encoding="utf-8"), str(p)))
    return Templates(files, src)


@lru_cache(maxsize=32)
def _cached(prompts_dir: str | None) -> Templates:
    return load_templates(prompts_dir)


def templates_for(client: Any) -> Templates:
    """The templates an LMM client's config asks for (its prompts_dir, if it has one), loaded
    once per folder. Test doubles whose config has no prompts_dir get the packaged ones."""
    folder = getattr(getattr(client, "config", None), "prompts_dir", None)
    return _cached(None if folder is None else str(Path(folder).expanduser()))
