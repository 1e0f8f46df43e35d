"""Look twice: the embedded engine proposes, a multimodal model verifies and explains.

    det = create("lmm+embedded", k=3, weight=0.5)      # GENAD_LMM_* set, or base_url=/model=
    det.fit(normals)                                   # optional: few-shot + a reference image
    results = det.predict(samples)

1. The embedded engine scores each image and proposes its top `k` regions (its Result.regions,
   else its map thresholded into connected regions).
2. The regions are outlined and numbered on a set-of-mark image; one LMM call per image gets
   the image, the marked image, optional normal references and class knowledge, and is asked
   per region: anomalous yes/no, confidence, defect type, reason.
3. Fusion, per region i (all values in [0, 1]):

       fused_i = w * p_i + (1 - w) * e_i

   e is the embedded map normalised as s / (s + scale), so that the embedded decision
   threshold maps to 0.5 (scale = the embedded Result.threshold unless given), and e_i is its
   peak in region i. p_i is the LMM's probability that region i is anomalous: its confidence
   c (clipped to [0.5, 1]) for a confirmed region, 1 - c for a rejected one; a region it did
   not judge keeps e_i. The image score is the highest fused_i; the decision is
   score >= threshold (0.5). The fused map keeps the embedded map's shape: region i is e
   scaled by fused_i / e_i (a confirmed region rises, a rejected one drops), the rest of the
   image keeps e.
4. If the answer is unusable (a refusal, an error, no verdict on any region), the result is
   the normalised embedded map and score, and Result.extra["fallback"] says why.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from genad.decision import UNIT
from genad.detector import Capabilities, Detector, check_image_detector, image_detector_class, param
from genad.engines.lmm.base import LMMImageDetector
from genad.engines.lmm.provider import prompt_text
from genad.engines.lmm.templates import class_words
from genad.engines.lmm.text2seg import knowledge_text
from genad.engines.lmm.visual_prompt import (
    as_labels,
    divide,
    fit_map,
    region_boxes,
    render_set_of_mark,
)
from genad.errors import GenadError, stop_with
from genad.registry import create
from genad.types import ImageSample, Knowledge, Region, Result, Sample, Usage, VisualPrompt

if TYPE_CHECKING:
    from genad.engines.lmm.provider import LMMReply

# The prompts are in prompts/look_twice.toml (keys listed there; the knowledge phrases in
# localize.toml), overridable by a prompts folder.

VERDICT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "regions": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {  # the reason before the verdict (generated in this order)
                    "region": {"type": "integer"},
                    "reason": {"type": "string"},
                    "defect_type": {"type": ["string", "null"]},
                    "anomalous": {"type": "boolean"},
                    "confidence": {"type": "number"},
                },
                "required": ["region", "reason", "anomalous", "confidence"],
            },
        },
        "image_anomaly_score": {"type": "number"},
    },
    "required": ["regions"],
}


@dataclass
class Verdict:
    """The LMM's judgement of one marked region."""

    region: int
    anomalous: bool | None = None
    confidence: float | None = None
    defect_type: str | None = None
    reason: str | None = None
    score: float | None = None  # a bare "region i: s" score (GPT-4V-AD format)

    @property
    def probability(self) -> float | None:
        """P(anomalous) in [0, 1]: confidence clipped to [0.5, 1] (below 0.5 the model was
        guessing), turned around for a rejection; a bare score is taken as it is."""
        if self.anomalous is None:
            return None if self.score is None else float(np.clip(self.score, 0.0, 1.0))
        c = 1.0 if self.confidence is None else float(np.clip(self.confidence, 0.5, 1.0))
        return c if self.anomalous else 1.0 - c


# --------------------------------------------------------------------------- answers
_CONF = re.compile(r"confiden\w*\D{0,16}?(\d+(?:[.,]\d+)?)\s*(%)?", re.IGNORECASE)
_BARE = re.compile(r"(?<![\w.])(\d+(?:[.,]\d+)?)\s*(%)?(?!\w|[.,]\d)")
_DEFECT = re.compile(r"(?:defect[\s_]*type|defect|type)\s*[:=]\s*\"?([^,;\n\"]+)", re.IGNORECASE)
_REASON = re.compile(r"(?:reason|because|explanation)\s*[:=]?\s*\"?([^\n\"]+)", re.IGNORECASE)


