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

Text-only path (`mode="text"`, as in AnomalyRuler, whose reasoning runs on a text LLM): a vision
model (the `describer` connection: LMMConfig settings such as {"model": "qwen2.5-vl",
"base_url": ...}; by default the detector's own) describes each frame in one sentence, or the
descriptions come with the sample (`meta["frame_descriptions"]`: a list, or {frame: text}); the
detector's own model, which may be text-only, then induces rules of normal activity from
`induction_batches` batches of normal-frame descriptions, derives rules of abnormal activity
from them, keeps the rules that recur in most of the batches (aggregation by majority vote;
rules match when they share most of their words), and judges each frame from its description.

Decisions (genad.decision): frame scores are the model's 0..1 answers, so the calibration is
`decision.UNIT` (boundary 0.5; `threshold` and `raw_threshold` move it to B). A frame's vote is
the model's explicit yes/no when it gives one (it wins, as for every LMM detector), else its
score > B. The votes are smoothed by the majority over `window` judged frames, and the ranges
are the runs of frames whose smoothed vote is yes; `Result.decision` is "some range", so the
ranges follow the decision by construction. `Result.score` is the highest moving-mean frame
score, `normalized_score` its UNIT normalisation and `Result.threshold` = B.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from genad.decision import UNIT
from genad.detector import param, predict_each, raw_threshold_param, threshold_param
from genad.engines.lmm.base import CONNECTION, LMMDetectorBase, is_stop
from genad.engines.lmm.parse import extract_json, is_placeholder, strip_reasoning
from genad.engines.lmm.provider import system
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


def frames_schema(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    """The JSON schema of an answer {"frames": [{...}]}: one object per frame, keys in order."""
    item = {"type": "object", "properties": properties, "required": required}
    return {"type": "object", "properties": {"frames": {"type": "array", "items": item}}, "required": ["frames"]}


# the reason and the rule before the verdict (structured output generates the keys in this order)
JUDGE_SCHEMA = frames_schema(
    {
        "frame": {"type": "integer"},
        "reason": {"type": "string"},
        "rule": {"type": ["string", "null"]},
        "anomalous": {"type": "boolean"},
        "score": {"type": "number", "minimum": 0, "maximum": 1},
    },
    ["frame", "anomalous"],
)


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


DESCRIBE_SCHEMA = frames_schema(
    {"frame": {"type": "integer"}, "description": {"type": "string"}}, ["frame", "description"]
)

RULES_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"rules": {"type": "array", "items": {"type": "string"}}},
    "required": ["rules"],
}


def _words(rule: str) -> set[str]:
    return {w for w in re.findall(r"[a-z0-9]+", rule.lower()) if len(w) > 2}


def aggregate_rules(batches: Sequence[Sequence[str]], min_share: float = 0.5) -> list[str]:
    """Rules that recur in more than `min_share` of the batches (AnomalyRuler's aggregation, by
    majority vote; a single batch keeps its rules): two rules match when they share at least half
    of their words (Jaccard >= 0.5). Each kept rule is written as its first wording; the order is
    by support, then first appearance. With nothing recurring, the rules of the batch that shares
    most with the others."""
    clusters: list[tuple[set[str], str, set[int]]] = []
    for b, rules in enumerate(batches):
        for r in rules:
            w = _words(r)
            if not w:
                continue
            for cw, _, support in clusters:
                if len(w & cw) / len(w | cw) >= 0.5:
                    support.add(b)
                    break
            else:
                clusters.append((w, r, {b}))
    need = 1 if len(batches) <= 1 else int(np.floor(min_share * len(batches))) + 1
    kept = [(len(s), i, r) for i, (_, r, s) in enumerate(clusters) if len(s) >= need]
    if kept:
        return [r for _, _, r in sorted(kept, key=lambda t: (-t[0], t[1]))]
    if not batches:
        return []
    best = max(range(len(batches)), key=lambda b: sum(len(s) for _, _, s in clusters if b in s))
    return [r for r in batches[best] if _words(r)]


