"""Turn whatever a model answered into an Answer: JSON, the GPT-4V-AD text format, or prose, in
the styles real models write (GPT-4o, Qwen2.5-VL, InternVL, LLaVA, reasoning models).

    parse_answer('image anomaly score: 0.9; region 1: 0.9; region 3: 0.7.')
    -> Answer(score=0.9, anomalous=None, region_scores={1: 0.9, 3: 0.7}, ...)

What it reads, in order:
1. Reasoning is set aside: `<think>...</think>` (and `<thinking>`, `<reasoning>`) blocks, or all
   before a closing tag whose opening tag the server stripped. Only the final answer counts; an
   answer that is all reasoning (cut off before it ended) has nothing to read.
2. Echoes are not answers: with the prompt given, sentences copied from it are dropped, and a
   JSON object equal to one of the prompt's own examples, or holding placeholders ("X", "...",
   "true or false"), says nothing.
3. JSON (fenced, bare, a top-level list of regions, trailing commas): its fields win.
4. Prose: markdown emphasis and headings are removed; the LAST stated image anomaly score wins
   ("anomaly score: **0.8**", "I would rate the anomaly score as 0.85", "probability of an
   anomaly: 90%"); scales are normalised to 0..1 (85%, 0,85, 4/5, 7 out of 10, "1 on a 1-10
   scale" = (x - lo) / (hi - lo), a bare 1 < x <= 10 as tenths); region scores in every common
   form ("region 3: 0.8", "[3]: 0.8", "#3: 0.75", "Region 3 - 0.8", "region 3 (0.8)",
   "regions 3-5: 0.8", "regions 2 and 7: 0.6", markdown tables), never a measurement
   ("area 2: 5 mm"); the verdict from explicit labels ("Answer: Abnormal.", "**Defective**",
   a leading Yes/No) over whole-object statements ("the tile is not normal", "no visible
   defects") over defect mentions ("there is a scratch"), the last of the strongest kind
   winning; question-restating clauses ("To determine whether the image contains anomalies"),
   hedges ("it might be a scratch") and remarks on the rest of the image are not verdicts.

Nothing is invented: when no score is stated, `score` stays None; a plain yes/no sets only
`anomalous` (Answer.effective_score then gives 1.0/0.0, and says so in `score_source`). A refusal
keeps the model's words in `reason` and sets `refusal`; an answer with neither a score nor a
verdict is not `usable`, and callers report it as "no usable score" with the text kept verbatim.
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
    echo: bool = False  # the answer only copied the prompt (its question, example or placeholders)
    reasoning_only: bool = False  # nothing after the reasoning (cut off before the answer)

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

    def why_unusable(self, finish_reason: str | None = None, max_tokens: int | None = None) -> str:
        """One line on why there is no score (for Result.error)."""
        if finish_reason == "length" or self.reasoning_only:
            cut = f" at max_tokens={max_tokens}" if max_tokens else ""
            return f"no usable score: the answer was cut off{cut} (raise --max-tokens / -p max_tokens)"
        if self.refusal:
            return "no usable score: the model refused to answer"
        if self.echo:
            return "no usable score: the model only repeated the prompt or its example"
        return "no usable score in the model's answer"


# JSON schema the detector asks for (servers with structured output follow it exactly). The reason
# comes first: a model that writes its reason before its score scores better (and structured
# output generates the keys in this order).
ANSWER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "reason": {"type": "string"},
        "defect_type": {"type": ["string", "null"]},
        "location": {"type": ["string", "null"]},
        "anomalous": {"type": "boolean"},
        "anomaly_score": {"type": "number", "minimum": 0, "maximum": 1},
        "region_scores": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"region": {"type": "integer"}, "score": {"type": "number"}},
                "required": ["region", "score"],
            },
        },
    },
    "required": ["reason", "anomalous", "anomaly_score"],
}

_SCORE_KEYS = (
    "anomaly_score",
    "image_anomaly_score",
    "score",
    "anomaly score",
    "image anomaly score",
    "anomaly_probability",
    "probability",
    "confidence_anomalous",
)
_BOOL_KEYS = ("anomalous", "is_anomalous", "anomaly", "has_anomaly", "defective", "is_defective", "abnormal")
_REASON_KEYS = ("reason", "explanation", "rationale", "description", "analysis")
_DEFECT_KEYS = ("defect_type", "defect", "anomaly_type", "type")
_LOCATION_KEYS = ("location", "where", "position")

# --------------------------------------------------------------------------- numbers and scales

_N = r"\d+(?:[.,]\d+)?"  # 0.85, 85, 0,85 (decimal comma)
_UNITS = r"(?:mm|cm|µm|um|nm|px|pixels?|m|in|inch(?:es)?|degrees?|°|ms|s|sec|seconds?|hz|kb|mb)\b"
# a number and its scale: 85% | 4/5 | 7 out of 10 | 3 (on a scale of 1 to 5) | 1 on a 1-10 scale
_VALUE = (
    r"(?P<x>[-+]?" + _N + r")(?!\d)"
    r"(?:\s*(?P<pct>%|percent\b)"
    r"|\s*(?:/|out of)\s*(?P<of>" + _N + r")"
    r"|[^.;\n\d]{0,24}?\bscale\s+(?:of|from)\s+(?P<lo>\d+)\s*(?:-|–|to)\s*(?P<hi>\d+)"
    r"|[^.;\n\d]{0,12}?\b(?:on\s+)?an?\s+(?P<lo2>\d+)\s*(?:-|–|to)\s*(?P<hi2>\d+)(?:\s*-?\s*point)?\s+scale"
    r"|\s*\((?P<lo3>\d+)\s*(?:-|–|to)\s*(?P<hi3>\d+)\)"
    r")?"
)
_VALUE_RE = re.compile(_VALUE, re.I)


def _num(s: str) -> float:
    return float(s.replace(",", "."))


def scale_value(m: re.Match[str], *, bare_tenths: bool = True) -> float | None:
    """The 0..1 value of a _VALUE match, or None when it is not a score (out of every scale)."""
    x = _num(m.group("x"))
    g = m.groupdict()
    if g.get("pct"):
        v = x / 100.0
    elif g.get("of"):
        top = _num(g["of"])
        if top <= 0:
            return None
        v = x / top
    elif any(g.get(k) for k in ("lo", "lo2", "lo3")):
        lo, hi = next((int(g[a]), int(g[b])) for a, b in (("lo", "hi"), ("lo2", "hi2"), ("lo3", "hi3")) if g.get(a))
        if hi <= lo:
            return None
        v = (x - lo) / (hi - lo)
    elif x <= 1.0:
        v = x
    elif bare_tenths and x <= 10.0:
        v = x / 10.0  # "8" on an implied 0-10 scale
    elif bare_tenths and x <= 100.0:
        v = x / 100.0
    else:
        return None
    if v > 1.0 + 1e-9:
        return None
    return float(min(1.0, max(0.0, v)))


def _normalise(x: float, unit: str | None) -> float:
    """A JSON number (or a number with its unit) as 0..1."""
    unit = (unit or "").replace(" ", "")
    if unit in ("%", "/100"):
        return x / 100.0
    if unit == "/10":
        return x / 10.0
    if 1.0 < x <= 10.0:
        return x / 10.0
    if 10.0 < x <= 100.0:
        return x / 100.0
    return x


# --------------------------------------------------------------------------- reasoning, echoes

_THINK_TAGS = ("think", "thinking", "reasoning", "thought")
_THINK_BLOCK = re.compile(r"<(" + "|".join(_THINK_TAGS) + r")>.*?</\1>", re.S | re.I)
_THINK_CLOSE = re.compile(r"</(?:" + "|".join(_THINK_TAGS) + r")>", re.I)
_THINK_OPEN = re.compile(r"<(?:" + "|".join(_THINK_TAGS) + r")>", re.I)


def strip_reasoning(text: str) -> tuple[str, bool]:
    """(the final answer, whether it was all reasoning): closed reasoning blocks removed; with a
    closing tag left (its opening tag stripped by the server), what follows the last one; with
    an opening tag never closed (cut off), nothing."""
    t = _THINK_BLOCK.sub(" ", text)
    closes = list(_THINK_CLOSE.finditer(t))
    if closes:
        t = t[closes[-1].end() :]
    opened = _THINK_OPEN.search(t)
    if opened:
        before = t[: opened.start()]
        return before, not before.strip()
    return t, False


_PLACEHOLDER = re.compile(
    r"^\s*(?:\.{2,}|…|[a-z]|[A-Z]|<[^<>]*>|\[[^\[\]]*\]|\{[^{}]*\}|true or false|true\|false|yes or no|"
    r"number|string|text|score|reason|null or .*|0(?:\.0)?\s*(?:-|–|to)\s*1(?:\.0)?|\.\.\..*)\s*$",
    re.I,
)


def is_placeholder(v: Any) -> bool:
    """A template value copied instead of an answer: "...", "X", "<index>", "true or false"..."""
    return isinstance(v, str) and bool(_PLACEHOLDER.match(v))


def _norm_text(s: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", s.lower()).strip()


def remove_echo(text: str, prompt: str | None) -> tuple[str, bool]:
    """`text` without the sentences it copied from `prompt` (at least 6 words each, compared
    without case or punctuation), and whether it held nothing but such copies."""
    if not prompt or not text.strip():
        return text, False
    p = " " + _norm_text(prompt) + " "
    kept: list[str] = []
    dropped = False
    for piece in re.split(r"(?<=[.!?])\s+|\n+", text):
        n = _norm_text(piece)
        if len(n.split()) >= 6 and f" {n} " in p:
            dropped = True
            continue
        kept.append(piece)
    rest = "\n".join(kept)
    # nothing left but a stray word or two (small models add garbage tokens to an echo)
    return rest, dropped and len(re.findall(r"[a-z0-9]+", rest, re.I)) < 3


def _json_objects(text: str) -> list[Any]:
    """Every JSON object written in `text` (for comparing an answer with a prompt's examples)."""
    out = []
    dec = json.JSONDecoder()
    i = text.find("{")
    while 0 <= i < len(text):
        try:
            obj, end = dec.raw_decode(text, i)
            out.append(obj)
            i = text.find("{", end)
        except json.JSONDecodeError:
            i = text.find("{", i + 1)
    return out


def is_echo(data: Any, prompt: str | None) -> bool:
    """Whether a JSON answer is no answer: a copy of one of the prompt's own examples, or a
    template whose every value is a placeholder."""
    return data is not None and (_is_example_copy(data, prompt) or _all_placeholders(data))


def _is_example_copy(data: Any, prompt: str | None) -> bool:
    if prompt is None or data is None:
        return False
    return any(data == ex for ex in _json_objects(prompt) if isinstance(ex, (dict, list)))


# --------------------------------------------------------------------------- JSON


def extract_json(text: str) -> dict[str, Any] | None:
    """The first JSON object in `text` (code fences, leading prose and trailing commas tolerated);
    a top-level list of objects becomes {"regions": [...]} (models list regions that way)."""
    got = extract_json_value(text)
    if isinstance(got, list):
        return {"regions": got} if got and all(isinstance(x, dict) for x in got) else None
    return got


def extract_json_value(text: str) -> dict[str, Any] | list[Any] | None:
    if not text:
        return None
    candidates = [m.group(1) for m in re.finditer(r"```(?:json|JSON)?\s*([\[{].*?[\]}])\s*```", text, re.S)]
    spans = []
    for open_, close in (("{", "}"), ("[", "]")):
        start = text.find(open_)
        if start >= 0:
            end = text.rfind(close)
            if end > start:
                spans.append((start, text[start : end + 1]))
    candidates += [c for _, c in sorted(spans)]  # the outermost structure first
    for c in candidates:
        for s in (c, re.sub(r",\s*([}\]])", r"\1", c)):
            try:
                obj = json.loads(s)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, (dict, list)):
                return obj
        try:  # the first complete object of several ("{...} {...}")
            obj, _ = json.JSONDecoder().raw_decode(c)
            if isinstance(obj, (dict, list)):
                return obj
        except json.JSONDecodeError:
            pass
    return None


