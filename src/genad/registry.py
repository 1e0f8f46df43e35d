"""Detectors by name, for the CLI, the service and the Python API.

Built-in detectors are listed as "module:Class" so that importing genad stays cheap (no torch
until an embedded detector is asked for). Third parties can add theirs with @register.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from typing import Any

from genad.detector import Detector
from genad.errors import GenadError

# name -> "module:Class"; one line per built-in detector.
_BUILTIN: dict[str, str] = {
    "baseline": "genad.engines.baseline:BaselineDetector",
    "embedded": "genad.engines.embedded.detector:EmbeddedDetector",
    "oneclass": "genad.engines.oneclass.detector:OneClassDetector",
    "lmm": "genad.engines.lmm.detector:LMMDetector",
    "lmm+embedded": "genad.engines.lmm.hybrid:LookTwiceDetector",
    "ts-matrix-profile": "genad.modalities.timeseries.detectors:MatrixProfileDetector",
    "ts-iforest": "genad.modalities.timeseries.detectors:IsolationForestSeriesDetector",
    "ts-lmm": "genad.modalities.timeseries.lmm:SeriesLMMDetector",
    "pointcloud": "genad.modalities.pointcloud.detector:PointCloudDetector",
    "video": "genad.modalities.video.detector:VideoDetector",
    "video-rules": "genad.modalities.video.rules:RuleVideoDetector",
}
_REGISTERED: dict[str, type[Detector]] = {}

DEFAULT_DETECTOR = "embedded"


def register(name: str) -> Callable[[type[Detector]], type[Detector]]:
    """Class decorator: make a Detector available by `name`."""

    def deco(cls: type[Detector]) -> type[Detector]:
        cls.name = name
        _REGISTERED[name] = cls
        return cls

    return deco


def available() -> list[str]:
    """Names of all detectors whose code is present in this install."""
    names = set(_REGISTERED)
    for name, target in _BUILTIN.items():
        if importlib.util.find_spec(target.split(":")[0]) is not None:
            names.add(name)
    return sorted(names)


def get(name: str) -> type[Detector]:
    if name in _REGISTERED:
        return _REGISTERED[name]
    target = _BUILTIN.get(name)
    if target is None:
        raise GenadError(f"unknown detector {name!r}: choose one of {', '.join(available())} (see `genad detectors`)")
    module_name, cls_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and not e.name.startswith("genad"):
            raise GenadError(f"detector {name!r} needs the package {e.name!r}: pip install 'genad[all]'") from e
        raise
    cls = getattr(module, cls_name)
    cls.name = name
    return cls


def create(name: str, **params: Any) -> Detector:
    """Build a detector by name with keyword parameters (unknown parameters are an error)."""
    cls = get(name)
    try:
        return cls(**params)
    except (TypeError, ValueError) as e:  # an unknown option, or a value of the wrong kind
        raise GenadError(f"bad option for detector {name!r}: {e}") from e


# The detector `genad detect` uses when none is named, by modality.
DEFAULT_BY_MODALITY: dict[str, str] = {
    "image": "embedded",
    "timeseries": "ts-matrix-profile",
    "pointcloud": "pointcloud",
    "video": "video",
}