def _prob(x: float, pct: str | None) -> float | None:
    """A confidence as 0..1 (a percentage, or a number above 1 read as one); None past 100."""
    v = x / 100.0 if pct or x > 1.0 else x
    return v if 0.0 <= v <= 1.0 else None


def _num(v: Any) -> float | None:
    """A JSON confidence or score: a number, or text such as "90%" or "0,8"."""
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, float)):
        return _prob(float(v), None)
    m = _BARE.search(str(v))
    return _prob(float(m.group(1).replace(",", ".")), m.group(2)) if m else None


def parse_verdicts(text: str, data: dict[str, Any] | None, n_regions: int) -> dict[int, Verdict]:
    """Per-region verdicts from the JSON we ask for, else from a markdown table (Region |
    Anomalous | Confidence), else from prose lines such as "Region 1: Anomalous - a hole
    (confidence: 85%)", "#1: anomalous (0.9)", "Region 2 looks like the normal texture", else from
    the GPT-4V-AD "region i: s" format. Reasoning blocks are set aside; numbers outside
    1..n_regions are dropped."""
    from genad.engines.lmm.parse import clean_markdown, extract_json, strip_reasoning

    final, _ = strip_reasoning(text or "")
    if data is None or final.strip() != (text or "").strip():
        data = extract_json(final)
    out = _json_verdicts(data)
    prose = clean_markdown(final)
    if not out:
        out = _table_verdicts(prose)
    if not out:
        out = _prose_verdicts(prose)
    if not out:  # "1 — real defect, ...": a numbered list of the regions
        out = _prose_verdicts(prose, numbered=True)
    # a verdict counts only if it says something: yes/no or a score
    return {i: v for i, v in out.items() if 1 <= i <= n_regions and v.probability is not None}


def _json_verdicts(data: dict[str, Any] | None) -> dict[int, Verdict]:
    out: dict[int, Verdict] = {}
    regs = data.get("regions", data.get("verdicts")) if isinstance(data, dict) else None
    items = list(regs.items()) if isinstance(regs, dict) else list(enumerate(regs or [], 1))
    for key, r in items:
        if not isinstance(r, dict):
            continue
        raw_idx = r.get("region", r.get("index", r.get("id", key)))
        m = re.search(r"\d+", str(raw_idx))
        if not m:
            continue
        said = r.get("anomalous", r.get("is_anomalous", r.get("verdict", r.get("defect"))))
        verdict = _to_bool(said)
        if verdict is None and isinstance(said, str):
            verdict = _segment_verdict(said)
        v = Verdict(int(m.group()), anomalous=verdict)
        v.confidence = _num(r.get("confidence"))
        for name in ("score", "anomaly_score"):
            if v.score is None and (val := _num(r.get(name))) is not None:
                v.score = val
        dt = r.get("defect_type") or (r.get("defect") if isinstance(r.get("defect"), str) and verdict is None else None)
        v.defect_type = str(dt).strip() if dt and str(dt).strip().lower() not in ("none", "null", "n/a", "-") else None
        why = r.get("reason") or r.get("note") or r.get("explanation")
        v.reason = str(why).strip() if why else None
        out[v.region] = v
    return out


def _table_verdicts(text: str) -> dict[int, Verdict]:
    from genad.engines.lmm.parse import REGION_COLUMNS, table_rows

    out: dict[int, Verdict] = {}
    for row in table_rows(text):
        idx = verdict = conf = None
        reason = defect = None
        for k, cell in row.items():
            if idx is None and k.startswith(REGION_COLUMNS):
                m = re.search(r"\d+", cell)
                idx = int(m.group()) if m else None
            elif re.match(r"(?:anomal|abnormal|verdict|defect\?|defective|is defect|real|judg)", k):
                verdict = _to_bool(cell) if _to_bool(cell) is not None else _segment_verdict(cell)
            elif k.startswith(("confiden", "certain", "conf")):
                conf = _num(cell)
            elif k.startswith(("defect type", "type")):
                defect = cell if cell.strip(" -").lower() not in ("", "none", "null", "n/a") else None
            elif k.startswith(("reason", "comment", "explanation", "note")):
                reason = cell or None
        if idx is not None and verdict is not None:
            out[idx] = Verdict(idx, anomalous=verdict, confidence=conf, defect_type=defect, reason=reason)
    return out