# --------------------------------------------------------------------------- the answer


def parse_answer(text: str, data: dict[str, Any] | None = None, *, prompt: str | None = None) -> Answer:
    """Read a model's answer. `data`: the already-parsed JSON object if there is one. `prompt`:
    the text the model was asked (its copies and its examples are not answers)."""
    text = text or ""
    final, reasoning_only = strip_reasoning(text)
    ans = Answer(reasoning_only=reasoning_only)
    final, echoed = remove_echo(final, prompt)
    if data is None:
        data = extract_json(final)
    elif text and text.strip() != final.strip():
        data = extract_json(final)  # a structured answer inside a reasoning model's text
    if data is not None and (_is_example_copy(data, prompt) or _all_placeholders(data)):
        data, echoed = None, True
        final = _strip_json(final)
    if data:
        _from_json(ans, data)
    prose = clean_markdown(_strip_json(final) if data else final)
    prose, placeholders = _PLACEHOLDER_TOKEN.subn(" ", prose)  # "<true or false>", "<0 to 1>"
    _from_text(ans, prose, had_json=bool(data))
    if ans.score is not None:
        ans.score = float(min(1.0, max(0.0, ans.score)))
    for k, v in list(ans.region_scores.items()):
        ans.region_scores[k] = float(min(1.0, max(0.0, v)))
    if ans.score is None and ans.anomalous is None and not ans.region_scores and not ans.ranges:
        ans.refusal = bool(_REFUSAL_RE.search(prose))
        ans.echo = echoed or placeholders > 0 or _only_placeholders(prose)
    if ans.reason is None and final.strip() and not data and not ans.echo:
        ans.reason = final.strip()[:2000]
    return ans


