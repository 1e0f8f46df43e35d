"""genad: generic anomaly detection and understanding, for images, series, point clouds and video."""

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

__all__ = [
    "Capabilities",
    "Detector",
    "GenadError",
    "param",
    "available",
    "create",
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
