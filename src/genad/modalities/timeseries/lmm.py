"""SeriesLMMDetector ("ts-lmm"): ask a multimodal model about a series, shown as a chart and told
as numbers (or, with chart=false, told as numbers only: any text model will do).

Each series is one chat: a PNG line chart (x = point index, a dense labelled grid; left out with
chart=false) and a compact text summary (length, time span, statistics, and the series downsampled to `max_values` buckets
with each bucket's mean, min and max so that spikes survive). The model is asked for JSON:
{"anomalous": bool, "score": 0..1, "ranges": [{"start", "end", "score", "reason"}]}. The answer's
ranges (end exclusive) are clipped to the series and painted onto a per-point map with their
scores. Answers in other shapes are read by genad.engines.lmm.parse; an answer with neither a
decision nor ranges gives an error Result (score None), never a crash or a made-up score.

Decisions (genad.decision): the score is already in 0..1, so the calibration is
`decision.UNIT` (boundary 0.5; `threshold` and `raw_threshold` move it); the model's explicit
yes/no wins over the score for `Result.decision`, and `normalized_score` is set either way.
The ranges follow the decision: a series judged normal reports none (the ranges the model
named anyway stay in `extra["unflagged_ranges"]` and on the point map); a "yes" without a
usable range is anomalous with no range.

    det = create("ts-lmm", model="gpt-4o")          # or GENAD_LMM_* variables / a config file
    results = det.predict([load_series_file("cpu.csv")])
"""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from genad.decision import UNIT
from genad.detector import param, raw_threshold_param, threshold_param
from genad.engines.lmm.base import LMMDetectorBase
from genad.engines.lmm.provider import prompt_text
from genad.engines.lmm.templates import Templates, templates_for
from genad.errors import ConfigError, GenadError, stop_with
from genad.modalities.timeseries.common import Prepared, prepare
from genad.types import Result, Sample, TimeSeriesSample

# The prompts are in genad/engines/lmm/prompts/series.toml (keys listed there), overridable by
# a prompts folder.

# the evidence (each range with its reason) before the verdict: generated in this order
ANSWER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "ranges": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "reason": {"type": "string"},
                    "start": {"type": "integer"},
                    "end": {"type": "integer"},
                    "score": {"type": "number", "minimum": 0, "maximum": 1},
                },
                "required": ["reason", "start", "end"],
            },
        },
        "anomalous": {"type": "boolean"},
        "score": {"type": "number", "minimum": 0, "maximum": 1},
    },
    "required": ["ranges", "anomalous"],
}


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def summarize(values: np.ndarray, sample: TimeSeriesSample, max_values: int = 120) -> str:
    """The numeric part of the prompt: size, span, statistics, downsampled values."""
    v = values
    n, dims = v.shape
    cols = sample.columns if sample.columns and len(sample.columns) == dims else [f"dim {d}" for d in range(dims)]
    lines = [f"Series {sample.id!r}: {n} points" + (f", {dims} columns ({', '.join(cols)})" if dims > 1 else "") + "."]
    ts = sample.timestamps
    if ts is not None and len(ts) == n and n > 1:
        step = np.median(np.diff(np.asarray(ts))) if n > 2 else ts[1] - ts[0]
        lines.append(f"Time: index 0 = {ts[0]}, index {n - 1} = {ts[-1]}, one point every {step}.")
    for d in range(dims):
        x = v[:, d]
        p1, med, p99 = np.percentile(x, [1, 50, 99])
        lines.append(
            f"{cols[d]}: min {_fmt(x.min())} (index {int(x.argmin())}), max {_fmt(x.max())} (index {int(x.argmax())}), "
            f"mean {_fmt(x.mean())}, std {_fmt(x.std())}, median {_fmt(med)}, 1st-99th percentile {_fmt(p1)}..{_fmt(p99)}."
        )
    k = min(max_values, n)
    edges = np.linspace(0, n, k + 1).astype(int)
    if k == n:
        lines.append("All values, as index: value" + (" per column" if dims > 1 else "") + ":")
    else:
        lines.append(
            f"Values in {k} buckets, as start-end index: mean [min..max]" + (" per column" if dims > 1 else "") + ":"
        )
    for a, b in zip(edges[:-1], edges[1:]):
        seg = v[a:b]
        if b - a == 1:
            body = ", ".join(_fmt(seg[0, d]) for d in range(dims))
            lines.append(f"{a}: {body}")
        else:
            body = "; ".join(
                f"{_fmt(seg[:, d].mean())} [{_fmt(seg[:, d].min())}..{_fmt(seg[:, d].max())}]" for d in range(dims)
            )
            lines.append(f"{a}-{b - 1}: {body}")
    return "\n".join(lines)