# a template's placeholder in angle brackets (reasoning tags are removed before this)
_PLACEHOLDER_TOKEN = re.compile(r"<[^<>\n]{1,40}>")


def _strip_json(text: str) -> str:
    """`text` without fenced code and without its outermost {...} block (the JSON was read)."""
    t = re.sub(r"```.*?```", " ", text, flags=re.S)
    a, b = t.find("{"), t.rfind("}")
    if 0 <= a < b:
        t = t[:a] + " " + t[b + 1 :]
    return t


def _all_placeholders(d: Any) -> bool:
    """A JSON answer whose every leaf is a placeholder or missing (a copied template)."""
    leaves: list[Any] = []

    def walk(v: Any) -> None:
        if isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)
        else:
            leaves.append(v)

    walk(d)
    scored = [v for v in leaves if v is not None]
    return bool(scored) and all(is_placeholder(v) for v in scored)


def _only_placeholders(prose: str) -> bool:
    """The answer-format line copied with its placeholders ("image anomaly score: X; defect type: T")."""
    fields = re.findall(r"[:=]\s*([^;\n,.]*)", prose)
    return bool(fields) and all(is_placeholder(f.strip()) or not f.strip() for f in fields)


def _get(d: dict[str, Any], keys: tuple[str, ...]) -> Any:
    low = {str(k).lower().strip(): v for k, v in d.items()}
    for k in keys:
        if k in low and low[k] is not None and not is_placeholder(low[k]):
            return low[k]
    return None


def _to_float(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return _normalise(float(v), None)
    if isinstance(v, str) and not is_placeholder(v):
        m = _VALUE_RE.search(v)
        if m:
            return scale_value(m)
    return None


def _to_bool(v: Any) -> bool | None:
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, float)):
        return bool(v)
    if isinstance(v, str):
        s = v.strip().lower().rstrip(".")
        if s in ("yes", "true", "anomalous", "abnormal", "defective", "1", "y", "anomaly", "defect", "real defect"):
            return True
        if s in ("no", "false", "normal", "good", "0", "n", "ok", "not anomalous", "not defective", "no defect"):
            return False
        if s in ("false positive", "not a defect", "none"):
            return False
    return None


def _flatten(d: dict[str, Any]) -> dict[str, Any]:
    """Nested objects' keys raised to the top ({"result": {"anomalous": ...}}); the outer win, and
    a nested object's "type" becomes "<its key>_type" ({"defect": {"type": "dent"}})."""
    out = {k: v for k, v in d.items() if not isinstance(v, dict)}
    for k, v in d.items():
        if isinstance(v, dict) and str(k).lower() not in ("regions", "region_scores"):
            for k2, v2 in _flatten(v).items():
                key = f"{k}_type" if str(k2).lower() == "type" else k2
                out.setdefault(key, v2)
        elif isinstance(v, dict):
            out[k] = v
    return out


