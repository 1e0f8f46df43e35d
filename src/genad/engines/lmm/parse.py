"""Turn whatever a model answered into an Answer: JSON, the GPT-4V-AD text format, or prose.

    parse_answer('image anomaly score: 0.9; region 1: 0.9; region 3: 0.7.')
    -> Answer(score=0.9, anomalous=None, region_scores={1: 0.9, 3: 0.7}, ...)

Nothing is invented: when no score is stated, `score` stays None; a plain yes/no sets only
`anomalous` (Answer.effective_score then gives 1.0/0.0, and says so in `score_source`). A refusal
keeps the model's words in `reason` and sets `refusal`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Answer:
    score: float | None = None
    anomalous: bool | None = None
    region_scores: dict[int, float] = field(default_factory=dict)
    defect_type: str | None = None
    location: str | None = None
    reason: str | None = None
    refusal: bool = False
    ranges: list[tuple[int, int]] = field(default_factory=list)

    @property
    def effective_score(self) -> float | None:
        """The stated score, else 1.0/0.0 from a yes/no decision, else None."""
        if self.score is not None:
            return self.score
        if self.anomalous is not None:
            return 1.0 if self.anomalous else 0.0
        return None

    @property
    def score_source(self) -> str:
        if self.score is not None:
            return "score"
        return "decision" if self.anomalous is not None else "none"

    @property
    def usable(self) -> bool:
        return self.effective_score is not None


# JSON schema the detector asks for (servers with structured output follow it exactly)
ANSWER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "anomalous": {"type": "boolean"},
        "anomaly_score": {"type": "number", "minimum": 0, "maximum": 1},
        "defect_type": {"type": ["string", "null"]},
        "location": {"type": ["string", "null"]},
        "reason": {"type": "string"},
        "region_scores": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"region": {"type": "integer"}, "score": {"type": "number"}},
                "required": ["region", "score"],
            },
        },
    },
    "required": ["anomalous", "anomaly_score", "reason"],
}

_SCORE_KEYS = (
    "anomaly_score",
    "image_anomaly_score",
    "score",
    "anomaly score",
    "image anomaly score",
    "probability",
    "confidence_anomalous",
)
_BOOL_KEYS = ("anomalous", "is_anomalous", "anomaly", "has_anomaly", "defective", "is_defective", "abnormal")
_REASON_KEYS = ("reason", "explanation", "rationale", "description", "analysis")
_DEFECT_KEYS = ("defect_type", "defect", "anomaly_type", "type")
_LOCATION_KEYS = ("location", "where", "position")

_NUM = r"([-+]?\d+(?:\.\d+)?)"
_IMAGE_SCORE_RE = re.compile(
    r"(?:image\s+)?anomaly[\s_]+score\s*\"?\s*(?:is|of|=|:)?\s*\"?\s*" + _NUM + r"\s*(%|/\s*(?:10|100)\b)?",
    re.IGNORECASE,
)
_PLAIN_SCORE_RE = re.compile(r"\bscore\s*\"?\s*(?:is|of|=|:)\s*\"?\s*" + _NUM + r"\s*(%|/\s*(?:10|100)\b)?", re.I)
_REGION_RE = re.compile(r"\b(?:region|mask|area)\s*#?\s*(\d+)\s*\"?\s*[:=]\s*\"?\s*" + _NUM, re.IGNORECASE)
_FIELD_RE = {
    "defect_type": re.compile(
        r"(?:defect|anomaly)[\s_]+type\s*\"?\s*[:=]\s*\"?([^\n\";]+?)(?=\.\s|[\n\";]|\.?$)", re.I
    ),
    "location": re.compile(r"\blocation\s*\"?\s*[:=]\s*\"?([^\n\";]+?)(?=\.\s|[\n\";]|\.?$)", re.I),
    "reason": re.compile(r"\b(?:reason|explanation)\s*\"?\s*[:=]\s*\"?([^\n\"]+)", re.I),
}
_BOOL_FIELD_RE = re.compile(
    r"\b(?:anomalous|is_anomalous|anomaly|defective)\"?\s*[:=]\s*\"?(true|false|yes|no)\b", re.I
)
_RANGE_PAIR_RE = re.compile(r"\[\s*(\d+)\s*,\s*(\d+)\s*\]|\b(\d+)\s*(?:-|–|to)\s*(\d+)\b")

_REFUSAL_RE = re.compile(
    r"\b(i'?m sorry|i am sorry|i can(?:no|')t (?:help|assist|provide|analy[sz]e|determine|do that)|"
    r"i am (?:not able|unable) to|i'?m (?:not able|unable) to|unable to (?:assist|help|provide|analy[sz]e)|"
    r"as an ai\b|i can ?not assist|not able to provide (?:a )?(?:medical|diagnos))",
    re.IGNORECASE,
)
_DEFECT_WORDS = (
    r"(?:anomal\w*|defect\w*|abnormal\w*|damage\w*|flaw\w*|crack\w*|hole\w*|scratch\w*|contaminat\w*|"
    r"irregular\w*|lesion\w*|tumou?r\w*|hemorrhage\w*|haemorrhage\w*|pneumonia|fracture\w*|missing|broken|"
    r"bent|misplaced|dent\w*|stain\w*|deform\w*)"
)
_NEG_RE = re.compile(
    r"\b(?:no|not|nor|without|free (?:of|from)|absence of|lacks?|none|neither|isn'?t|aren'?t|doesn'?t|don'?t)\b"
    r"[^.;!?]{0,60}?\b" + _DEFECT_WORDS,
    re.IGNORECASE,
)
_NORMAL_RE = re.compile(
    r"\b(?:appears?|looks?|seems?|is|are|image is)\s+(?:to be\s+)?(?:completely\s+|entirely\s+|perfectly\s+)?"
    r"(?:normal|intact|flawless|defect-free|fine|good|healthy|unremarkable)\b",
    re.IGNORECASE,
)
_POS_RE = re.compile(
    r"\b(?:there (?:is|are|appears? to be|seems? to be)|contains?|shows?|exhibits?|has|have|displays?|"
    r"reveals?|detected|visible|presents?|indicat\w*|suggest\w*|evidence of|signs? of)\b[^.;!?]{0,80}?\b"
    + _DEFECT_WORDS,
    re.IGNORECASE,
)


def extract_json(text: str) -> dict[str, Any] | None:
    """The first JSON object in `text` (code fences, leading prose and trailing commas tolerated)."""
    if not text:
        return None
    candidates = [m.group(1) for m in re.finditer(r"```(?:json)?\s*(\{.*?\})\s*```", text, re.S)]
    start = text.find("{")
    if start >= 0:
        end = text.rfind("}")
        if end > start:
            candidates.append(text[start : end + 1])
    for c in candidates:
        for s in (c, re.sub(r",\s*([}\]])", r"\1", c)):
            try:
                obj = json.loads(s)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                return obj
    return None


def parse_answer(text: str, data: dict[str, Any] | None = None) -> Answer:
    """Read a model's answer. `data` is the already-parsed JSON object if there is one."""
    text = text or ""
    if data is None:
        data = extract_json(text)
    ans = Answer()
    if data:
        _from_json(ans, data)
    _from_text(ans, text, had_json=bool(data))
    if ans.score is not None:
        ans.score = float(min(1.0, max(0.0, ans.score)))
    for k, v in list(ans.region_scores.items()):
        ans.region_scores[k] = float(min(1.0, max(0.0, v)))
    if ans.score is None and ans.anomalous is None and not ans.region_scores and not ans.ranges:
        ans.refusal = bool(_REFUSAL_RE.search(text))
    if ans.reason is None and text.strip() and not data:
        ans.reason = text.strip()[:2000]
    return ans