def _segment_verdict(seg: str) -> bool | None:
    from genad.engines.lmm.parse import decide

    return decide(seg)[0]


_NUMBERED = r"^[ \t]*(?P<ids>\d+)[ \t]*(?:[.):]|—|–|-)[ \t]+"


def _prose_verdicts(text: str, numbered: bool = False) -> dict[int, Verdict]:
    """Verdicts of the regions named in prose ("Region 2: ..."), or with `numbered`, of the lines
    of a numbered list ("1 — ..."). A region with a confidence but no verdict of its own takes
    the whole answer's verdict when that is "normal" ("Neither candidate is a defect. Region 1
    is a reflection (confidence 0.8)")."""
    from genad.engines.lmm.parse import _HEAD, decide, head_ids

    out: dict[int, Verdict] = {}
    heads = list(re.finditer(_NUMBERED if numbered else _HEAD, text, re.IGNORECASE | re.MULTILINE))
    overall = decide(text)[0]
    for h, nxt in zip(heads, heads[1:] + [None]):
        seg = text[h.end() : nxt.start() if nxt else len(text)]
        seg = re.sub(r"^\s*\([^()]{0,80}\)", "", seg)  # "Region 1 (right frontal lobe): ..."
        seg = seg.lstrip(' :=-–—\t"*')
        seg = re.split(r"\n\s*\n|\n(?=\s*(?:image|overall|final|summary)\b)", seg, maxsplit=1, flags=re.I)[0]
        anomalous = _segment_verdict(seg)
        if anomalous is None and overall is False and _CONF.search(seg):
            anomalous = False
        v = Verdict(0, anomalous=anomalous)
        cm = _CONF.search(seg)
        if cm:
            v.confidence = _prob(float(cm.group(1).replace(",", ".")), cm.group(2))
        else:
            nm = _BARE.search(seg) if anomalous is not None else _BARE.match(seg)
            if nm:
                val = _prob(float(nm.group(1).replace(",", ".")), nm.group(2))
                if anomalous is not None:
                    v.confidence = val
                else:
                    v.score = val
        dm, rm = _DEFECT.search(seg), _REASON.search(seg)
        v.defect_type = dm.group(1).strip().rstrip(".") if dm else None
        v.reason = rm.group(1).strip() if rm else None
        if v.probability is None:  # "region 2" merely mentioned is no verdict
            continue
        for i in [int(h.group("ids"))] if numbered else head_ids(h):
            if i not in out:
                out[i] = Verdict(i, v.anomalous, v.confidence, v.defect_type, v.reason, v.score)
    return out


def _to_bool(v: Any) -> bool | None:
    if isinstance(v, bool):
        return v
    if isinstance(v, str):
        t = v.strip().lower().rstrip(".")
        if t in ("yes", "true", "anomalous", "abnormal", "defective", "y", "1", "anomaly", "defect"):
            return True
        if t in ("no", "false", "normal", "good", "ok", "n", "0", "not anomalous", "not a defect"):
            return False
    return None


# --------------------------------------------------------------------------- fusion
def normalise_embedded(anomaly_map: np.ndarray, scale: float) -> np.ndarray:
    """s / (s + scale), negatives as 0: the embedded threshold (scale) becomes 0.5."""
    s = np.maximum(np.nan_to_num(np.asarray(anomaly_map, dtype=np.float32)), 0.0)
    return (s / (s + np.float32(scale))).astype(np.float32)