def _from_json(ans: Answer, d: dict[str, Any]) -> None:
    d = _flatten(d)
    ans.score = _to_float(_get(d, _SCORE_KEYS))
    ans.anomalous = _to_bool(_get(d, _BOOL_KEYS))
    for name, keys in (("defect_type", _DEFECT_KEYS), ("location", _LOCATION_KEYS), ("reason", _REASON_KEYS)):
        v = _get(d, keys)
        if v is not None and str(v).strip() and str(v).strip().lower() not in ("none", "null", "n/a"):
            setattr(ans, name, str(v).strip())
    regions = _get(d, ("region_scores", "regions", "region", "anomalous_regions"))
    if isinstance(regions, dict):
        for k, v in regions.items():
            m = re.search(r"\d+", str(k))
            fv = _to_float(v.get("score") if isinstance(v, dict) else v)
            if m and fv is not None:
                ans.region_scores[int(m.group())] = fv
    elif isinstance(regions, list):
        for i, r in enumerate(regions, start=1):
            if isinstance(r, dict):
                idx = _get(r, ("region", "index", "id", "number", "mask", "area"))
                fv = _to_float(_get(r, ("score", "anomaly_score", "value", "probability")))
                m = re.search(r"\d+", str(idx)) if idx is not None else None
                if fv is not None:
                    ans.region_scores[int(m.group()) if m else i] = fv
            elif isinstance(r, (int, float)) and not isinstance(r, bool):
                ans.region_scores[i] = _normalise(float(r), None)
    rng = _get(d, ("ranges", "anomalous_ranges", "anomaly_ranges", "intervals"))
    if isinstance(rng, list):
        for r in rng:
            if isinstance(r, (list, tuple)) and len(r) == 2:
                a, b = _plain(r[0]), _plain(r[1])
                if a is not None and b is not None:
                    ans.ranges.append((int(a), int(b)))
            elif isinstance(r, dict):
                a = _plain(_get(r, ("start", "begin", "from")))
                b = _plain(_get(r, ("end", "stop", "to")))
                if a is not None and b is not None:
                    ans.ranges.append((int(a), int(b)))


def _plain(v: Any) -> float | None:
    """A number as written (indices are not scores)."""
    if isinstance(v, bool):
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


# --------------------------------------------------------------------------- prose


def clean_markdown(text: str) -> str:
    """Prose without markdown emphasis, inline code, headings' hashes and bullet markers."""
    t = re.sub(r"(\*\*|__)(.*?)\1", r"\2", text, flags=re.S)
    t = re.sub(r"(?<![\w*])\*(?!\s)([^*\n]+?)\*(?!\w)", r"\1", t)
    t = t.replace("`", "")
    t = re.sub(r"^\s{0,3}#{1,6}\s+", "", t, flags=re.M)
    t = re.sub(r"^\s*(?:[-*•]|>)\s+", "", t, flags=re.M)
    return t


_SCORE_LABEL = re.compile(
    r"(?:\b(?:image\s+)?anomal(?:y|ous)[\s_-]*(?:score|rating|level|probability|likelihood)"
    r"|\banomaliewert\b"
    r"|\b(?:probability|likelihood|chance|confidence|certainty)\s+(?:of|that|in)\s+(?:an?\s+|the\s+)?(?:\w+\s+){0,3}?"
    r"(?:anomal\w*|defect\w*|abnormal\w*)"
    r"|\bdefect\s+(?:probability|likelihood|score)"
    r"|\b(?:overall\s+|final\s+)?score\b"
    r"|\brat(?:e|ing)\b"
    r"|\bi(?:'d| would)\s+(?:give|rate|score)\b)",
    re.I,
)
# what may stand between a score's label and its number
_SCORE_GAP = re.compile(
    r"^[\s:=*\"'()_→>-]*(?:(?:is|of|as|at|be|would|be|around|about|approximately|approx\.?|roughly|~|≈|"
    r"it|this|image|the|a|an|i|estimate[ds]?|say|give|rate|rated|would|be|high|low|medium|moderate|very|quite|"
    r"fairly|set|to|maybe|perhaps|put|at|assign(?:ed)?|gets?)[\s:=*\"'(),_→>-]*){0,8}$",
    re.I,
)
_LABEL_SCALE = re.compile(r"\s*\((?:from\s+)?(\d+(?:\.\d+)?)\s*(?:-|–|to)\s*(\d+(?:\.\d+)?)\)")
_REGION_WORD = re.compile(r"\b(?:regions?|areas?|masks?|segments?|zones?|cells?)\b|#\s*\d|\[\s*\d", re.I)


def stated_scores(text: str) -> list[tuple[int, float]]:
    """Every image anomaly score stated in prose, as (position, 0..1 value), in order."""
    out = []
    for lab in _SCORE_LABEL.finditer(text):
        before = text[max(0, lab.start() - 24) : lab.start()]
        if _REGION_WORD.search(before.split("\n")[-1]) and not re.search(r"image", lab.group(0), re.I):
            continue  # "region 3 score: 0.8" is a region's
        rest = text[lab.end() : lab.end() + 160]
        scale = _LABEL_SCALE.match(rest)  # "Score (0-1): 0.15", "score (1-10): 7"
        if scale:
            rest = rest[scale.end() :]
        m = _VALUE_RE.search(rest)
        if not m or not _SCORE_GAP.match(rest[: m.start()]):
            continue
        after = rest[m.end() :]
        if re.match(r"\s*" + _UNITS, after, re.I) and not m.group("pct"):
            continue  # a measurement
        if re.match(r"\s*(?:-|–|to)\s*\d", after) and not m.group("of"):
            continue  # "a 0-1 score", "score from 1 to 10": the scale, not the score
        v = scale_value(m)
        if scale and not any(m.group(k) for k in ("pct", "of", "lo", "lo2", "lo3")):
            lo, hi = _num(scale.group(1)), _num(scale.group(2))
            x = _num(m.group("x"))
            v = (x - lo) / (hi - lo) if hi > lo and lo <= x <= hi else None
        if v is not None:
            out.append((lab.start(), v))
    for m in re.finditer(r"(?<![\w.,/])(" + _N + r")\s*(?:/|out of)\s*(10|5|100)\b", text, re.I):
        # "I'd give it a 7/10", "4/5" without a label, in a sentence about scoring
        sentence = text[max(0, text.rfind(".", 0, m.start()) + 1) : m.end()]
        if re.search(r"\b(?:rat|scor|give|anomal|defect)", sentence, re.I):
            v = _num(m.group(1)) / float(m.group(2))
            if 0 <= v <= 1:
                out.append((m.start(), v))
    return sorted(out)