def _get(d: dict[str, Any], keys: tuple[str, ...]) -> Any:
    low = {str(k).lower().strip(): v for k, v in d.items()}
    for k in keys:
        if k in low and low[k] is not None:
            return low[k]
    return None


def _to_float(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        m = re.search(_NUM + r"\s*(%|/\s*(?:10|100)\b)?", v)
        if m:
            return _normalise(float(m.group(1)), m.group(2))
    return None


def _to_bool(v: Any) -> bool | None:
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, float)):
        return bool(v)
    if isinstance(v, str):
        s = v.strip().lower()
        if s in ("yes", "true", "anomalous", "abnormal", "defective", "1", "y"):
            return True
        if s in ("no", "false", "normal", "good", "0", "n", "ok"):
            return False
    return None


def _normalise(x: float, unit: str | None) -> float:
    unit = (unit or "").replace(" ", "")
    if unit == "%" or unit == "/100":
        return x / 100.0
    if unit == "/10":
        return x / 10.0
    if x > 1.0 and x <= 10.0:  # "8" on an implied 0-10 scale
        return x / 10.0
    if x > 10.0 and x <= 100.0:
        return x / 100.0
    return x


def _from_json(ans: Answer, d: dict[str, Any]) -> None:
    s = _get(d, _SCORE_KEYS)
    f = _to_float(s)
    if f is not None:
        ans.score = _normalise(f, None)
    ans.anomalous = _to_bool(_get(d, _BOOL_KEYS))
    for name, keys in (("defect_type", _DEFECT_KEYS), ("location", _LOCATION_KEYS), ("reason", _REASON_KEYS)):
        v = _get(d, keys)
        if v is not None and str(v).strip() and str(v).strip().lower() not in ("none", "null", "n/a"):
            setattr(ans, name, str(v).strip())
    regions = _get(d, ("region_scores", "regions", "region"))
    if isinstance(regions, dict):
        for k, v in regions.items():
            m = re.search(r"\d+", str(k))
            fv = _to_float(v)
            if m and fv is not None:
                ans.region_scores[int(m.group())] = _normalise(fv, None)
    elif isinstance(regions, list):
        for i, r in enumerate(regions, start=1):
            if isinstance(r, dict):
                idx = _get(r, ("region", "index", "id", "number", "mask"))
                fv = _to_float(_get(r, ("score", "anomaly_score", "value")))
                m = re.search(r"\d+", str(idx)) if idx is not None else None
                if fv is not None:
                    ans.region_scores[int(m.group()) if m else i] = _normalise(fv, None)
            elif (fv := _to_float(r)) is not None:
                ans.region_scores[i] = _normalise(fv, None)
    rng = _get(d, ("ranges", "anomalous_ranges", "anomaly_ranges", "intervals"))
    if isinstance(rng, list):
        for r in rng:
            if isinstance(r, (list, tuple)) and len(r) == 2:
                a, b = _to_float(r[0]), _to_float(r[1])
                if a is not None and b is not None:
                    ans.ranges.append((int(a), int(b)))
            elif isinstance(r, dict):
                a = _to_float(_get(r, ("start", "begin", "from")))
                b = _to_float(_get(r, ("end", "stop", "to")))
                if a is not None and b is not None:
                    ans.ranges.append((int(a), int(b)))