def fuse(
    e: np.ndarray, labels: np.ndarray, n: int, probs: dict[int, float], weight: float
) -> tuple[np.ndarray, list[float]]:
    """Each region's fused score and the fused map (see the module doc).

    Region i (1..n): fused_i = w * p_i + (1 - w) * e_i, e_i the region's peak of e; a region
    without a verdict keeps e_i. The map keeps the embedded shape: region i is e scaled by
    fused_i / e_i (so its peak is fused_i: raised if confirmed, lowered if rejected), and
    pixels outside the proposals keep e.
    """
    from scipy import ndimage

    if n == 0:
        return e.astype(np.float32, copy=True), []
    idx = np.arange(1, n + 1)
    peaks = np.asarray(ndimage.maximum(e, labels, idx), dtype=np.float64)
    fused_scores = peaks.copy()
    for i, p in probs.items():
        if 1 <= i <= n:
            fused_scores[i - 1] = weight * p + (1.0 - weight) * peaks[i - 1]
    gain = np.ones(n + 1, dtype=np.float64)
    ok = peaks > 1e-6
    gain[1:][ok] = fused_scores[ok] / peaks[ok]
    fused = (e * gain[labels]).astype(np.float32)
    for i in idx[~ok]:  # a region with no embedded signal at all: its score, flat
        fused[labels == i] = fused_scores[i - 1]
    return fused, [float(x) for x in fused_scores]


# --------------------------------------------------------------------------- detector
def _knowledge(value: Any) -> Any:
    if value is None or isinstance(value, (str, Knowledge)):
        return value
    if isinstance(value, dict):
        return Knowledge(**value)
    raise GenadError(f"knowledge must be text or a Knowledge, got {type(value).__name__}")


def _engine(value: Any) -> Any:
    if isinstance(value, Detector):
        if "image" not in value.modalities:
            raise GenadError(f"embedded must be an image detector, got one that reads {', '.join(value.modalities)}")
        return value
    if isinstance(value, str):
        return check_image_detector(value)
    raise GenadError(f"embedded must be an image detector's name or instance, got {value!r}")