# a region head and the regions it names: "region 3", "regions 3-5", "regions 2 and 7", "#3", "[3]"
_HEAD = (
    r"(?:\b(?:regions?|areas?|masks?|segments?|zones?|cells?|superpixels?|marks?)[ \t]*[#:]?[ \t]*"
    r"(?P<ids>\d+(?:\s*(?:-|–|to|and|,|&|/)\s*\d+)*)"
    r"|#\s*(?P<hid>\d+)|\bR(?P<rid>\d+)\b(?=\s*[:=(])"
    r"|\[\s*(?P<bid>\d+)\s*\])"
)
_REGION_SCORE_RE = re.compile(
    _HEAD + r"(?:\s*(?:[:=]|[-–—]|\()\s*|\s+(?:(?:gets?|has|with|is|at|=)\s+)?(?:(?:a|an|the)\s+)?"
    r"(?:anomaly\s+)?(?:score|rating|probability)\s*(?:of|is|=|:)?\s*|\s+at\s+|"
    # "(region 8), which I would score 0.9"; "region 9 looks bent, so I'd give it 0.4"
    r"\)?[^\d.;:\n]{0,48}?\b(?:scored?|rated?|give|gets?|assign(?:ed)?)\b(?:\s+(?:it|this|them|a|an|at|of|as))*\s*)"
    r"(?:each\s+|score\s*[:=]?\s*|(?:anomal\w*|defect\w*|yes|suspicious)\s*[,(:-]?\s*)?"
    r"(?P<v>" + _N + r")(?!\d)\s*(?P<unit>%|/\s*\d+)?",
    re.I,
)


def head_ids(m: re.Match[str]) -> list[int]:
    """The region numbers a _HEAD match names ("3-5" -> 3, 4, 5; "2 and 7" -> 2, 7)."""
    for g in ("hid", "rid"):
        if m.group(g):
            return [int(m.group(g))]
    if m.group("bid"):
        return [int(m.group("bid"))]
    ids: list[int] = []
    for part in re.split(r"\s*(?:and|,|&|/)\s*", m.group("ids")):
        r = re.match(r"(\d+)\s*(?:-|–|to)\s*(\d+)$", part.strip())
        if r:
            a, b = int(r.group(1)), int(r.group(2))
            if a <= b and b - a <= 256:
                ids.extend(range(a, b + 1))
        elif part.strip().isdigit():
            ids.append(int(part.strip()))
    return ids


def region_scores_in(text: str) -> dict[int, float]:
    """Region scores written in prose or in a markdown table; measurements are not scores."""
    out: dict[int, float] = {}
    for m in _REGION_SCORE_RE.finditer(text):
        after = text[m.end() : m.end() + 12]
        unit = (m.group("unit") or "").replace(" ", "")
        if not unit and re.match(r"\s*" + _UNITS, after, re.I):
            continue  # "area 2: 5 mm"
        x = _num(m.group("v"))
        if unit == "%":
            v = x / 100.0
        elif unit.startswith("/"):
            v = x / float(unit[1:]) if float(unit[1:]) > 0 else 2.0
        else:
            v = x
        if not 0.0 <= v <= 1.0:
            continue  # not a probability
        for i in head_ids(m):
            out[i] = v
    for row in table_rows(text):
        idx, score = _cell(row, REGION_COLUMNS), None
        for k, cell in row.items():
            if re.match(SCORE_COLUMNS, k) and (score := _cell_value(cell)) is not None:
                break
        if idx is not None and score is not None:
            out[idx] = score
    return out


def table_rows(text: str) -> list[dict[str, str]]:
    """The rows of the markdown tables in `text`, as {lower-case header: cell}."""
    rows: list[dict[str, str]] = []
    header: list[str] | None = None
    for line in text.splitlines():
        s = line.strip()
        if not (s.startswith("|") or s.count("|") >= 2):
            header = None
            continue
        cells = [c.strip() for c in s.strip("|").split("|")]
        if all(re.fullmatch(r":?-{2,}:?", c) or not c for c in cells):
            continue
        if header is None:
            header = [c.lower() for c in cells]
            continue
        rows.append(dict(zip(header, cells)))
    return rows


#: markdown table columns: the region's number, its score
REGION_COLUMNS = ("region", "#", "id", "area", "mask", "segment", "no", "mark", "candidate", "number")
SCORE_COLUMNS = r"(?:score|anomaly score|anomaly|probability|likelihood|value|p\b)"


def _cell(row: dict[str, str], names: tuple[str, ...]) -> int | None:
    for k, v in row.items():
        if any(k == n or k.startswith(n) for n in names):
            m = re.search(r"\d+", v)
            return int(m.group()) if m else None
    return None


def _cell_value(v: str) -> float | None:
    m = _VALUE_RE.search(v)
    return scale_value(m, bare_tenths=False) if m else None