def task_text(n: int, context: str | None, templates: Templates | None = None) -> str:
    """The task after the numbers: the context sentence (if any), what to find, the JSON form;
    from the about and task keys of series.toml (`templates`; the packaged ones when not given)."""
    t = templates or templates_for(None)  # None: the packaged files
    about = t.text("series", "about", context=context) if context else ""
    return t.text("series", "task", about=about, n=n)


def png_part(image: np.ndarray) -> dict[str, Any]:
    """A chart as a PNG data URL (lossless: thin lines and tick labels stay sharp)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", optimize=True)
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
    return {"type": "image_url", "image_url": {"url": url}}


def _num(x: Any) -> float | None:
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if np.isfinite(f) else None


def read_ranges(data: dict[str, Any] | None) -> tuple[list[dict[str, Any]], bool | None, float | None] | None:
    """(ranges as dicts {start, end, score, reason}, anomalous, score) from a JSON answer, or None
    when the JSON has none of these."""
    if not isinstance(data, dict):
        return None
    raw = next(
        (data[k] for k in ("ranges", "anomalous_ranges", "anomalies", "anomaly_ranges", "intervals") if k in data), None
    )
    anomalous = data.get("anomalous", data.get("is_anomalous"))
    anomalous = anomalous if isinstance(anomalous, bool) else None
    score = _num(data.get("score", data.get("anomaly_score")))
    if raw is None and anomalous is None:
        return None
    out = []
    for item in raw if isinstance(raw, list) else []:
        if isinstance(item, dict):
            a, b = _num(item.get("start")), _num(item.get("end"))
            s, reason = _num(item.get("score")), item.get("reason") or item.get("explanation")
        elif isinstance(item, (list, tuple)) and len(item) >= 2:
            a, b, s, reason = _num(item[0]), _num(item[1]), None, None
        else:
            continue
        if a is None or b is None:
            continue
        out.append({"start": a, "end": b, "score": s, "reason": str(reason) if reason else None})
    return out, anomalous, score


def ranges_to_map(
    ranges: list[dict[str, Any]], n: int, default_score: float
) -> tuple[np.ndarray, list[dict[str, Any]], list[dict[str, Any]]]:
    """Paint answer ranges onto a (n,) map. Returns (map, kept ranges with int bounds, dropped)."""
    m = np.zeros(n, dtype=np.float32)
    kept, dropped = [], []
    for r in ranges:
        a, b = int(round(r["start"])), int(round(r["end"]))
        if b < a:
            a, b = b, a
        if b == a:
            b = a + 1  # a single point
        a, b = max(0, a), min(n, b)
        if b <= a:
            dropped.append(r)
            continue
        s = r["score"] if r["score"] is not None else default_score
        s = float(min(1.0, max(0.0, s)))
        m[a:b] = np.maximum(m[a:b], s)
        kept.append({**r, "start": a, "end": b, "score": s})
    return m, kept, dropped


def _chart_size(value: Any) -> tuple[int, int]:
    try:
        w, h = (int(x) for x in (value.replace("x", ",").split(",") if isinstance(value, str) else value))
    except (TypeError, ValueError):
        raise GenadError(f"chart_size must be width,height in pixels such as 1024,448; got {value!r}") from None
    if not (64 <= w <= 4096 and 64 <= h <= 4096):
        raise GenadError(f"chart_size must be between 64 and 4096 pixels a side, got {w}x{h}")
    return w, h


class SeriesLMMDetector(LMMDetectorBase):
    """Zero-shot series anomaly detection by a multimodal model (any OpenAI-compatible server).

    max_values: buckets of the numeric summary. context: a sentence about the series (what it
    measures, what normal is) added to the prompt. chart_size: (width, height) of the chart; the
    width is capped at the config's max_image_side so the PNG is sent as drawn. threshold:
    the decision threshold on the (normalised) score, used when the model gives no yes/no;
    raw_threshold: the same in the model's 0..1 score (it replaces the 0.5 boundary). The
    connection options are those of every LMM-backed detector (genad.engines.lmm.base).
    """

    name = "ts-lmm"
    modalities = ("timeseries",)
    zero_shot = True

    max_values: int = param(120, low=10, high=10_000, doc="buckets of the numeric summary")
    context: str | None = param(None, "str", doc="a sentence about the series (what it measures, what normal is)")
    threshold: float = threshold_param()
    raw_threshold: float | None = raw_threshold_param()
    max_tokens: int | None = param(800, "int", low=1, high=1_000_000, doc="longest answer, in tokens")
    chart: bool = param(True, doc="send the chart (false: the numbers only, for text-only models)")
    chart_size: tuple[int, int] = param((1024, 448), "any", convert=_chart_size, doc="chart width,height")
    max_nan_frac: float = param(0.2, low=0.0, high=1.0, doc="largest share of missing values tolerated")
    batch_size: int = param(4, low=1, high=10_000, doc="series per predict() when a run streams them")

    def messages(self, sample: TimeSeriesSample, prep: Prepared) -> list[dict[str, Any]]:
        """The chat for one series: system prompt, then [chart PNG, numbers + task] (with
        chart=false: the numbers + task alone, as plain text)."""
        from genad.engines.lmm.provider import system
        from genad.modalities.timeseries.render import render_chart

        t = self.templates
        text = summarize(prep.values, sample, self.max_values) + "\n" + task_text(prep.n, self.context, t)
        if not self.chart:
            return [system(t.text("series", "system_numbers")), {"role": "user", "content": text}]
        side = int(getattr(getattr(self.client, "config", None), "max_image_side", 768))
        w, h = self.chart_size
        if w > side:  # draw at the size that is sent, rather than letting it be shrunk to blur
            w, h = side, max(200, int(h * side / w))
        chart = render_chart(prep.values, title=f"{sample.id} (x: point index)", columns=sample.columns, size=(w, h))
        content = [png_part(chart), {"type": "text", "text": text}]
        return [system(t.text("series", "system")), {"role": "user", "content": content}]

    def predict(self, samples: Sequence[Sample]) -> list[Result]:
        results: list[Result | None] = [None] * len(samples)
        requests: list[dict[str, Any]] = []
        asked: list[list[dict[str, Any]]] = []
        where: list[int] = []
        preps: dict[int, Prepared] = {}
        t0 = time.perf_counter()
        for i, s in enumerate(samples):
            try:
                if not isinstance(s, TimeSeriesSample):
                    raise GenadError(f"ts-lmm reads time series; {s.id!r} is a {s.modality} sample")
                prep = prepare(s, self.max_nan_frac)
                if prep.constant:  # nothing to ask: the rule is the same as the classical detectors'
                    results[i] = self.decide(
                        Result(
                            sample_id=s.id,
                            score=0.0,
                            anomaly_map=np.zeros(prep.n, np.float32),
                            explanation="constant series: every value is the same; every point scores 0 "
                            "(no model call).",
                            extra={**prep.extra, "constant": True},
                        ),
                        UNIT,
                        verdict=False,
                    )
                    continue
                msgs = self.messages(s, prep)
            except ConfigError:
                raise  # no model configured: every sample would fail the same way
            except GenadError as e:
                results[i] = Result(sample_id=s.id, error=str(e))
                continue
            preps[i] = prep
            requests.append({"messages": msgs, "schema": ANSWER_SCHEMA, "max_tokens": self.max_tokens})
            asked.append(msgs)
            where.append(i)
        replies = self.client.chat_many(requests) if requests else []
        stop = self.stop_error(replies)
        for i, reply, msgs in zip(where, replies, asked):
            s = samples[i]
            if isinstance(reply, Exception):
                results[i] = Result(sample_id=s.id, error=f"model call failed: {reply}")
            else:
                assert isinstance(s, TimeSeriesSample)
                results[i] = self._read(s, preps[i], reply, prompt_text(msgs))
        took = time.perf_counter() - t0
        for r in results:
            assert r is not None
            r.timings.setdefault("seconds", took / max(1, len(samples)))
        out = [r for r in results if r is not None]
        if stop is not None:  # the answers received are kept by the run loop
            raise stop_with(stop, out) if isinstance(stop, GenadError) else stop
        return out

    def _read(self, sample: TimeSeriesSample, prep: Prepared, reply: Any, prompt: str | None = None) -> Result:
        """Map one answer back to points; a useless answer (a refusal, a copy of the prompt's
        example, placeholders, nothing) becomes an error Result with the answer kept."""
        from genad.engines.lmm.parse import extract_json, is_echo, parse_answer, strip_reasoning

        text = reply.text or ""
        final, _ = strip_reasoning(text)
        data = reply.data if reply.data is not None and final.strip() == text.strip() else extract_json(final)
        if data is not None and is_echo(data, prompt):
            self.client.discard(reply)
            return Result(
                sample_id=sample.id,
                error="no usable answer: the model only repeated the prompt's example",
                usage=reply.usage,
                extra={"answer": text[:2000], "echo": True},
            )
        parsed = read_ranges(data)
        if parsed is None:  # not our JSON: let the general parser try (text ranges, yes/no)
            ans = parse_answer(text, None, prompt=prompt)
            if ans.refusal or (ans.anomalous is None and ans.score is None and not ans.ranges):
                what = ans.why_unusable(getattr(reply, "finish_reason", None), getattr(reply, "max_tokens", None))
                if what == "no usable score in the model's answer":  # say what a series answer lacks
                    what = "no usable answer: the model gave no decision or ranges"
                else:
                    what = what.replace("no usable score", "no usable answer")
                self.client.discard(reply)  # not kept: a resumed run asks again
                return Result(
                    sample_id=sample.id,
                    error=f"{what}: {text[:200]!r}",
                    usage=reply.usage,
                    extra={"answer": text[:2000]},
                )
            ranges = [{"start": a, "end": b, "score": None, "reason": None} for a, b in ans.ranges]
            anomalous, score = ans.anomalous, ans.score
            reason = ans.reason
        else:
            ranges, anomalous, score = parsed
            reason = None
        default = score if score is not None and score > 0 else 1.0
        amap, kept, dropped = ranges_to_map(ranges, prep.n, default)
        if score is None:
            score = float(amap.max()) if kept else (0.0 if anomalous is False else None)
        if score is None:
            self.client.discard(reply)
            return Result(
                sample_id=sample.id,
                error=f"the model named no usable range: {text[:200]!r}",
                usage=reply.usage,
                extra={"answer": text[:2000]},
            )
        result = self.decide(
            Result(sample_id=sample.id, score=float(score), anomaly_map=amap, usage=reply.usage),
            UNIT,
            verdict=anomalous,
        )
        decision = bool(result.decision)
        parts = [f"[{r['start']}, {r['end']}): {r['reason'] or 'no reason given'}" for r in kept]
        extra: dict[str, Any] = {**prep.extra, "answer": text[:2000], "range_reasons": [r["reason"] for r in kept]}
        if dropped:
            extra["dropped_ranges"] = json.loads(json.dumps(dropped, default=str))
        if decision:
            result.ranges = [(r["start"], r["end"]) for r in kept]
            result.explanation = "; ".join(parts) if parts else (reason or "anomalous, no range given")
        else:  # the ranges follow the decision: a normal series has none
            if kept:
                extra["unflagged_ranges"] = [[r["start"], r["end"]] for r in kept]
            result.explanation = reason or "no anomaly seen"
            if parts:
                result.explanation += " (ranges named but judged normal: " + "; ".join(parts) + ")"
        result.extra = extra
        return result
