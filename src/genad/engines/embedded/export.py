"""ONNX export of a fitted embedded model (to be written)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from genad.errors import GenadError


def export_onnx(det: Any, path: str | Path) -> Path:
    raise GenadError("ONNX export is not available yet")
