"""genad: generic anomaly detection and understanding, for images, series, point clouds and video."""

from pathlib import Path

import genad.io  # noqa: F401 - registers the file readers that samples made from a path use
from genad.detector import Capabilities, Detector, param
from genad.errors import GenadError
from genad.registry import available, create, register
from genad.types import (
    GroundTruth,
    ImageSample,
    Knowledge,
    PointCloudSample,
    Region,
    Result,
    Sample,
    TimeSeriesSample,
    Usage,
    VideoSample,
)

__version__ = "0.1.0"


def load(path: str | Path) -> Detector:
    """A detector saved with `Detector.save(path)` or `genad fit --save`, ready to predict
    (genad.model_file: no code from the file is run)."""
    from genad.model_file import load_detector

    return load_detector(path)


__all__ = [
    "Capabilities",
    "Detector",
    "GenadError",
    "param",
    "available",
    "create",
    "load",
    "register",
    "GroundTruth",
    "ImageSample",
    "Knowledge",
    "PointCloudSample",
    "Region",
    "Result",
    "Sample",
    "TimeSeriesSample",
    "Usage",
    "VideoSample",
    "__version__",
]
