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
from dataclasses import fields
from pathlib import Path
from typing import Any

from genad.detector import Detector
from genad.engines.lmm.config import LMMConfig
from genad.engines.lmm.parse import ANSWER_SCHEMA, Answer, parse_answer
from genad.engines.lmm.provider import BudgetExceeded, LMMClient, LMMReply, system
from genad.engines.lmm.templates import Templates, load_templates, normalise_variant
from genad.errors import ConfigError, GenadError
from genad.types import ImageSample, Knowledge, Result, Sample

_CONFIG_FIELDS = {f.name for f in fields(LMMConfig)}
# short names that read well on the command line (genad detect -d lmm -p budget=2)
_ALIASES = {"prompts": "prompts_dir", "budget": "budget_usd", "prices": "price_table",
            "concurrency": "max_concurrency", "rpm": "requests_per_minute"}


class LMMDetector(Detector):
    modalities = ("image",)
    zero_shot = True
    batch_size = 8

    def __init__(
        self,
        variant: str = "naive",
        domain: str = "industrial",
        class_name: str | None = None,
        normal_standards: str | None = None,
        defect_types: list[str] | str | None = None,
        threshold: float = 0.5,
        max_refs: int = 4,
        regions: str | None = None,
        n_regions: int | None = None,
        max_tokens: int | None = None,
        batch_size: int | None = None,
        config: LMMConfig | str | None = None,
        config_file: str | None = None,
        client: LMMClient | None = None,
        **settings: Any,
    ) -> None:
        settings = {_ALIASES.get(k, k): v for k, v in settings.items()}
        if isinstance(config, (str, Path)):  # -p config=FILE from the command line
            config, config_file = None, str(config)
        unknown = sorted(set(settings) - _CONFIG_FIELDS)
        if unknown:
            raise GenadError(
                f"unknown option(s) {', '.join(unknown)} for detector 'lmm': use variant, domain, "
                "class_name, normal_standards, defect_types, threshold, max_refs, regions, n_regions, "
                "max_tokens, batch_size, config_file or an LMM setting (model, base_url, ...)"
            )
        super().__init__(
            variant=variant, domain=domain, class_name=class_name, threshold=threshold,
            max_refs=max_refs, regions=regions, n_regions=n_regions,
            **{k: v for k, v in settings.items() if k != "api_key"},  # never echo the key
        )
        self.variant = normalise_variant(variant)
        self.domain = domain
        self.class_name = class_name
        if isinstance(defect_types, str):
            defect_types = [s.strip() for s in defect_types.split(",") if s.strip()]
        self.knowledge = Knowledge(normal_standards=normal_standards, defect_types=list(defect_types or []))
        self.threshold = float(threshold)
        self.max_refs = int(max_refs)
        if regions is not None and regions not in ("grid", "slic"):
            # "proposals" needs the embedded engine's map: that is detector "lmm+embedded"
            raise GenadError(f"regions must be grid or slic (or use detector 'lmm+embedded'), not {regions!r}")
        self.regions = regions
        self.n_regions = n_regions
        self.max_tokens = max_tokens
        if batch_size is not None:
            self.batch_size = int(batch_size)  # instance value shadows the class default
        self._config = config
        self._config_file = config_file
        self._settings = settings
        self._client = client
        self._templates: Templates | None = None
        self.references: list[ImageSample] = []
        self._ref_parts: dict[str, dict[str, Any]] = {}

    # -- set-up
    @property
    def client(self) -> LMMClient:
        if self._client is None:
            from genad.engines.lmm.provider import client_from

            self._client = client_from(self._config, self._config_file, self._settings)
        return self._client

    @property
    def templates(self) -> Templates:
        if self._templates is None:
            self._templates = load_templates(self.client.config.prompts_dir)
        self._templates.domain(self.domain)  # unknown domain: fail early, clearly
        return self._templates

    def fit(self, normal_samples: Sequence[Sample]) -> LMMDetector:
        refs = [s for s in normal_samples if isinstance(s, ImageSample)]
        if len(refs) != len(normal_samples):
            raise GenadError("detector 'lmm' takes image references only")
        self.references = list(refs)
        self._ref_parts = {}
        self.fitted_ = True
        return self

    def _refs_for(self, sample: Sample) -> list[ImageSample]:
        same = [r for r in self.references if r.class_name == sample.class_name]
        return (same or self.references)[: self.max_refs]

    def _ref_part(self, ref: ImageSample) -> dict[str, Any]:
        # encode each reference once, not once per sample
        if ref.id not in self._ref_parts:
            self._ref_parts[ref.id] = self.client.user(ref.load())["content"][0]
        return self._ref_parts[ref.id]

    def _knowledge(self, sample: Sample) -> Knowledge:
        k = sample.knowledge
        if k is not None and not k.is_empty():
            return k
        return self.knowledge

    # -- prompts
    def build_messages(self, sample: ImageSample) -> tuple[list[dict[str, Any]], dict[str, Any] | None, dict[str, Any]]:
        """(messages, schema, info) for one sample; info records the prompt choices."""
        refs = self._refs_for(sample)
        domain = str(sample.meta.get("domain") or self.domain)
        class_name = self.class_name or sample.class_name
        prompt, note = self.templates.render(domain, self.variant, len(refs), class_name, self._knowledge(sample))
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
        info = {"variant": self.variant, "domain": domain, "class_name": class_name,
                "references": [r.id for r in refs], "prompt": prompt}
        if note:
            info["prompt_note"] = note
        return msgs, (ANSWER_SCHEMA if json_answer else None), info

    # -- scoring
    def predict(self, samples: Sequence[Sample]) -> list[Result]:
        client = self.client
        self.templates  # an unknown domain or a bad prompts folder fails here, once
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
        stop: Exception | None = None
        for (i, info, msgs), rep in zip(owners, replies, strict=True):
            sid = samples[i].id
            if isinstance(rep, (BudgetExceeded, ConfigError)):
                stop = stop or rep
                results[i] = Result(sample_id=sid, error=str(rep))
            elif isinstance(rep, Exception):
                results[i] = Result(sample_id=sid, error=str(rep) if isinstance(rep, GenadError) else f"{type(rep).__name__}: {rep}")
            else:
                results[i] = self._to_result(sid, rep, info, msgs)
                results[i].timings["lmm"] = elapsed
        if stop is not None:
            # every answer paid for so far is cached: a re-run after fixing this costs nothing for them
            raise stop
        return [r for r in results if r is not None]

    def _to_result(self, sample_id: str, rep: LMMReply, info: dict[str, Any], msgs: list[dict[str, Any]]) -> Result:
        ans = parse_answer(rep.text, rep.data)
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
            why = "the model refused to answer" if ans.refusal else "no usable score in the model's answer"
            return Result(sample_id=sample_id, error=why, explanation=explanation or ans.reason,
                          usage=rep.usage, extra={**extra, "refusal": ans.refusal})
        decision = ans.anomalous if ans.anomalous is not None else score >= self.threshold
        return Result(sample_id=sample_id, score=float(score), decision=bool(decision), explanation=explanation,
                      threshold=self.threshold, usage=rep.usage, extra=extra)

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
                    client, s.load(), method=self.regions or "grid", n=self.n_regions,
                    class_name=self.class_name or s.class_name, knowledge=self._knowledge(s),
                    references=refs, sample_id=s.id, threshold=self.threshold,
                    json_answer=client.config.json_mode != "off", max_tokens=self.max_tokens,
                )
            except (BudgetExceeded, ConfigError):
                raise
            except GenadError as e:
                return Result(sample_id=s.id, error=str(e))
            r.extra.pop("som_image", None)  # large; E's save_visual_prompt re-renders when asked
            r.extra["transcript"] = [{"role": "assistant", "content": r.extra.get("answer", "")}]
            r.timings.setdefault("lmm", time.perf_counter() - t0)
            return r

        with ThreadPoolExecutor(max_workers=client.config.max_concurrency) as pool:
            return list(pool.map(one, samples))


def _answer_dict(a: Answer) -> dict[str, Any]:
    return {
        "score": a.score, "anomalous": a.anomalous, "defect_type": a.defect_type,
        "location": a.location, "reason": a.reason, "refusal": a.refusal,
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
