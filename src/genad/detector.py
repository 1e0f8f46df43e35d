"""The one detector contract, in the spirit of scikit-learn and PyOD.

    det = create("embedded", shots=4)      # or any registered name
    det.fit(normal_samples)                # optional: few-shot references
    results = det.predict(samples)         # a batch; zero-shot detectors may use the whole batch

Scores: higher = more anomalous. `predict` never raises for one bad sample: that sample's
Result carries `error` and the rest are still scored.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

from genad.types import Modality, Result, Sample


class Detector(ABC):
    #: registry name, set by @register
    name: ClassVar[str] = "detector"
    #: modalities this detector reads
    modalities: ClassVar[tuple[Modality, ...]] = ("image",)
    #: True if predict() can work without fit() (zero-shot)
    zero_shot: ClassVar[bool] = True
    #: how many samples the evaluator hands to predict() at a time; None = the whole set
    #: (zero-shot mutual scoring needs the whole batch; LMM detectors use small chunks so
    #: that a long run writes results as it goes)
    batch_size: ClassVar[int | None] = None

    def __init__(self, **params: Any) -> None:
        self.params = params
        self.fitted_ = False

    def fit(self, normal_samples: Sequence[Sample]) -> Detector:
        """Learn from normal references (few-shot). Optional for zero-shot detectors."""
        self.fitted_ = True
        return self

    @abstractmethod
    def predict(self, samples: Sequence[Sample]) -> list[Result]:
        """Score a batch; one Result per sample, in order."""

    def fit_predict(self, normal_samples: Sequence[Sample], samples: Sequence[Sample]) -> list[Result]:
        return self.fit(normal_samples).predict(samples)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"