_FIELD_RE = {
    "defect_type": re.compile(
        r"(?:defect|anomaly)[\s_]+type\s*\"?\s*[:=]\s*\"?([^\n\";]+?)(?=\.\s|[\n\";]|\.?$)", re.I
    ),
    "location": re.compile(r"\blocation\s*\"?\s*[:=]\s*\"?([^\n\";]+?)(?=\.\s|[\n\";]|\.?$)", re.I),
    "reason": re.compile(r"\b(?:reason|explanation)\s*\"?\s*[:=]\s*\"?([^\n\"]+)", re.I),
}
_BOOL_FIELD_RE = re.compile(
    r"\b(?:anomalous|is_anomalous|anomaly|defective)\"?\s*[:=]\s*\"?(true|false|yes|no)\b"
    r"(?!\s*(?:or|\||/)\s*(?:true|false|yes|no)\b)",  # "true or false": the template, copied
    re.I,
)
_RANGE_PAIR_RE = re.compile(r"\[\s*(\d+)\s*,\s*(\d+)\s*\]|\b(\d+)\s*(?:-|–|to)\s*(\d+)\b")

_REFUSAL_RE = re.compile(
    r"\b(i'?m sorry|i am sorry|i can(?:no|')t (?:help|assist|provide|analy[sz]e|determine|do that|see|view|access)|"
    r"i am (?:not able|unable) to|i'?m (?:not able|unable) to|unable to (?:assist|help|provide|analy[sz]e|see|view)|"
    r"as an ai\b|as a (?:text|language)[- ]?(?:based )?(?:model|ai)|i can ?not assist|"
    r"not able to provide (?:a )?(?:medical|diagnos)|(?:no|cannot see (?:any|the)) image (?:was|is|has been) "
    r"(?:provided|attached|shared)|i (?:do not|don'?t) see (?:an?|any) image|"
    r"(?:image|picture|photo)s? (?:did ?n[o']t|does ?n[o']t|failed to) (?:come through|load|arrive|upload)|"
    r"(?:can )?only see (?:your|the) text|(?:please )?(?:re-?)?upload the (?:image|picture|photo)|"
    r"cannot view images|can'?t view images|unable to view (?:the )?images?)",
    re.IGNORECASE,
)


def _from_text(ans: Answer, text: str, had_json: bool) -> None:
    if ans.score is None:
        found = stated_scores(text)
        if found:
            ans.score = found[-1][1]  # the last stated score is the model's final word
    if not ans.region_scores:
        ans.region_scores = region_scores_in(text)
    for name, rx in _FIELD_RE.items():
        if getattr(ans, name) is None:
            m = rx.search(text)
            if m:
                val = m.group(1).strip().rstrip(".,").strip()
                if val and val.lower() not in ("none", "null", "n/a") and not is_placeholder(val):
                    setattr(ans, name, val)
    if ans.anomalous is None and not had_json:
        m = _BOOL_FIELD_RE.search(text)
        if m:
            ans.anomalous = m.group(1).lower() in ("true", "yes")
        else:
            verdict, strength = decide(text)
            # a stated score is the model's committed answer: prose (a first impression, a remark on
            # one part) overrides it only when it is an explicit verdict ("Answer: Abnormal")
            if ans.score is None or strength >= 3:
                ans.anomalous = verdict
    if not ans.ranges and not had_json:
        m = re.search(r"\branges?\b\s*[:=]?(.*)", text, re.I | re.S)
        if m:
            for pm in _RANGE_PAIR_RE.finditer(m.group(1)[:500]):
                a, b = (pm.group(1), pm.group(2)) if pm.group(1) else (pm.group(3), pm.group(4))
                ans.ranges.append((int(a), int(b)))


# --------------------------------------------------------------------------- verdicts