def _from_text(ans: Answer, text: str, had_json: bool) -> None:
    if ans.score is None:
        m = _IMAGE_SCORE_RE.search(text) or _PLAIN_SCORE_RE.search(text)
        if m:
            ans.score = _normalise(float(m.group(1)), m.group(2))
    if not ans.region_scores:
        for m in _REGION_RE.finditer(text):
            ans.region_scores[int(m.group(1))] = _normalise(float(m.group(2)), None)
    for name, rx in _FIELD_RE.items():
        if getattr(ans, name) is None:
            m = rx.search(text)
            if m:
                val = m.group(1).strip().rstrip(".,").strip()
                if val and val.lower() not in ("none", "null", "n/a"):
                    setattr(ans, name, val)
    if ans.anomalous is None and not had_json:
        m = _BOOL_FIELD_RE.search(text)
        ans.anomalous = m.group(1).lower() in ("true", "yes") if m else decide_yes_no(text)
    if not ans.ranges and not had_json:
        m = re.search(r"\branges?\b\s*[:=]?(.*)", text, re.I | re.S)
        if m:
            for pm in _RANGE_PAIR_RE.finditer(m.group(1)[:500]):
                a, b = (pm.group(1), pm.group(2)) if pm.group(1) else (pm.group(3), pm.group(4))
                ans.ranges.append((int(a), int(b)))


def decide_yes_no(text: str) -> bool | None:
    """A yes/no decision from prose, or None if the text does not commit either way."""
    t = text.strip()
    if not t:
        return None
    first = re.match(r"\W*(yes|no)\b", t, re.IGNORECASE)
    if first:
        return first.group(1).lower() == "yes"
    # judge the first sentence that commits; negations first ("no visible defects" is normal)
    for sentence in re.split(r"(?<=[.!?])\s+|\n+", t):
        if _REFUSAL_RE.search(sentence) and not _POS_RE.search(sentence):
            continue
        if _NEG_RE.search(sentence) or _NORMAL_RE.search(sentence):
            return False
        if _POS_RE.search(sentence):
            return True
    return None
