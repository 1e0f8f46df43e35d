"""RuleVideoDetector ("video-rules"): rule-based reasoning with an LMM, after AnomalyRuler
(Yang et al., ECCV 2024).

    det = genad.create("video-rules", model="gpt-4o", context="a campus walkway camera")
    det.fit([normal_video])        # induction: one call describes a few normal frames and writes
                                   # rules of normal and abnormal activity (JSON)
    [r] = det.predict([video])     # deduction: frames judged against the rules, `batch_frames`
                                   # frames per call; votes smoothed by a majority over `window`

Without fit(), the rules are induced from frames spread over the video itself (most of a video
is normal). Every judged frame gets a score and, when anomalous, the rule it violates; the
explanation cites that rule for each anomalous range. Rules can also be given directly
(`rules={"normal": [...], "abnormal": [...]}`), which skips induction: useful to fix them once
and reuse them, or to write them by hand.

Decisions (genad.decision): frame scores are the model's 0..1 answers, so the calibration is
`decision.UNIT` (boundary 0.5; `threshold` and `raw_threshold` move it to B). A frame's vote is
the model's explicit yes/no when it gives one (it wins, as for every LMM detector), else its
score > B. The votes are smoothed by the majority over `window` judged frames, and the ranges
are the runs of frames whose smoothed vote is yes; `Result.decision` is "some range", so the
ranges follow the decision by construction. `Result.score` is the highest moving-mean frame
score, `normalized_score` its UNIT normalisation and `Result.threshold` = B.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from genad.decision import UNIT
from genad.detector import param, predict_each, raw_threshold_param, threshold_param
from genad.engines.lmm.base import LMMDetectorBase
from genad.engines.lmm.parse import extract_json
from genad.engines.lmm.provider import BudgetExceeded, system
from genad.engines.lmm.templates import Templates, templates_for
from genad.errors import GenadError
from genad.ops import runs_to_ranges
from genad.types import ImageSample, Result, Sample, Usage, VideoSample

# The prompts are in genad/engines/lmm/prompts/video_rules.toml (keys listed there), overridable
# by a prompts folder.

INDUCTION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "description": {"type": "string"},
        "normal_rules": {"type": "array", "items": {"type": "string"}},
        "abnormal_rules": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["normal_rules", "abnormal_rules"],
}

JUDGE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "frames": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "frame": {"type": "integer"},
                    "anomalous": {"type": "boolean"},
                    "score": {"type": "number", "minimum": 0, "maximum": 1},
                    "rule": {"type": ["string", "null"]},
                    "reason": {"type": "string"},
                },
                "required": ["frame", "anomalous"],
            },
        }
    },
    "required": ["frames"],
}


@dataclass
class Rules:
    """What the model induced from normal frames."""

    normal: list[str] = field(default_factory=list)
    abnormal: list[str] = field(default_factory=list)
    description: str = ""

    def as_text(self, templates: Templates | None = None) -> str:
        """The rules as the judgement prompt lists them (video_rules.toml: normal_heading,
        normal_rule, ...; `templates`, the packaged ones when not given)."""
        t = templates or templates_for(None)  # None: the packaged files
        none = [t.text("video_rules", "no_rules")]
        lines = [t.text("video_rules", "normal_heading")]
        lines += [t.text("video_rules", "normal_rule", i=i, rule=r) for i, r in enumerate(self.normal, 1)] or none
        lines += [t.text("video_rules", "abnormal_heading")]
        lines += [t.text("video_rules", "abnormal_rule", i=i, rule=r) for i, r in enumerate(self.abnormal, 1)] or none
        return "\n".join(lines)


def induction_prompt(n: int, context: str | None, from_video_itself: bool, templates: Templates | None = None) -> str:
    t = templates or templates_for(None)
    where = t.text("video_rules", "where", context=context) if context else ""
    intro = t.text("video_rules", "induction_video" if from_video_itself else "induction_normal", n=n, where=where)
    return t.text("video_rules", "induction", intro=intro)


def judge_prompt(rules: Rules, indices: list[int], templates: Templates | None = None) -> str:
    t = templates or templates_for(None)
    return t.text("video_rules", "judge", rules=rules.as_text(t), n=len(indices), frames=", ".join(map(str, indices)))


def majority_smooth(votes: np.ndarray, window: int) -> np.ndarray:
    """Majority over a centred window of `window` judged frames (NaN votes abstain)."""
    v = np.asarray(votes, dtype=np.float64)
    if window <= 1:
        return np.nan_to_num(v, nan=0.0) >= 0.5
    half = window // 2
    valid = np.isfinite(v)
    c_yes = np.cumsum(np.r_[0, np.where(valid, v >= 0.5, 0)])
    c_n = np.cumsum(np.r_[0, valid.astype(int)])
    idx = np.arange(len(v))
    lo, hi = np.clip(idx - half, 0, len(v)), np.clip(idx + half + 1, 0, len(v))
    yes, n = c_yes[hi] - c_yes[lo], c_n[hi] - c_n[lo]
    return (n > 0) & (yes * 2 > n)


def _moving_mean(v: np.ndarray, window: int) -> np.ndarray:
    if window <= 1:
        return v
    half = window // 2
    valid = np.isfinite(v)
    c_s = np.cumsum(np.r_[0, np.where(valid, v, 0.0)])
    c_n = np.cumsum(np.r_[0, valid.astype(int)])
    idx = np.arange(len(v))
    lo, hi = np.clip(idx - half, 0, len(v)), np.clip(idx + half + 1, 0, len(v))
    n = c_n[hi] - c_n[lo]
    return np.where(n > 0, (c_s[hi] - c_s[lo]) / np.maximum(n, 1), np.nan)


def _rules(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict) or not (value.get("normal") or value.get("abnormal")):
        raise GenadError("rules= needs a 'normal' and/or 'abnormal' list of rules")
    return {k: value[k] for k in ("normal", "abnormal", "description") if k in value}


class RuleVideoDetector(LMMDetectorBase):
    """Induce rules from normal frames, then judge frames against them (AnomalyRuler). The
    connection options are those of every LMM-backed detector (genad.engines.lmm.base)."""

    name = "video-rules"
    modalities = ("video",)
    zero_shot = True

    context: str | None = param(None, "str", doc="what the camera shows (e.g. a campus walkway)")
    n_normal_frames: int = param(4, low=1, high=64, doc="frames shown to induce the rules")
    batch_frames: int = param(4, low=1, high=64, doc="frames judged per call")
    stride: int = param(1, low=1, high=10_000, doc="judge every stride-th frame")
    window: int = param(5, low=1, high=1001, doc="majority vote over this many judged frames")
    frame_side: int = param(512, low=32, high=4096, doc="frames are shrunk to this side")
    rules: dict | None = param(None, "dict", convert=_rules, doc="given rules: skip induction")
    batch_size: int = param(1, low=1, high=10_000, doc="videos per predict() when a run streams them")
    threshold: float = threshold_param()
    raw_threshold: float | None = raw_threshold_param()

    rules_: Rules | None = None  # fitted: the induced rules
    fit_usage_: Usage = Usage()

    def _configure(self) -> None:
        super()._configure()
        r = self.rules
        self._given_rules = (
            None
            if r is None
            else Rules(list(r.get("normal", [])), list(r.get("abnormal", [])), str(r.get("description", "")))
        )

    def _small(self, frame: np.ndarray) -> Image.Image:
        im = Image.fromarray(frame)
        im.thumbnail((self.frame_side, self.frame_side), Image.Resampling.BILINEAR)
        return im

    # -- induction
    def induce(self, frames: Sequence[np.ndarray], from_video_itself: bool = False) -> tuple[Rules, Usage]:
        """One call: describe the frames and induce rules of normal and abnormal activity."""
        parts: list[Any] = []
        for i, f in enumerate(frames):
            parts += [f"Frame {i + 1}:", self._small(f)]
        t = self.templates
        parts.append(induction_prompt(len(frames), self.context, from_video_itself, t))
        sys_msg = system(t.text("video_rules", "system"))
        reply = self.client.chat(
            [sys_msg, self.client.user(*parts)], schema=INDUCTION_SCHEMA, max_tokens=self.max_tokens
        )
        data = reply.data if reply.data is not None else extract_json(reply.text)
        rules = _read_rules(data, reply.text)
        return rules, reply.usage

    def fit(self, normal_samples: Sequence[Sample]) -> RuleVideoDetector:
        frames: list[np.ndarray] = []
        for s in normal_samples:
            if isinstance(s, VideoSample):
                frames.extend(s.load_frames())
            elif isinstance(s, ImageSample):
                frames.append(s.load())
            else:
                raise GenadError(f"fit() takes normal videos or frame images, got a {s.modality} ({s.id})")
        if not frames:
            raise GenadError("fit() needs at least one normal video or frame")
        pick = np.unique(np.linspace(0, len(frames) - 1, min(self.n_normal_frames, len(frames))).round().astype(int))
        self.rules_, self.fit_usage_ = self.induce([frames[i] for i in pick])
        self.fitted_ = True
        return self

    # -- deduction
    def predict(self, samples: Sequence[Sample]) -> list[Result]:
        return predict_each(samples, self._predict_one, stop_on=(BudgetExceeded,))

    def _predict_one(self, sample: Sample, result: Result) -> None:
        if not isinstance(sample, VideoSample):
            raise GenadError(f"sample {sample.id!r} is a {sample.modality}, not a video")
        frames = sample.load_frames()
        n = len(frames)
        usage = Usage()
        rules = self.rules_ if self.rules_ is not None else self._given_rules
        if rules is None:  # zero-shot: rules from frames spread over this video
            pick = np.unique(np.linspace(0, n - 1, min(self.n_normal_frames, n)).round().astype(int))
            rules, u = self.induce([frames[i] for i in pick], from_video_itself=True)
            usage = usage + u
        judged = list(range(0, n, self.stride))
        batches = [judged[i : i + self.batch_frames] for i in range(0, len(judged), self.batch_frames)]
        t = self.templates
        sys_msg = system(t.text("video_rules", "system"))

        def judge(batch: list[int]) -> tuple[dict[int, dict[str, Any]], Usage, str | None]:
            parts: list[Any] = []
            for j in batch:
                parts += [f"Frame {j}:", self._small(frames[j])]
            parts.append(judge_prompt(rules, batch, t))
            try:
                reply = self.client.chat(
                    [sys_msg, self.client.user(*parts)], schema=JUDGE_SCHEMA, max_tokens=self.max_tokens
                )
            except BudgetExceeded:
                raise
            except GenadError as e:
                return {}, Usage(), str(e)
            data = reply.data if reply.data is not None else extract_json(reply.text)
            return _read_verdicts(data, batch), reply.usage, None

        workers = max(1, min(self.client.config.max_concurrency, len(batches)))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            answers = list(pool.map(judge, batches))
        verdicts: dict[int, dict[str, Any]] = {}
        errors = []
        for v, u, err in answers:
            verdicts.update(v)
            usage = usage + u
            if err:
                errors.append(err)
        result.usage = usage
        if not verdicts:
            raise GenadError(f"no frame could be judged: {errors[0] if errors else 'the model gave no usable answer'}")
        boundary = self.calibrated(UNIT).raw_at(self.threshold)
        for d in verdicts.values():  # a frame without a yes/no votes by its score
            d["anomalous"] = d["verdict"] if d["verdict"] is not None else bool(d["score"] > boundary)
        jidx = np.array(judged)
        score = np.array([verdicts[j]["score"] if j in verdicts else np.nan for j in judged], dtype=np.float64)
        vote = np.array(
            [float(verdicts[j]["anomalous"]) if j in verdicts else np.nan for j in judged], dtype=np.float64
        )
        smooth_vote = majority_smooth(vote, self.window)
        smooth_score = _moving_mean(score, self.window)
        ok = np.isfinite(smooth_score)
        all_idx = np.arange(n)
        frame_scores = np.interp(all_idx, jidx[ok], smooth_score[ok])
        # each frame takes the vote of its nearest judged frame
        nearest = np.clip(np.searchsorted(jidx, all_idx - self.stride / 2.0), 0, len(jidx) - 1)
        frame_vote = smooth_vote[nearest]
        ranges = runs_to_ranges(frame_vote)
        result.anomaly_map = frame_scores.astype(np.float32)
        result.score = float(frame_scores.max())
        self.decide(result, UNIT, verdict=bool(ranges))  # the frames' votes win over the score
        result.ranges = ranges
        result.explanation = _explain(ranges, verdicts, n)
        result.extra["rules"] = {"normal": rules.normal, "abnormal": rules.abnormal, "description": rules.description}
        result.extra["verdicts"] = {int(j): dict(d) for j, d in verdicts.items()}
        if errors:
            result.extra["failed_calls"] = errors
        idx = sample.meta.get("frame_index")
        if idx is not None and len(idx) == n:
            result.extra["source_ranges"] = [(int(idx[a]), int(idx[b - 1]) + 1) for a, b in ranges]


def _read_rules(data: dict[str, Any] | None, text: str) -> Rules:
    if not isinstance(data, dict):
        raise GenadError(
            "the model did not answer the rule induction with JSON rules: try another model or give rules="
        )

    def as_list(v: Any) -> list[str]:
        if isinstance(v, str):
            return [s.strip(" -*\t") for s in v.splitlines() if s.strip(" -*\t")]
        return [str(x).strip() for x in (v or []) if str(x).strip()]

    rules = Rules(
        as_list(data.get("normal_rules") or data.get("normal")),
        as_list(data.get("abnormal_rules") or data.get("abnormal")),
        str(data.get("description") or ""),
    )
    if not (rules.normal or rules.abnormal):
        raise GenadError("the model induced no rules: try another model, more normal frames, or give rules=")
    return rules


def _read_verdicts(data: dict[str, Any] | None, batch: list[int]) -> dict[int, dict[str, Any]]:
    """Verdicts by frame index. Items without a usable frame index are matched by position."""
    if not isinstance(data, dict):
        return {}
    items = data.get("frames")
    if not isinstance(items, list):
        return {}
    out: dict[int, dict[str, Any]] = {}
    for pos, it in enumerate(items):
        if not isinstance(it, dict):
            continue
        j = it.get("frame", it.get("index"))
        try:
            j = int(j)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            j = batch[pos] if pos < len(batch) else None
        if j not in batch:
            j = batch[pos] if pos < len(batch) and batch[pos] not in out else None
        if j is None:
            continue
        anomalous = it.get("anomalous")
        if isinstance(anomalous, str):
            anomalous = anomalous.strip().lower() in ("true", "yes", "1", "anomalous")
        s = it.get("score")
        try:
            s = float(s) if s is not None else None
        except (TypeError, ValueError):
            s = None
        if s is None and anomalous is None:
            continue
        if s is None:
            s = 1.0 if anomalous else 0.0
        s = float(np.clip(s, 0.0, 1.0))
        verdict = bool(anomalous) if anomalous is not None else None
        out[j] = {
            "score": s,
            "verdict": verdict,  # the model's own yes/no, None when it gave a score only
            "anomalous": verdict if verdict is not None else s > 0.5,  # the vote at the 0.5 boundary
            "rule": it.get("rule") or None,
            "reason": it.get("reason") or None,
        }
    return out


def _explain(ranges: list[tuple[int, int]], verdicts: dict[int, dict[str, Any]], n: int) -> str:
    if not ranges:
        return f"all {n} frames follow the rules"
    parts = []
    for a, b in ranges[:5]:
        cited = Counter(str(v["rule"]) for j, v in verdicts.items() if a <= j < b and v["anomalous"] and v["rule"])
        judged = sum(1 for j, v in verdicts.items() if a <= j < b and v["anomalous"])
        if cited:
            rule, k = cited.most_common(1)[0]
            parts.append(f"frames {a}-{b - 1}: violates {rule!r} ({k} of {judged} anomalous frames)")
        else:
            parts.append(f"frames {a}-{b - 1}: judged anomalous")
    more = f"; and {len(ranges) - 5} more ranges" if len(ranges) > 5 else ""
    return "; ".join(parts) + more
