"""LMMDetector ("lmm"): ask a multimodal model about each image, the GPT-4V-study way.

    det = create("lmm", variant="expertise", model="gpt-4o")   # settings also from env / config file
    det.fit(normal_refs)                                        # optional: one-/few-shot references
    results = det.predict(samples)

Each sample is one chat: normal references first ("The first image is normal..."), then the image
to judge, then the prompt of the chosen variant (naive / class / expertise, from the template
files) and the answer format. Results carry the parsed score, decision, explanation, the raw
transcript (extra["transcript"], images as placeholders) and usage. With `regions="grid"` (or
"slic") localisation is delegated to text2seg (set-of-mark prompt -> region scores -> map).
A refusal or an answer without a usable score gives score None and an error saying so.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from genad.decision import UNIT
from genad.detector import param
from genad.engines.lmm.base import LMMImageDetector, is_stop
from genad.engines.lmm.parse import ANSWER_SCHEMA, Answer, parse_answer
from genad.engines.lmm.provider import LMMReply, prompt_text, system
from genad.engines.lmm.templates import Templates, normalise_variant
from genad.errors import ConfigError, GenadError, stop_with
from genad.types import ImageSample, Result, Sample


def _regions(value: str) -> str:
    if value not in ("grid", "slic"):
        # "proposals" needs the embedded engine's map: that is detector "lmm+embedded"
        raise GenadError(f"regions must be grid or slic (or use detector 'lmm+embedded'), not {value!r}")
    return value


class LMMDetector(LMMImageDetector):
    """Ask a multimodal model about each image (see the module doc); the connection options
    are those of every LMM-backed detector (genad.engines.lmm.base)."""

    name = "lmm"
    zero_shot = True

    variant: str = param("naive", convert=normalise_variant, doc="prompt: naive, class or expertise")
    domain: str = param("industrial", doc="prompt file: industrial, medical, logical, depth or yours")
    max_refs: int = param(4, low=0, high=16, doc="normal references shown per image")
    regions: str | None = param(None, "str", convert=_regions, doc="localise by grid or slic regions (set-of-mark)")
    n_regions: int | None = param(None, "int", low=1, high=1024, doc="how many regions")

    references_: list[ImageSample] = []  # fitted: the normal references shown to the model

    @property
    def templates(self) -> Templates:
        t = super().templates
        t.domain(self.domain)  # unknown domain: fail early, clearly
        return t

    def fit(self, normal_samples: Sequence[Sample]) -> LMMDetector:
        refs = [s for s in normal_samples if isinstance(s, ImageSample)]
        if len(refs) != len(normal_samples):
            raise GenadError("detector 'lmm' takes image references only")
        self.references_ = list(refs)
        self._ref_parts: dict[str, dict[str, Any]] = {}
        self.fitted_ = True
        return self

    def _refs_for(self, sample: Sample) -> list[ImageSample]:
        same = [r for r in self.references_ if r.class_name == sample.class_name]
        return (same or self.references_)[: self.max_refs]

    def _ref_part(self, ref: ImageSample) -> dict[str, Any]:
        # encode each reference once, not once per sample (a cache, not fitted state)
        parts = self.__dict__.setdefault("_ref_parts", {})
        if ref.id not in parts:
            parts[ref.id] = self.client.user(ref.load())["content"][0]
        return parts[ref.id]

    # -- prompts
    def build_messages(self, sample: ImageSample) -> tuple[list[dict[str, Any]], dict[str, Any] | None, dict[str, Any]]:
        """(messages, schema, info) for one sample; info records the prompt choices."""
        refs = self._refs_for(sample)
        domain = str(sample.meta.get("domain") or self.domain)
        class_name = self.class_name or sample.class_name
        prompt, note = self.templates.render(domain, self.variant, len(refs), class_name, self.knowledge_for(sample))
        json_answer = self.client.config.json_mode != "off"
        instruction = self.templates.answer_instruction(json_answer)
        parts: list[Any] = [self._ref_part(r) for r in refs]
        parts.append(sample.load())
        parts.append(prompt + ("\n\n" + instruction if instruction else ""))
        msgs: list[dict[str, Any]] = []
        sys_text = self.templates.system_prompt(domain)
        if sys_text:
            msgs.append(system(sys_text))
        msgs.append(self.client.user(*parts))
        info = {
            "variant": self.variant,
            "domain": domain,
            "class_name": class_name,
            "references": [r.id for r in refs],
            "prompt": prompt,
        }
        if note:
            info["prompt_note"] = note
        return msgs, (ANSWER_SCHEMA if json_answer else None), info

    # -- scoring
    def predict(self, samples: Sequence[Sample]) -> list[Result]:
        client = self.client
        _ = self.templates  # an unknown domain or a bad prompts folder fails here, once
        if self.regions is not None:
            return self._predict_regions(samples)
        results: list[Result | None] = [None] * len(samples)
        requests: list[dict[str, Any]] = []
        owners: list[tuple[int, dict[str, Any], list[dict[str, Any]]]] = []
        for i, s in enumerate(samples):
            if not isinstance(s, ImageSample):
                results[i] = Result(sample_id=s.id, error=f"detector 'lmm' reads images, not {s.modality}")
                continue
            try:
                msgs, schema, info = self.build_messages(s)
            except ConfigError:
                raise
            except GenadError as e:
                results[i] = Result(sample_id=s.id, error=str(e))
                continue
            requests.append({"messages": msgs, "schema": schema, "max_tokens": self.max_tokens})
            owners.append((i, info, msgs))
        t0 = time.perf_counter()
        replies = client.chat_many(requests)
        elapsed = (time.perf_counter() - t0) / max(1, len(requests))
        stop = self.stop_error(replies)
        for (i, info, msgs), rep in zip(owners, replies, strict=True):
            sid = samples[i].id
            if isinstance(rep, Exception):
                results[i] = Result(
                    sample_id=sid, error=str(rep) if isinstance(rep, GenadError) else f"{type(rep).__name__}: {rep}"
                )
            else:
                res = self._to_result(sid, rep, info, msgs)
                res.timings["lmm"] = elapsed
                results[i] = res
        out = [r for r in results if r is not None]
        if stop is not None:
            # the answers received are kept (the run loop records them before it stops; they are
            # cached too): a re-run after fixing this costs nothing for them
            raise stop_with(stop, out) if isinstance(stop, GenadError) else stop
        return out

    def _to_result(self, sample_id: str, rep: LMMReply, info: dict[str, Any], msgs: list[dict[str, Any]]) -> Result:
        ans = parse_answer(rep.text, rep.data, prompt=prompt_text(msgs))
        extra: dict[str, Any] = {
            **info,
            "answer": _answer_dict(ans),
            "score_source": ans.score_source,
            "cached": rep.cached,
            "retries": rep.retries,
            "transcript": transcript(msgs, rep.text),
        }
        if self.client.price_note:
            extra["cost_note"] = self.client.price_note
        explanation = _explain(ans)
        score = ans.effective_score
        if score is None:
            self.client.discard(rep)  # not kept: a resumed run asks again
            return Result(
                sample_id=sample_id,
                error=ans.why_unusable(rep.finish_reason, rep.max_tokens),
                explanation=explanation or ans.reason,
                usage=rep.usage,
                extra={**extra, "refusal": ans.refusal, "echo": ans.echo, "reply": rep.text},
            )
        result = Result(sample_id=sample_id, score=float(score), explanation=explanation, usage=rep.usage, extra=extra)
        return self.decide(result, UNIT, verdict=ans.anomalous)

    def _predict_regions(self, samples: Sequence[Sample]) -> list[Result]:
        from genad.engines.lmm.text2seg import localize

        client = self.client

        def one(s: Sample) -> Result:
            if not isinstance(s, ImageSample):
                return Result(sample_id=s.id, error=f"detector 'lmm' reads images, not {s.modality}")
            t0 = time.perf_counter()
            try:
                refs = [r.load() for r in self._refs_for(s)]
                r = localize(
                    client,
                    s.load(),
                    method=self.regions or "grid",
                    n=self.n_regions,
                    class_name=self.class_name or s.class_name,
                    knowledge=self.knowledge_for(s),
                    references=refs,
                    sample_id=s.id,
                    threshold=self.threshold,
                    calibration=self.calibrated(UNIT),
                    json_answer=client.config.json_mode != "off",
                    max_tokens=self.max_tokens,
                )
            except GenadError as e:
                if is_stop(e):
                    raise
                return Result(sample_id=s.id, error=str(e))
            if r.visual_prompt is not None:
                r.visual_prompt.image = None  # large; save_visual_prompt re-draws it from the labels
            r.extra["transcript"] = [{"role": "assistant", "content": r.extra.get("answer", "")}]
            r.timings.setdefault("lmm", time.perf_counter() - t0)
            return r

        def safe(s: Sample) -> Result | GenadError:
            try:
                return one(s)
            except GenadError as e:  # a stop (budget, server, configuration): kept for below
                return e

        with ThreadPoolExecutor(max_workers=client.config.max_concurrency) as pool:
            got = list(pool.map(safe, samples))
        stop = next((g for g in got if isinstance(g, GenadError)), None)
        out = [g if isinstance(g, Result) else Result(sample_id=s.id, error=str(g)) for s, g in zip(samples, got)]
        if stop is not None:
            raise stop_with(stop, out)
        return out


def _answer_dict(a: Answer) -> dict[str, Any]:
    return {
        "score": a.score,
        "anomalous": a.anomalous,
        "defect_type": a.defect_type,
        "location": a.location,
        "reason": a.reason,
        "refusal": a.refusal,
        "region_scores": {int(k): v for k, v in a.region_scores.items()},
    }


def _explain(a: Answer) -> str | None:
    parts = []
    if a.defect_type:
        parts.append(f"defect: {a.defect_type}")
    if a.location:
        parts.append(f"location: {a.location}")
    if a.reason:
        parts.append(a.reason)
    return "; ".join(parts) or None


def transcript(messages: Sequence[dict[str, Any]], reply_text: str | None = None) -> list[dict[str, Any]]:
    """Messages as plain text for reports: each image becomes "<image N>" (no pixels, no base64)."""
    out = []
    n = 0
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            pieces = []
            for p in content:
                if p.get("type") == "image_url":
                    n += 1
                    pieces.append(f"<image {n}>")
                else:
                    pieces.append(str(p.get("text", "")))
            text = "\n".join(pieces)
        else:
            text = str(content)
        out.append({"role": m.get("role", "user"), "content": text})
    if reply_text is not None:
        out.append({"role": "assistant", "content": reply_text})
    return out
