"""genad: generic anomaly detection and understanding, for images, series, point clouds and video."""

from genad.detector import Detector
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
    "Detector", "GenadError", "available", "create", "register",
    "GroundTruth", "ImageSample", "Knowledge", "PointCloudSample", "Region", "Result",
    "Sample", "TimeSeriesSample", "Usage", "VideoSample", "__version__",
]