class LookTwiceDetector(LMMImageDetector):
    """Embedded proposals verified by a multimodal model ("lmm+embedded").

    Options: k (regions to verify, 3), weight (w of the LMM in the fusion, 0.5), threshold
    (decision on the fused score, 0.5), scale (embedded normaliser; default its threshold),
    embedded (an image detector's name or instance, "embedded"), embedded_params (its options;
    the engine's own settings for proposals come first, see Detector.tuned: for "embedded",
    strides 8+16), references (normal images shown to the LMM after fit, 1), class_name,
    knowledge (text or Knowledge; a sample's own class_name/knowledge win), include_original
    (send the unmarked image too, True), normal_standards / defect_types (build the knowledge),
    and the connection options of every LMM-backed detector (genad.engines.lmm.base).
    """

    name = "lmm+embedded"
    zero_shot = True

    k: int = param(3, low=1, high=64, doc="regions to verify per image")
    weight: float = param(0.5, low=0.0, high=1.0, doc="weight of the model in the fused score")
    scale: float | None = param(None, "float", low=1e-12, doc="embedded normaliser (default: its threshold)")
    embedded: Any = param("embedded", "any", convert=_engine, doc="the image detector that proposes regions")
    embedded_params: dict = param({}, doc="its options (they win over its tuning for proposals)")
    references: int = param(1, low=0, high=16, doc="normal images shown to the model after fit()")
    knowledge: Any = param(None, "any", convert=_knowledge, doc="what a person knows about the class")
    include_original: bool = param(True, doc="send the unmarked image too")
    batch_size: int = param(4, low=1, high=10_000, doc="few-shot: images per predict() when a run streams them")

    references_: list[Sample] = []  # fitted: normal images shown to the model
    fitted_parts = ("engine",)  # the embedded engine's own fitted state (a saved model keeps it)

    def _configure(self) -> None:
        super()._configure()
        if isinstance(self.embedded, Detector):
            self.engine = self.embedded
        else:
            cls = image_detector_class(self.embedded)
            self.engine = create(self.embedded, **cls.tuned(self.embedded_params, "proposals"))

    def capabilities(self) -> Capabilities:
        # as the inner engine needs: zero-shot embedded scoring wants the whole batch
        inner = self.engine.capabilities()
        return Capabilities(self.modalities, True, inner.whole_batch, inner.min_batch, chunk_size=self.batch_size)

    def knowledge_for(self, sample: Sample) -> Any:
        if sample.knowledge is not None and not sample.knowledge.is_empty():
            return sample.knowledge
        if self.knowledge is not None:
            return self.knowledge
        if self.normal_standards or self.defect_types:
            return super().knowledge_for(sample)
        return None

    def fit(self, normal_samples: Sequence[Sample]) -> LookTwiceDetector:
        """Few-shot: the embedded engine learns the normals; the first `references` of them
        are shown to the LMM as what normal looks like."""
        normal_samples = list(normal_samples)
        self.engine.fit(normal_samples)
        self.references_ = [s for s in normal_samples if isinstance(s, ImageSample)]
        self.fitted_ = True
        return self

    def predict(self, samples: Sequence[Sample]) -> list[Result]:
        samples = list(samples)
        t0 = time.perf_counter()
        base = self.engine.predict(samples)
        t_emb = (time.perf_counter() - t0) / max(1, len(samples))
        ref_cache: dict[str, np.ndarray] = {}
        out: list[Result] = []
        # A few images at a time (enough to keep the concurrent calls busy), so that the
        # working images of a large zero-shot batch are not all held at once.
        step = 2 * self.client.config.max_concurrency
        for c0 in range(0, len(samples), step):
            idx = range(c0, min(len(samples), c0 + step))
            plans: dict[int, _Plan | str] = {}
            t_plan: dict[int, float] = {}
            for i in idx:
                tp = time.perf_counter()
                plans[i] = self._plan(samples[i], base[i])
                t_plan[i] = time.perf_counter() - tp
            todo = [i for i in idx if isinstance(plans[i], _Plan) and plans[i].n > 0]  # type: ignore[union-attr]
            replies: dict[int, LMMReply | Exception] = {}
            prompts: dict[int, str] = {}
            t_lmm = 0.0
            if todo:
                asked = {
                    i: self._messages(samples[i], plans[i], self._refs_for(samples[i], ref_cache))  # type: ignore[arg-type]
                    for i in todo
                }
                reqs = [{"messages": asked[i], "schema": VERDICT_SCHEMA, "max_tokens": self.max_tokens} for i in todo]
                t1 = time.perf_counter()
                got = self.client.chat_many(reqs)
                t_lmm = (time.perf_counter() - t1) / len(todo)
                # As for detector "lmm": a wrong key/URL or a spent budget stops the run (the
                # evaluator keeps results so far; answers are cached) rather than quietly
                # turning every later image into an embedded-only result.
                stop = self.stop_error(got)
                if stop is not None:
                    # the results so far are kept by the run loop; this chunk's and the rest fail
                    done = [*out, *(Result(samples[j].id, error=str(stop)) for j in range(len(out), len(samples)))]
                    raise stop_with(stop, done) if isinstance(stop, GenadError) else stop
                replies = dict(zip(todo, got))
                prompts = {i: prompt_text(asked[i]) for i in todo}
            for i in idx:
                plan = plans[i]
                if isinstance(plan, str):
                    out.append(Result(samples[i].id, error=plan, timings={"embedded": t_emb}))
                    continue
                res = self._finish(samples[i], base[i], plan, replies.get(i), prompts.get(i))
                # per image; "lmm" is the wall time of the concurrent calls shared out
                res.timings = {"embedded": t_emb, "visual_prompt": t_plan[i]}
                if i in replies:
                    res.timings["lmm"] = t_lmm
                out.append(res)
        return out

    # -- steps ---------------------------------------------------------------------------------
    def _refs_for(self, s: Sample, cache: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Up to `references` normals shown to the LMM, of the sample's class when there are."""
        same = [r for r in self.references_ if r.class_name == s.class_name]
        chosen = (same or self.references_)[: self.references]
        for r in chosen:
            if r.id not in cache:
                cache[r.id] = _pixels(r)
        return [cache[r.id] for r in chosen]

    def _plan(self, s: Sample, r: Result) -> _Plan | str:
        """The regions to verify and the marked image, or why there are none (an error)."""
        if r.error or r.anomaly_map is None:
            return r.error or "the embedded engine gave no anomaly map"
        try:
            image = _pixels(s)
        except GenadError as e:
            return str(e)
        h, w = image.shape[:2]
        amap = np.asarray(r.anomaly_map, dtype=np.float32)
        if amap.shape != (h, w):
            amap = fit_map(amap, (h, w))
        scale = self.scale or (r.threshold if r.threshold and r.threshold > 0 else None)
        if scale is None:  # no threshold from the engine: the map's own high quantile
            scale = float(np.quantile(amap, 0.99)) or 1.0
        masks = divide(image, "proposals", self.k, amap, regions=r.regions or None, background=False)
        labels, n = as_labels(masks) if masks else (np.zeros((h, w), np.int32), 0)
        som = render_set_of_mark(image, masks) if n else image
        return _Plan(image, normalise_embedded(amap, scale), scale, labels, n, som)

    def _messages(self, s: Sample, plan: _Plan, refs: list[np.ndarray]) -> list[dict[str, Any]]:
        from genad.engines.lmm.provider import system

        t = self.templates
        cls = s.class_name or self.class_name
        what = (
            t.text("look_twice", "inspected_class", object=class_words(cls))
            if cls
            else t.text("look_twice", "inspected")
        )
        k = plan.n
        regions = t.text("look_twice", "region_one") if k == 1 else t.text("look_twice", "regions_many", n=k)
        parts: list[Any] = []
        if self.include_original:
            parts += [
                t.text("look_twice", "original", what=what),
                plan.image,
                t.text("look_twice", "marked", what=what, regions=regions),
                plan.som,
            ]
        else:
            parts += [t.text("look_twice", "marked_only", what=what, regions=regions), plan.som]
        if refs:
            parts.append(
                t.text("look_twice", "reference_one")
                if len(refs) == 1
                else t.text("look_twice", "reference_many", n=len(refs))
            )
            parts += refs
        know = knowledge_text(self.knowledge_for(s), t)
        if know:
            parts.append(know)
        parts.append(t.text("look_twice", "task", n=k))
        return [system(t.text("look_twice", "system")), self.client.user(*parts)]

    def _finish(
        self, s: Sample, base: Result, plan: _Plan, reply: LMMReply | Exception | None, asked: str | None = None
    ) -> Result:
        e, labels, n = plan.e, plan.labels, plan.n
        boxes = region_boxes(labels, n)
        prompt = VisualPrompt(labels.astype(np.uint8 if n <= 255 else np.uint16), f"proposals:{self.k}", plan.som)
        extra: dict[str, Any] = {
            "embedded_score": base.score,
            "embedded_threshold": base.threshold,
            "fusion": {"weight": self.weight, "scale": plan.scale},
        }
        usage = Usage()
        verdicts: dict[int, Verdict] = {}
        fallback: str | None = None
        if reply is None:
            fallback = "the embedded engine proposed no region to verify"
        elif isinstance(reply, Exception):
            fallback = f"LMM call failed: {reply}"
        else:
            usage = reply.usage
            extra["answer"] = reply.text
            verdicts = parse_verdicts(reply.text, reply.data, n)
            if not verdicts:
                verdicts, why = _image_level(reply.text, reply.data, n, asked)
                if why:
                    fallback = why
                    self.client.discard(reply)  # an unusable answer is not kept: a resumed run asks again
        if fallback is not None:
            # Unusable answer: the embedded judgement alone, on the same [0, 1] scale.
            emb_score = None if base.score is None else float(normalise_embedded(np.array(base.score), plan.scale))
            extra["fallback"] = fallback
            kept = [
                Region(score=float(e[labels == i].max()), box=boxes[i - 1], mask=labels == i, index=i)
                for i in range(1, n + 1)
                if boxes[i - 1] is not None
            ]
            score = emb_score if emb_score is not None else float(e.max())
            out = self.decide(
                Result(
                    s.id,
                    score=score,
                    anomaly_map=e,
                    explanation=f"embedded engine only ({fallback})",
                    usage=usage,
                    extra=extra,
                    visual_prompt=prompt,
                ),
                UNIT,
            )
            out.regions = [r for r in kept if out.decision and out.threshold is not None and r.score > out.threshold]
            return out
        probs = {i: p for i, v in verdicts.items() if (p := v.probability) is not None}
        fused, region_scores = fuse(e, labels, n, probs, self.weight)
        score = max(region_scores)
        boundary = self.calibrated(UNIT).raw_at(self.threshold)  # regions follow the decision
        regions: list[Region] = []
        confirmed: list[str] = []
        rejected: list[str] = []
        for i in range(1, n + 1):
            v, box = verdicts.get(i), boxes[i - 1]
            if box is None:
                continue
            p = probs.get(i)
            # confirmed: said "anomalous", or (a bare GPT-4V-AD score) more likely than not
            ok = p is not None and v is not None and (v.anomalous if v.anomalous is not None else p > 0.5)
            if v is not None and p is not None:
                (confirmed if ok else rejected).append(_describe(i, v, ok))
            if region_scores[i - 1] > boundary:
                regions.append(
                    Region(
                        score=region_scores[i - 1],
                        box=box,
                        mask=labels == i,
                        index=i,
                        label=v.defect_type if v and ok else None,
                        explanation=v.reason if v else None,
                    )
                )
        extra["verdicts"] = [
            {
                **asdict(v),
                "probability": probs.get(i),
                "fused_score": region_scores[i - 1],
                "embedded_score": float(e[labels == i].max()),
            }
            for i, v in sorted(verdicts.items())
        ]
        lines = ["Confirmed: " + " ".join(confirmed)] if confirmed else ["No proposed region confirmed."]
        if rejected:
            lines.append("Judged normal: " + " ".join(rejected))
        return self.decide(
            Result(
                s.id,
                score=score,
                anomaly_map=fused,
                regions=sorted(regions, key=lambda r: -r.score),
                explanation="\n".join(lines),
                usage=usage,
                extra=extra,
                visual_prompt=prompt,
            ),
            UNIT,
        )


@dataclass
class _Plan:
    image: np.ndarray
    e: np.ndarray  # normalised embedded map
    scale: float
    labels: np.ndarray
    n: int
    som: np.ndarray


def _pixels(s: Any) -> np.ndarray:
    if isinstance(s, ImageSample):
        return s.load()
    if isinstance(s, np.ndarray):
        return s
    raise GenadError(f"look-twice reads images only; {getattr(s, 'id', s)!r} is not an image")


def _describe(i: int, v: Verdict, confirmed: bool) -> str:
    head = f"region {i}"
    if confirmed and v.defect_type:
        head += f" ({v.defect_type})"
    if v.confidence is not None:
        head += f", confidence {v.confidence:.2f}"
    return head + (f": {v.reason[:300].rstrip('.')}." if v.reason else ".")


def _image_level(
    text: str, data: dict[str, Any] | None, n: int, prompt: str | None = None
) -> tuple[dict[int, Verdict], str | None]:
    """No per-region verdict: an answer that the whole image is normal rejects every region;
    anything else (a refusal, "anomalous" without saying where, an echo, nothing) is unusable."""
    from genad.engines.lmm.parse import parse_answer

    a = parse_answer(text, data, prompt=prompt)
    if a.refusal:
        return {}, "the model refused to answer"
    if a.echo:
        return {}, "the model only repeated the prompt"
    normal = a.anomalous is False or (a.anomalous is None and a.score is not None and a.score < 0.5)
    if normal:
        # one image-wide "normal": every region rejected; the reason is said once, in region 1
        p = 0.0 if a.score is None else min(a.score, 0.5)
        reason = None if a.reason is None else "whole image judged normal: " + a.reason[:300]
        return {i: Verdict(i, score=p, reason=reason if i == 1 else None) for i in range(1, n + 1)}, None
    if a.usable:
        return {}, "the model's answer did not say which regions are anomalous"
    return {}, "no verdict found in the model's answer"