def _rule_list(data: Any, text: str, key: str = "rules") -> list[str]:
    """Rules from a JSON answer ({"rules": [...]} or a bare list) or from lines of text ("1. ...",
    "- ..."); placeholders such as "..." are not rules."""
    final, _ = strip_reasoning(text or "")
    items: Any = None
    if isinstance(data, dict):
        items = next((data[k] for k in (key, "rules", "normal_rules", "abnormal_rules") if k in data), None)
    if items is None:
        got = extract_json(final)
        if isinstance(got, dict):
            items = next(
                (got[k] for k in (key, "rules", "normal_rules", "abnormal_rules", "regions") if k in got), None
            )
    if isinstance(items, str):
        items = items.splitlines()
    if items is None:
        items = [m.group(1) for m in re.finditer(r"^\s*(?:\d+[.)]|[-*•])\s+(.+)$", final, re.M)]
    out = []
    for x in items if isinstance(items, list) else []:
        r = str(x).strip().strip(' -*\t"')
        if r and not is_placeholder(r) and len(_words(r)) >= 2:
            out.append(r)
    return out


def _descriptions(data: Any, text: str, batch: list[int]) -> dict[int, str]:
    """Frame descriptions from {"frames": [{"frame", "description"}]} or "Frame i: ..." lines."""
    out: dict[int, str] = {}
    items = data.get("frames") if isinstance(data, dict) else None
    for pos, it in enumerate(items if isinstance(items, list) else []):
        if not isinstance(it, dict):
            continue
        d = str(it.get("description") or it.get("caption") or "").strip()
        try:
            j = int(it.get("frame", it.get("index")))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            j = batch[pos] if pos < len(batch) else -1
        if j in batch and d and not is_placeholder(d):
            out[j] = d
    if not out:
        final, _ = strip_reasoning(text or "")
        for m in re.finditer(r"frame\s*(\d+)\s*[:\-–]\s*(.+)", final, re.I):
            j = int(m.group(1))
            if j in batch and not is_placeholder(m.group(2).strip()):
                out.setdefault(j, m.group(2).strip())
    return out


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
    mode: str = param(
        "vision", choices=("vision", "text"), doc="vision: the model sees frames; text: it reads descriptions"
    )
    describer: dict | None = param(None, "dict", doc="text mode: LMM settings of the model that describes frames")
    induction_batches: int = param(3, low=1, high=32, doc="text mode: batches of normal descriptions to induce from")
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
        self._built_describer: Any = None
        unknown = sorted(set(self.describer or {}) - set(CONNECTION))
        if unknown:
            raise GenadError(
                f"describer takes LMM settings ({', '.join(sorted(CONNECTION))}), not {', '.join(unknown)}"
            )

    def _small(self, frame: np.ndarray) -> Image.Image:
        im = Image.fromarray(frame)
        im.thumbnail((self.frame_side, self.frame_side), Image.Resampling.BILINEAR)
        return im

    @property
    def describer_client(self) -> Any:
        """Text mode: the client of the model that describes frames (the detector's own unless
        `describer` names other settings)."""
        if not self.describer:
            return self.client
        if self._built_describer is None:
            from genad.engines.lmm.config import LMMConfig
            from genad.engines.lmm.provider import LMMClient

            own = {k: getattr(self, k) for k in CONNECTION if getattr(self, k) is not None}
            self._built_describer = LMMClient(LMMConfig.from_env(self.config_file, **{**own, **self.describer}))
        return self._built_describer

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

    def describe(self, frames: dict[int, np.ndarray]) -> tuple[dict[int, str], Usage, list[str]]:
        """Text mode, perception: one sentence per frame from the describer, `batch_frames`
        frames per call. Returns (descriptions by frame index, usage, failed calls' errors)."""
        client, t = self.describer_client, self.templates
        sys_msg = system(t.text("video_rules", "system"))
        idx = sorted(frames)
        batches = [idx[i : i + self.batch_frames] for i in range(0, len(idx), self.batch_frames)]

        def one(batch: list[int]) -> tuple[dict[int, str], Usage, str | None]:
            parts: list[Any] = []
            for j in batch:
                parts += [f"Frame {j}:", self._small(frames[j])]
            parts.append(t.text("video_rules", "describe", n=len(batch), frames=", ".join(map(str, batch))))
            try:
                reply = client.chat([sys_msg, client.user(*parts)], schema=DESCRIBE_SCHEMA, max_tokens=self.max_tokens)
            except GenadError as e:
                if is_stop(e):
                    raise
                return {}, Usage(), str(e)
            return _descriptions(reply.data, reply.text, batch), reply.usage, None

        workers = max(1, min(client.config.max_concurrency, len(batches)))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            got = list(pool.map(one, batches))
        out: dict[int, str] = {}
        usage, errors = Usage(), []
        for d, u, err in got:
            out.update(d)
            usage = usage + u
            if err:
                errors.append(err)
        return out, usage, errors

    def induce_text(self, descriptions: Sequence[str], from_video_itself: bool = False) -> tuple[Rules, Usage]:
        """Text mode, induction (the detector's model, which may be text-only): the descriptions
        are split into `induction_batches` batches; for each, one call induces rules of normal
        activity and one derives rules of abnormal activity from them; the rules that recur in
        most of the batches are kept (aggregate_rules)."""
        descs = [d for d in descriptions if d.strip()]
        if not descs:
            raise GenadError("no frame description to induce rules from: the describer gave none")
        k = max(1, min(self.induction_batches, len(descs)))
        batches = [list(b) for b in np.array_split(np.array(descs, dtype=object), k)]
        t = self.templates
        sys_msg = system(t.text("video_rules", "system"))
        where = t.text("video_rules", "where", context=self.context) if self.context else ""
        usage = Usage()
        normal_sets: list[list[str]] = []
        abnormal_sets: list[list[str]] = []
        for batch in batches:
            intro = t.text(
                "video_rules", "induction_video" if from_video_itself else "induction_normal", n=len(batch), where=where
            )
            lines = "\n".join(f"- {d}" for d in batch)
            ask = t.text("video_rules", "induction_text_normal", intro=intro, descriptions=lines)
            r1 = self.client.chat([sys_msg, self.client.user(ask)], schema=RULES_SCHEMA, max_tokens=self.max_tokens)
            normal = _rule_list(r1.data, r1.text)
            usage = usage + r1.usage
            if not normal:
                continue
            listed = "\n".join(f"- {r}" for r in normal)
            ask2 = t.text("video_rules", "induction_text_abnormal", where=where, rules=listed)
            r2 = self.client.chat([sys_msg, self.client.user(ask2)], schema=RULES_SCHEMA, max_tokens=self.max_tokens)
            usage = usage + r2.usage
            normal_sets.append(normal)
            abnormal_sets.append(_rule_list(r2.data, r2.text))
        rules = Rules(aggregate_rules(normal_sets), aggregate_rules(abnormal_sets), f"{len(descs)} frame descriptions")
        if not (rules.normal or rules.abnormal):
            raise GenadError(
                "the model induced no rules from the frame descriptions (its answers held no rule list): "
                "try another model, more normal frames, or give rules="
            )
        return rules, usage

    def _frames_for_induction(self, frames: Sequence[np.ndarray] | np.ndarray) -> list[int]:
        """Frames spread over `frames` for induction: n_normal_frames (x induction_batches in
        text mode, where each batch is induced from apart)."""
        want = self.n_normal_frames * (self.induction_batches if self.mode == "text" else 1)
        return [int(i) for i in np.unique(np.linspace(0, len(frames) - 1, min(want, len(frames))).round().astype(int))]

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
        pick = self._frames_for_induction(frames)
        if self.mode == "text":
            descs, u, errors = self.describe({i: frames[i] for i in pick})
            if not descs:
                raise GenadError(f"the describer gave no frame description: {errors[0] if errors else 'no answer'}")
            self.rules_, u2 = self.induce_text([descs[i] for i in sorted(descs)])
            self.fit_usage_ = u + u2
        else:
            self.rules_, self.fit_usage_ = self.induce([frames[i] for i in pick])
        self.fitted_ = True
        return self

    # -- deduction
    def predict(self, samples: Sequence[Sample]) -> list[Result]:
        from genad.engines.lmm.provider import LMMStop

        return predict_each(samples, self._predict_one, stop_on=(LMMStop,))

    def _given_descriptions(self, sample: VideoSample, n: int) -> dict[int, str]:
        given = sample.meta.get("frame_descriptions")
        if isinstance(given, dict):
            return {int(k): str(v) for k, v in given.items() if str(k).lstrip("-").isdigit() and 0 <= int(k) < n}
        if isinstance(given, (list, tuple)):
            return {i: str(v) for i, v in enumerate(given[:n]) if v}
        return {}

    def _predict_one(self, sample: Sample, result: Result) -> None:
        if not isinstance(sample, VideoSample):
            raise GenadError(f"sample {sample.id!r} is a {sample.modality}, not a video")
        frames = sample.load_frames()
        n = len(frames)
        usage = Usage()
        judged = list(range(0, n, self.stride))
        descs: dict[int, str] = {}
        describe_errors: list[str] = []
        if self.mode == "text":
            descs = self._given_descriptions(sample, n)
            missing = [j for j in judged if j not in descs]
            if missing:
                got, u, describe_errors = self.describe({j: frames[j] for j in missing})
                descs.update(got)
                usage = usage + u
        rules = self.rules_ if self.rules_ is not None else self._given_rules
        if rules is None:  # zero-shot: rules from frames spread over this video
            pick = self._frames_for_induction(frames)
            if self.mode == "text":
                rules, u = self.induce_text([descs[i] for i in pick if i in descs] or list(descs.values()), True)
            else:
                rules, u = self.induce([frames[i] for i in pick], from_video_itself=True)
            usage = usage + u
        if self.mode == "text":
            judged = [j for j in judged if j in descs]  # a frame without a description cannot be judged
        batches = [judged[i : i + self.batch_frames] for i in range(0, len(judged), self.batch_frames)]
        t = self.templates
        sys_msg = system(t.text("video_rules", "system"))

        def judge(batch: list[int]) -> tuple[dict[int, dict[str, Any]], Usage, str | None]:
            parts: list[Any] = []
            if self.mode == "text":
                lines = "\n".join(f"Frame {j}: {descs[j]}" for j in batch)
                parts.append(
                    t.text(
                        "video_rules",
                        "judge_text",
                        rules=rules.as_text(t),
                        descriptions=lines,
                        n=len(batch),
                        frames=", ".join(map(str, batch)),
                    )
                )
            else:
                for j in batch:
                    parts += [f"Frame {j}:", self._small(frames[j])]
                parts.append(judge_prompt(rules, batch, t))
            try:
                reply = self.client.chat(
                    [sys_msg, self.client.user(*parts)], schema=JUDGE_SCHEMA, max_tokens=self.max_tokens
                )
            except GenadError as e:
                if is_stop(e):
                    raise
                return {}, Usage(), str(e)
            final, _ = strip_reasoning(reply.text)
            data = reply.data if reply.data is not None and final.strip() == reply.text.strip() else extract_json(final)
            verdicts = _read_verdicts(data, batch)
            if not verdicts:
                self.client.discard(reply)  # nothing readable: a resumed run asks again
            return verdicts, reply.usage, None

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
        errors = describe_errors + errors
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
        items = v.splitlines() if isinstance(v, str) else list(v) if isinstance(v, (list, tuple)) else []
        rules = [str(x).strip().strip(" -*\t") for x in items]
        return [r for r in rules if r and not is_placeholder(r)]  # "..." copied from the prompt is no rule

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