_POS_ADJ = r"anomalous|defective|abnormal|faulty|damaged|broken|flawed|contaminated|not\s+ok(?:ay)?|ng"
_NEG_ADJ = (
    r"normal|defect[- ]free|flawless|intact|fine|good|healthy|unremarkable|ok(?:ay)?|acceptable|non[- ]?defective|"
    r"clean|perfect|undamaged|free (?:of|from) (?:any )?(?:defects?|anomal\w*|damage|flaws?)"
)
_VERDICT_WORD = re.compile(
    r"^\W*(?P<w>yes|no|"
    r"not\s+(?:an?\s+)?(?:anomal\w*|defect\w*|abnormal)|"
    r"non[- ]?defective|defect[- ]free|"
    r"anomal(?:ous|y(?: detected| found| present)?)|defective|abnormal|defect(?: detected| found| present)?|"
    r"normal|ok(?:ay)?|good|faulty|damaged|no (?:anomal\w*|defects?)(?: detected| found)?|"
    r"reject(?:ed)?|fail(?:ed|s)?|pass(?:ed|es)?|accept(?:ed)?|not ok(?:ay)?|no abnormality(?: detected)?|"
    r"(?:an?\s+)?(?:real|true|genuine|confirmed)\s+(?:anomal\w*|defect)|false (?:positive|alarm))\b"
    r"(?P<rest>.*)$",
    re.I | re.S,
)
_LABEL = re.compile(
    r"^\W*(?:final\s+|overall\s+)?(?:answer|verdict|conclusion|decision|result|classification|assessment|"
    r"status|judge?ment|prediction|label|determination|diagnosis|impression|summary|overall|"
    r"inspection result|anomalous\?|defective\?|abnormal findings|findings)\s*[:=\-–]\s*(?P<rest>.+)$",
    re.I | re.S,
)
_DEFECT_WORDS = (
    r"(?:anomal\w*|defect\w*|abnormal\w*|damage\w*|flaw\w*|crack\w*|holes?|scratch\w*|contaminat\w*|"
    r"irregularit\w*|lesions?|tumou?r\w*|masse?s?|hemorrhage\w*|haemorrhage\w*|bleed\w*|pneumonia|fractur\w*|"
    r"missing|broken|bent|misplaced|dents?|stains?|deform\w*|tears?|fray\w*|blowholes?|cuts?|chips?|"
    r"breaks?|pits?|spots? of contamination|foreign (?:object|material|bod\w*)|burrs?|rust|corrosion|"
    r"discolou?ration|infarct\w*|oedema|edema|opacit\w*|nodules?|effusion)"
)
_NEG = (
    r"(?:\bno\b|\bnot\b|\bnor\b|\bwithout\b|\bfree (?:of|from)\b|\babsence of\b|\blacks?\b|\bnone\b|\bneither\b|"
    r"\bisn'?t\b|\baren'?t\b|\bdoesn'?t\b|\bdon'?t\b|\bdid not\b|\bdidn'?t\b|\bnothing\b|\bzero\b|\bnor\b)"
)
# whole-object statements: "<it> is (not) normal", "no visible defects", "contains anomalies"
_STATE_RE = re.compile(
    r"\b(?:is|are|appears?|looks?|seems?|was|be|being|judged|classified|considered|deemed|rated|labell?ed)\s+"
    r"(?:to be\s+|as\s+)?(?P<neg>not\s+|n't\s+)?(?:\w+ly\s+)?(?:an?\s+)?(?P<adj>" + _POS_ADJ + "|" + _NEG_ADJ + r")\b",
    re.I,
)
_PASS_RE = re.compile(
    r"\b(?P<neg>(?:not|n't|never)\s+)?(?P<w>pass(?:es|ed)?|fails?|failed)\s+(?:the\s+|this\s+|our\s+)?"
    r"(?:visual\s+|quality\s+)?(?:inspection|check|test|qc|quality control)\b|"
    r"\bnothing\s+(?:is\s+)?(?P<wrong>wrong|abnormal|anomalous|amiss|unusual)\b|"
    r"\beverything\s+(?:appears|looks|seems|is)\s+(?:to be\s+)?(?P<order>in order|fine|normal|good|ok(?:ay)?)\b",
    re.I,
)
_NONE_RE = re.compile(
    r"(?:\bno\s+(?:\w+\s+){0,3}?|\bnot?\s+(?:find|see|detect|observe|notice|spot|identify)\s+(?:any\s+)?(?:\w+\s+){0,2}?|"
    r"\b(?:don'?t|do not|did not|didn'?t|cannot|can'?t)\s+(?:see|find|detect|observe|notice|identify|spot)\s+"
    r"(?:any\s+)?(?:\w+\s+){0,2}?|"
    r"\b(?:doesn'?t|does not|do not|don'?t)\s+(?:contain|show|have|exhibit|display|present)\s+(?:any\s+)?(?:\w+\s+){0,2}?|"
    r"\bfree (?:of|from)\s+(?:any\s+)?(?:\w+\s+){0,2}?|\bwithout\s+(?:any\s+)?(?:\w+\s+){0,2}?|"
    r"\bnothing\s+|\babsence of\s+(?:any\s+)?)"
    r"(?:evidence of\s+(?:an?\s+)?(?:\w+\s+){0,2}?)?"
    r"(?:anomal\w*|defect\w*|abnormal\w*|issues?|problems?|flaws?|damage|irregularit\w*|lesions?|masse?s?|"
    r"signs? of \w+|suspicious \w+)",
    re.I,
)
_HAS_RE = re.compile(
    r"\b(?:there (?:is|are|appears? to be|seems? to be)|contains?|shows?|exhibits?|has|have|displays?|reveals?|"
    r"presents?|with|i (?:can )?(?:see|notice|observe|found|find|detect)|(?:was|were|is|are) (?:detected|found|"
    r"visible|present|observed|seen|noted))\b[^.;!?]{0,60}?\b(?:anomal\w*|defect\w*|abnormalit\w*)",
    re.I,
)
_MENTION_RE = re.compile(
    r"\b(?:there (?:is|are|appears? to be|seems? to be)|contains?|shows?|exhibits?|has|have|displays?|reveals?|"
    r"presents?|visible|i (?:can )?(?:see|notice|observe|found|detect)|consistent with|suggest\w*|indicat\w*|"
    r"evidence of|signs? of|(?:is|are|was|were) (?:missing|broken|bent|cracked|torn|damaged|chipped|scratched|"
    r"deformed|misplaced|contaminated|stained)|appears? to (?:be|have))\b[^.;!?]{0,80}?" + _DEFECT_WORDS + r"|"
    r"\b" + _DEFECT_WORDS + r"\s+(?:is|are|was|were|can be)\s+(?:clearly\s+)?(?:visible|present|seen|"
    r"detected|observed|noted|found|missing)|\b(?:is|are)\s+missing\b",
    re.I,
)
_NEG_MENTION_RE = re.compile(_NEG + r"[^.;!?]{0,50}?\b" + _DEFECT_WORDS, re.I)
# clauses that are not verdicts: the question restated, a plan, a hedge, a first impression
_NOT_A_VERDICT = re.compile(
    r"\b(?:whether|determine if|check (?:if|for)|to (?:determine|check|assess|evaluate|identify|see|inspect|"
    r"find out|decide|verify|look for)|if (?:yes|so|there|it|the)|let me|i will|i'll|we need to|task is|asked to|"
    r"might|may|could|possibly|perhaps|unclear|hard to (?:say|tell)|difficult to (?:say|tell|determine)|"
    r"cannot be (?:sure|certain)|not (?:sure|certain)|uncertain|can'?t tell|at first(?: glance| sight)?|"
    r"initially|would have)\b",
    re.I,
)
# ... and remarks on the rest of the image, which say nothing of the image as a whole when normal
_ELSEWHERE = re.compile(
    r"\b(?:rest of|otherwise|apart from|except|other than|the other(?! hand)|others|remaining|elsewhere|background|"
    r"surrounding|"
    r"compared to the (?:first|reference))\b",
    re.I,
)
# "is a real defect" / "is not a defect"; "is just the regular texture"
_IS_DEFECT_RE = re.compile(
    r"\b(?:is|are|seems? to be|appears? to be|looks? like|was)\s+(?P<neg>not\s+)?(?:an?\s+)?(?:real|true|genuine|"
    r"clear|actual|definite|obvious|visible)?\s*(?:defect|anomaly|flaw)\b",
    re.I,
)
_BENIGN = (
    r"(?:texture|pattern|weave|grain|variation|structure|reflection|shadow|glare|noise|dust|lighting|artefact|"
    r"artifact|label|print|text|marking|background|anatomy|appearance|surface|logo|seam|edge|vessel|fold of the|"
    r"highlight|specular|embossing|lettering)s?"
)
_JUST_NORMAL_RE = re.compile(
    r"\b(?:is|are|seems? to be|appears? to be|looks? like|was)\s+(?:also\s+)?(?:just|only|merely|simply)\s+"
    r"(?:(?:a|an|the|its|their)\s+)?(?:[\w-]+\s+){0,3}?" + _BENIGN + r"\b|"
    r"\b(?:regular|normal|natural|usual|expected)\s+(?:[\w-]+\s+)?" + _BENIGN + r"\b|"
    r"\b(?:just|only|merely)\s+(?:a\s+|an\s+|the\s+)?(?:[\w-]+\s+){0,2}?" + _BENIGN + r"\b|"
    r"^\W*(?:is|it is|it's)?\s*(?:a|an|the)\s+(?:[\w-]+\s+){0,2}?(?:reflection|shadow|glare|logo|seam|highlight)\b|"
    r"\bfalse (?:positive|alarm)\b",
    re.I,
)
_CLAUSE_SPLIT = re.compile(
    r"(?<=[.!?])\s+|\n+|;\s*|:\s+|,\s*(?=(?:but|however|although|though|yet|whereas|while|and)\b)|"
    r"\s+(?=(?:but|however|although|though|yet|whereas)\b)",
    re.I,
)


