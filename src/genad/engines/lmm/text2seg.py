"""Text2Segmentation (GPT-4V-AD): a model's per-region scores become a pixel anomaly map.

    masks = divide(image, "grid", 4)                       # visual_prompt
    reply: "image anomaly score: 0.9; region 7: 0.8; region 11: 0.6."
    amap = scores_to_map(masks, {7: 0.8, 11: 0.6}, image.shape[:2])

Each region's pixels get its score, regions the answer does not mention get 0 (the prompt tells
the model that unlisted regions count as normal), and an optional Gaussian blur softens the
region edges. `localize` runs the whole loop: divide, mark, ask, parse, map.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage

from genad.decision import UNIT, Calibration, decide
from genad.engines.lmm.templates import Templates, class_words, templates_for
from genad.engines.lmm.visual_prompt import (
    as_labels,
    divide,
    region_boxes,
    render_set_of_mark,
)
from genad.ops import resize_map
from genad.types import ImageSample, Knowledge, Region, Result, Usage, VisualPrompt

if TYPE_CHECKING:
    from genad.engines.lmm.parse import Answer
    from genad.engines.lmm.provider import LMMClient


def scores_to_map(
    masks: Sequence[np.ndarray] | np.ndarray,
    region_scores: dict[int, float],
    shape: tuple[int, int],
    *,
    smooth_sigma: float = 0.0,
) -> np.ndarray:
    """float32 map of `shape`: region i's pixels (masks numbered 1..n) hold region_scores[i],
    everything else 0. Scores for numbers that are not regions are ignored. Masks at another
    size than `shape` (e.g. made on a resized image) are resized by nearest neighbour.
    smooth_sigma > 0 blurs the map (in pixels) so region edges fall off smoothly."""
    labels, n = as_labels(masks)
    lut = np.zeros(n + 1, dtype=np.float32)
    for i, s in region_scores.items():
        if 1 <= int(i) <= n and s is not None and np.isfinite(s):
            lut[int(i)] = float(s)
    amap = resize_map(lut[labels], shape, nearest=True)
    if smooth_sigma > 0:
        amap = ndimage.gaussian_filter(amap, sigma=float(smooth_sigma), mode="nearest")
    return amap.astype(np.float32, copy=False)


def image_score(stated: float | None, region_scores: dict[int, float]) -> float | None:
    """The image score: the one the model stated, else the highest region score, else None."""
    if stated is not None and np.isfinite(stated):
        return float(stated)
    vals = [float(s) for s in region_scores.values() if s is not None and np.isfinite(s)]
    return max(vals) if vals else None


# --------------------------------------------------------------------------- prompting
# The prompts are in prompts/localize.toml (keys listed there), overridable by a prompts folder.

# the reason first: structured output generates the keys in this order, and a model that explains
# before it scores scores better
LOCALIZE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "reason": {"type": "string"},
        "defect_type": {"type": ["string", "null"]},
        "regions": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"region": {"type": "integer"}, "score": {"type": "number"}},
                "required": ["region", "score"],
            },
        },
        "image_anomaly_score": {"type": "number"},
    },
    "required": ["reason", "regions", "image_anomaly_score"],
}


def knowledge_text(knowledge: Knowledge | str | None, templates: Templates | None = None) -> str:
    """Class knowledge as prompt sentences ("" when there is none), phrased by the standards and
    defects keys of localize.toml (`templates`; the packaged ones when not given)."""
    if knowledge is None:
        return ""
    if isinstance(knowledge, str):
        return knowledge.strip()
    t = templates or templates_for(None)  # None: the packaged files
    parts = []
    if knowledge.normal_standards:
        parts.append(t.text("localize", "standards", standards=knowledge.normal_standards.strip()))
    if knowledge.defect_types:
        parts.append(t.text("localize", "defects", defects=", ".join(knowledge.defect_types)))
    if knowledge.notes:
        parts.append(knowledge.notes.strip())
    return "\n".join(parts)


def build_localize_messages(
    client: LMMClient,
    image: np.ndarray,
    som: np.ndarray,
    n_regions: int,
    *,
    class_name: str | None = None,
    knowledge: Knowledge | str | None = None,
    references: Sequence[Any] = (),
    include_original: bool = True,
    json_answer: bool = False,
) -> list[dict[str, Any]]:
    """The GPT-4V-AD prompt: [original], set-of-mark image, [normal references], then the
    question and the answer format. Images go in that order."""
    from genad.engines.lmm.provider import system

    t = templates_for(client)
    what = (
        t.text("localize", "inspected_class", object=class_words(class_name))
        if class_name
        else t.text("localize", "inspected")
    )
    parts: list[Any] = []
    if include_original:
        parts += [t.text("localize", "original", what=what), image, t.text("localize", "divided", n=n_regions), som]
    else:
        parts += [t.text("localize", "divided_only", what=what, n=n_regions), som]
    parts.append(t.text("localize", "marks", n=n_regions))
    refs = list(references)
    if refs:
        parts.append(
            t.text("localize", "reference_one") if len(refs) == 1 else t.text("localize", "reference_many", n=len(refs))
        )
        parts += [_pixels(r) for r in refs]
    know = knowledge_text(knowledge, t)
    if know:
        parts.append(know)
    answer = t.text("localize", "answer_json" if json_answer else "answer_text")
    parts.append(t.text("localize", "task", answer=answer))
    return [system(t.text("localize", "system")), client.user(*parts)]


def _pixels(ref: Any) -> Any:
    """A reference as something the message builder takes (samples become their pixels)."""
    if isinstance(ref, ImageSample):
        return ref.load()
    return ref


def localize(
    client: LMMClient,
    image: np.ndarray,
    *,
    method: str = "grid",
    n: int | None = None,
    class_name: str | None = None,
    knowledge: Knowledge | str | None = None,
    references: Sequence[Any] = (),
    anomaly_map: np.ndarray | None = None,
    regions: Sequence[Region] | None = None,
    sample_id: str = "",
    include_original: bool = True,
    json_answer: bool = False,
    smooth_sigma: float = 0.0,
    threshold: float = 0.5,
    max_tokens: int | None = None,
    calibration: Calibration = UNIT,
) -> Result:
    """Zero-/few-shot localisation with one LMM call, as in GPT-4V-AD.

    The image is divided (`method` "grid" | "slic" | "proposals", `n` regions; proposals need
    the embedded engine's `anomaly_map` or `regions`), marked, and sent with any normal
    `references` and class `knowledge`. The answer's region scores become Result.anomaly_map
    (image resolution), its stated image score (else the highest region score) Result.score.
    Result.visual_prompt holds the set-of-mark image, the label image (pixel = region number)
    and the method; Result.extra "region_scores" and "answer" (the raw reply text).
    json_answer=True asks for JSON with a schema (servers without structured output still
    answer in text, which is parsed the same way).
    Raises what the client raises (GenadError subclasses) when the call itself fails.
    """
    from genad.engines.lmm.parse import parse_answer
    from genad.engines.lmm.provider import prompt_text

    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    h, w = img.shape[:2]
    t0 = time.perf_counter()
    masks = divide(img, method, n, anomaly_map, regions=regions)
    som = render_set_of_mark(img, masks)
    t1 = time.perf_counter()
    msgs = build_localize_messages(
        client,
        img,
        som,
        len(masks),
        class_name=class_name,
        knowledge=knowledge,
        references=references,
        include_original=include_original,
        json_answer=json_answer,
    )
    reply = client.chat(msgs, schema=LOCALIZE_SCHEMA if json_answer else None, max_tokens=max_tokens)
    t2 = time.perf_counter()
    answer = parse_answer(reply.text, reply.data, prompt=prompt_text(msgs))
    region_scores = dict(answer.region_scores)
    result = answer_to_result(
        answer,
        region_scores,
        masks,
        (h, w),
        sample_id=sample_id,
        smooth_sigma=smooth_sigma,
        threshold=threshold,
        usage=reply.usage,
        calibration=calibration,
    )
    result.visual_prompt = VisualPrompt(
        labels=as_labels(masks)[0].astype(np.uint16 if len(masks) > 255 else np.uint8),
        method=method if n is None else f"{method}:{n}",
        image=som,
    )
    result.extra["answer"] = reply.text
    if result.error:
        result.error = answer.why_unusable(getattr(reply, "finish_reason", None), getattr(reply, "max_tokens", None))
        discard = getattr(client, "discard", None)
        if discard is not None:  # not kept: a resumed run asks again
            discard(reply)
    result.timings.update(visual_prompt=t1 - t0, lmm=t2 - t1)
    return result


def answer_to_result(
    answer: Answer,
    region_scores: dict[int, float],
    masks: Sequence[np.ndarray] | np.ndarray,
    shape: tuple[int, int],
    *,
    sample_id: str = "",
    smooth_sigma: float = 0.0,
    threshold: float = 0.5,
    usage: Usage | None = None,
    calibration: Calibration = UNIT,
) -> Result:
    """A parsed answer as a Result: map from the region scores, score, decision, regions
    (the mentioned ones with a score above 0, highest first), explanation."""
    labels, n = as_labels(masks)
    amap = scores_to_map(labels, region_scores, shape, smooth_sigma=smooth_sigma)
    score = image_score(answer.score, region_scores)
    if score is None and answer.anomalous is not None:
        score = 1.0 if answer.anomalous else 0.0
    if score is None:
        return Result(
            sample_id=sample_id, error=answer.why_unusable(), usage=usage, extra={"region_scores": region_scores}
        )
    boxes = region_boxes(labels, n)
    regions = []
    for i, s in sorted(region_scores.items(), key=lambda kv: -kv[1]):
        if not (1 <= i <= n) or s <= 0 or boxes[i - 1] is None:
            continue
        regions.append(Region(score=float(s), box=boxes[i - 1], mask=labels == i, index=i, label=answer.defect_type))
    parts = [answer.defect_type, answer.location, answer.reason]
    explanation = "; ".join(p for p in parts if p) or None
    result = Result(
        sample_id=sample_id,
        score=float(score),
        anomaly_map=amap,
        regions=regions,
        explanation=explanation,
        usage=usage,
        extra={"region_scores": {int(k): float(v) for k, v in region_scores.items()}},
    )
    return decide(result, calibration, threshold, verdict=answer.anomalous)


__all__ = [
    "scores_to_map",
    "image_score",
    "localize",
    "answer_to_result",
    "build_localize_messages",
    "knowledge_text",
]
