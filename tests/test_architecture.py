"""Data flows one way: every import in the package (also those inside functions) points down
the layers io -> types -> engines -> run -> metrics/report -> cli/service, as the README's
layout says. A module that reaches up (types reading files, a detector importing the report,
metrics importing a loader) fails here, naming the import."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "genad"

# what each part may NOT import (prefixes of genad module names), from the top down
ABOVE_ALL = ("genad.cli", "genad.service")
ABOVE_RUN = ("genad.evaluate", "genad.evaluate_root", "genad.evaluate_modalities", "genad.report", *ABOVE_ALL)
ABOVE_ENGINES = ("genad.io", "genad.run", *ABOVE_RUN)  # detectors get pixels from samples
ABOVE_IO = ("genad.engines", "genad.modalities", "genad.metrics", "genad.run", *ABOVE_RUN)
BOTTOM = ("genad.io", *ABOVE_IO)  # plain data, the contract, shared operations: no files, no runs
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "genad.errors": ("genad.",),
    "genad.types": BOTTOM,
    "genad.ops": BOTTOM,
    "genad.secrets": BOTTOM,
    "genad.detector": BOTTOM,
    "genad.decision": BOTTOM,
    "genad.io": ABOVE_IO,
    "genad.engines": ABOVE_ENGINES,
    "genad.modalities": ABOVE_ENGINES,
    "genad.metrics": ("genad.io", "genad.engines", "genad.modalities", "genad.run", *ABOVE_RUN),
    "genad.run": ("genad.io", *ABOVE_RUN),
    # saved models: the detectors and their value types, never the runs, reports or services
    "genad.model_file": ("genad.io", "genad.run", *ABOVE_RUN),
    "genad.evaluate": ("genad.report", *ABOVE_ALL),
    "genad.evaluate_root": ("genad.report", *ABOVE_ALL),
    "genad.evaluate_modalities": ("genad.report", *ABOVE_ALL),
    "genad.report": ABOVE_ALL,
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
            out += [(node.lineno, f"{node.module}.{a.name}") for a in node.names if node.module == "genad"]
    return out


def _under(name: str, prefix: str) -> bool:
    return name.startswith(prefix) if prefix.endswith(".") else name == prefix or name.startswith(prefix + ".")


def _rules(module: str) -> tuple[str, ...]:
    best = ""
    for part in FORBIDDEN:
        if (module == part or module.startswith(part + ".")) and len(part) > len(best):
            best = part
    return FORBIDDEN.get(best, ())


def test_every_import_points_down_the_layers():
    bad = []
    for path in sorted(SRC.rglob("*.py")):
        module = _module_name(path)
        forbidden = _rules(module)
        for line, name in _imports(path):
            if not name.startswith("genad"):
                continue
            if any(_under(name, f) for f in forbidden):
                bad.append(f"{path.relative_to(SRC.parent)}:{line} {module} imports {name}")
    assert not bad, "imports that reach up:\n" + "\n".join(bad)


@pytest.mark.parametrize(
    "module, name, expected",
    [
        ("genad.types", "genad.io.images", True),
        ("genad.engines.embedded.detector", "genad.report.overlay", True),
        ("genad.metrics.timeseries", "genad.io.timeseries", True),
        ("genad.cli.detect", "genad.report.overlay", False),
        ("genad.modalities.timeseries.metrics", "genad.evaluate_modalities", True),
        ("genad.evaluate_modalities", "genad.cli.evaluate", True),
        ("genad.evaluate_modalities", "genad.io.datasets", False),
        # the Ray backend is part of run/: it runs the detectors and the categories it is handed
        ("genad.run.ray_backend", "genad.evaluate_root", True),
        ("genad.run.ray_backend", "genad.io.mvtec", True),
        ("genad.run.ray_backend", "genad.model_file", False),
    ],
)
def test_the_rule_catches_what_it_should(module, name, expected):
    assert any(_under(name, f) for f in _rules(module)) is expected