def _adj_positive(adj: str) -> bool:
    return re.fullmatch(_POS_ADJ, adj.strip(), re.I) is not None


def _word_verdict(w: str) -> bool | None:
    w = re.sub(r"\s+", " ", w.strip().lower())
    if w.startswith("false "):
        return False
    if w.startswith("not ") or w.startswith("no ") or w in ("no", "non-defective", "nondefective", "defect-free"):
        return False
    if w in ("normal", "ok", "okay", "good", "non defective", "defect free") or w.startswith(("pass", "accept")):
        return False
    return True


def clause_verdicts(text: str) -> list[tuple[int, bool]]:
    """(strength, verdict) of every clause that commits, in order. Strength 3: an explicit label
    or a bare verdict word; 2: a statement on the whole object; 1: a defect mentioned (or denied)."""
    out: list[tuple[int, bool]] = []
    t = text.strip()
    first = _VERDICT_WORD.match(t)
    if first and (first.group("w").lower() in ("yes", "no") or not first.group("rest").strip()[:1].isalpha()):
        out.append((3, _word_verdict(first.group("w")) is not False))
    for line in re.split(r"\n+", t):
        lab = _LABEL.match(line)
        if lab:
            rest = lab.group("rest").strip()
            w = _VERDICT_WORD.match(rest)
            if w:
                out.append((3, _word_verdict(w.group("w")) is not False))
            else:
                got = _clause_verdict(rest)
                if got is not None:
                    out.append((3, got[1]))
            continue
        s = line.strip().rstrip(".!")
        w = _VERDICT_WORD.match(s)
        if w and not w.group("rest").strip() and line is not t:
            out.append((3, _word_verdict(w.group("w")) is not False))
            continue
        for clause in _CLAUSE_SPLIT.split(line):
            if not clause or not clause.strip() or clause.strip().lower() in ("but", "however"):
                continue
            got = _clause_verdict(clause)
            if got is not None:
                out.append(got)
    return out


def _clause_verdict(clause: str) -> tuple[int, bool] | None:
    c = clause.strip()
    if c.endswith("?") or _NOT_A_VERDICT.search(c) or _REFUSAL_RE.search(c):
        return None
    got = _clause_kind(c)
    if got is not None and got[1] is False and _ELSEWHERE.search(c):
        return None  # "the rest of the tile looks normal"
    return got


def _clause_kind(c: str) -> tuple[int, bool] | None:
    m = _PASS_RE.search(c)
    if m:
        if m.group("w"):
            return 2, m.group("w").lower().startswith("fail") != bool(m.group("neg"))
        return 2, False
    m = _STATE_RE.search(c)
    if m:
        positive = _adj_positive(m.group("adj"))
        return 2, positive != bool(m.group("neg"))
    m = _IS_DEFECT_RE.search(c)
    if m:
        return 2, not m.group("neg") and not re.search(_NEG + r"[^.;!?]{0,30}$", c[: m.start()], re.I)
    if _NONE_RE.search(c):
        return 2, False
    if _HAS_RE.search(c) and not _NEG_MENTION_RE.search(c):
        return 2, True
    if _JUST_NORMAL_RE.search(c):
        return 2, False
    if _NEG_MENTION_RE.search(c):
        return 1, False
    if _MENTION_RE.search(c):
        return 1, True
    return None


def decide_yes_no(text: str) -> bool | None:
    """A yes/no decision from prose, or None if the text does not commit either way: the last
    clause of the strongest kind that commits (see clause_verdicts)."""
    return decide(text)[0]


def decide(text: str) -> tuple[bool | None, int]:
    """(decide_yes_no's decision, its strength: 3 explicit, 2 a statement, 1 a mention, 0 none)."""
    found = clause_verdicts(clean_markdown(text or ""))
    if not found:
        return None, 0
    best = max(s for s, _ in found)
    return [v for s, v in found if s == best][-1], best
