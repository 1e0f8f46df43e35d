"""The one detector contract, in the spirit of scikit-learn and PyOD.

    det = create("embedded", shots=4)      # or any registered name
    det.fit(normal_samples)                # optional: few-shot references
    results = det.predict(samples)         # a batch; zero-shot detectors may use the whole batch

Scores: higher = more anomalous. `predict` never raises for one bad sample: that sample's
Result carries `error` and the rest are still scored. `predict` never changes fitted state.

Both `fit` and `predict` take Samples, or numpy arrays, paths or lists of them: the base class
converts what they are handed once, with `genad.types.as_samples` (arrays as the detector's
modality: `det.predict(np_images)` with N x H x W [x C] images gives ids "array-0", ...), so a
detector's own fit/predict always see a list of Samples. Input that cannot be read is one
GenadError.

Parameters are declared once, as class attributes, with their kind, range and meaning:

    class Mine(Detector):
        grid: int = param(64, low=8, doc="cells a side")
        mode: str = param("fast", choices=("fast", "exact"))

        def predict(self, samples): ...

The base constructor takes them as keyword arguments, converts values given as text (the
command line's `-p grid=32`, the service's JSON) by their declared kind, checks their range
and stores each as an attribute (a value that needs no conversion as the very object given);
`get_params` / `set_params` / `clone` work as in scikit-learn (`sklearn.base.clone` too),
`params` is the public view (no secrets, no objects) for files and logs, and the class
signature lists them. Everything that checks an option (the CLI, the Python API, the
service) goes through this one declaration. Detectors that write their own `__init__` and
call `super().__init__(**options)` keep working: those options are stored as given.
"""

from __future__ import annotations

import copy
import inspect
import math
import numbers
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from genad.decision import BOUNDARY, Calibration, decide
from genad.errors import GenadError
from genad.secrets import is_secret
from genad.types import Modality, Result, Sample, as_samples

_KINDS = ("bool", "int", "float", "str", "ints", "strs", "dict", "any")
_NULL_WORDS = ("none", "null", "")
_TRUE_WORDS = ("true", "yes", "on", "1")
_FALSE_WORDS = ("false", "no", "off", "0")


class Param:
    """One declared detector option.

    kind: bool | int | float | str | ints (a tuple of whole numbers, "8,16" from text) |
    strs (a tuple of words, "a,b" from text) | dict | any (taken as given); inferred from the
    default when not given. nullable: None is allowed (default: when the default is None).
    low / high: inclusive bounds (for ints: of every element); choices: the allowed values;
    aliases: other names accepted for it (budget for budget_usd); secret: never shown in
    `params`, repr, files or logs; public: False for objects that have no place in a file
    (a client, a ready config). convert: a function applied to the value after the kind's
    conversion (it may raise GenadError or ValueError with a message)."""

    def __init__(
        self,
        default: Any,
        kind: str | None = None,
        *,
        doc: str = "",
        low: float | None = None,
        high: float | None = None,
        choices: Sequence[Any] | None = None,
        nullable: bool | None = None,
        aliases: Sequence[str] = (),
        secret: bool = False,
        public: bool = True,
        convert: Callable[[Any], Any] | None = None,
    ) -> None:
        if kind is None:
            kind = _infer_kind(default)
        if kind not in _KINDS:
            raise TypeError(f"unknown parameter kind {kind!r}")
        self.default = default
        self.kind = kind
        self.doc = doc
        self.low, self.high = low, high
        self.choices = tuple(choices) if choices is not None else None
        self.nullable = default is None if nullable is None else nullable
        self.aliases = tuple(aliases)
        self.secret = secret
        self.public = public and not secret
        self.convert = convert
        self.name = ""  # set when the class is made

    def __repr__(self) -> str:
        return f"Param({self.name}={self.default!r}, kind={self.kind!r})"

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    # -- values -------------------------------------------------------------------------------
    def coerce(self, value: Any) -> Any:
        """The value converted to this option's kind and checked; GenadError saying what is
        wrong otherwise (the message starts with the option's name)."""
        if isinstance(value, str) and value.strip().lower() in _NULL_WORDS and self.kind != "str":
            # an option of words with a converter reads the word itself (augment=none: no augmentation)
            if self.nullable or self.convert is None or not isinstance(self.default, str):
                value = None
        if value is None:
            if self.nullable:
                return None
            raise GenadError(f"{self.name} must be given (it cannot be none)")
        try:
            v = self._as_kind(value)
            if self.convert is not None:
                v = self.convert(v)
        except (TypeError, ValueError) as e:
            raise GenadError(f"{self.name} {e}") from e
        self._check_range(v)
        # A value that was already valid is kept as the very object given (scikit-learn's
        # clone() checks that the constructor stores each parameter unchanged); only one that
        # the conversion changed (text, 2 for 2.0, a list for a tuple) is replaced.
        return value if _same(v, value) else v

    def _as_kind(self, value: Any) -> Any:
        k = self.kind
        if k == "any":
            return value
        if k == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, (int, float)) and value in (0, 1):
                return bool(value)
            if isinstance(value, str) and value.strip().lower() in _TRUE_WORDS + _FALSE_WORDS:
                return value.strip().lower() in _TRUE_WORDS
            raise ValueError(f"must be true or false, got {value!r}")
        if k == "int":
            return _as_int(value)
        if k == "float":
            return _as_float(value)
        if k == "str":
            if isinstance(value, str):
                return value
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return str(value)
            raise ValueError(f"must be text, got {value!r}")
        if k == "ints":
            items = _split(value)
            return tuple(_as_int(x) for x in items)
        if k == "strs":
            items = _split(value)
            if not all(isinstance(x, str) for x in items):
                raise ValueError(f"must be words such as a,b; got {value!r}")
            return tuple(x.strip() for x in items if x.strip())
        if k == "dict":
            if isinstance(value, dict):
                return dict(value)
            raise ValueError(f'must be a mapping such as {{"key": value}}, got {value!r}')
        raise AssertionError(k)  # pragma: no cover

    def _check_range(self, v: Any) -> None:
        if self.choices is not None and v not in self.choices:
            raise GenadError(f"{self.name} must be {_or_list(self.choices)}, got {_show(v)}")
        values = v if self.kind == "ints" else (v,)
        if self.kind not in ("int", "float", "ints"):
            return
        for x in values:
            if self.low is not None and x < self.low:
                upto = "" if self.high is None else f" and at most {_num(self.high)}"
                raise GenadError(f"{self.name} must be at least {_num(self.low)}{upto}, got {_show(v)}")
            if self.high is not None and x > self.high:
                span = f"between {_num(self.low)} and " if self.low is not None else "at most "
                raise GenadError(f"{self.name} must be {span}{_num(self.high)}, got {_show(v)}")


def param(default: Any, kind: str | None = None, **options: Any) -> Any:
    """Declare a detector option (see Param); typed Any so that `grid: int = param(64)` reads
    as an int to type checkers."""
    return Param(default, kind, **options)


def _infer_kind(default: Any) -> str:
    if isinstance(default, bool):
        return "bool"
    if isinstance(default, int):
        return "int"
    if isinstance(default, float):
        return "float"
    if isinstance(default, str):
        return "str"
    if isinstance(default, dict):
        return "dict"
    return "any"


def _as_int(value: Any) -> int:
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"must be a whole number, got {value!r}")
    if isinstance(value, numbers.Integral):  # numpy's too (a grid search's np.arange)
        return int(value)
    if isinstance(value, float):
        if math.isfinite(value) and value == int(value):
            return int(value)
        raise ValueError(f"must be a whole number, got {value!r}")
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise ValueError(f"must be a whole number, got {value!r}")


def _as_float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(f"must be a number, got {value!r}")
    try:
        v = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise ValueError(f"must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"must be a finite number, got {value!r}")
    return v


def _same(a: Any, b: Any) -> bool:
    """a and b are equal and of the same type all the way down (1 is not 1.0 nor True)."""
    if a is b:
        return True
    if type(a) is not type(b):
        return False
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    try:
        eq = a == b
    except Exception:  # e.g. arrays, whose == is elementwise
        return False
    return eq is True


def _split(value: Any) -> list[Any]:
    if isinstance(value, str):
        return [x for x in value.replace(" ", "").split(",") if x]
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [value]
    raise ValueError(f"must be a list such as 1,2 or [1, 2]; got {value!r}")


def _show(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, tuple):
        text = ",".join(_show(x) for x in v)
    else:
        text = repr(v) if isinstance(v, str) else str(v)
    return text if len(text) <= 60 else text[:57] + "..."  # a hostile value stays one short line


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _or_list(items: Sequence[Any]) -> str:
    words = [_show(x).strip("'") for x in items]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


@dataclass(frozen=True)
class Capabilities:
    """What a detector can do right now (it may change with fit), for whatever runs it.

    modalities: what it reads. zero_shot: predict() works without fit(). whole_batch: the
    samples are scored against each other, so predict() must get all of them at once.
    min_batch: the fewest samples one predict() can score. chunk_size: samples per predict()
    when streaming (None: the runner's default)."""

    modalities: tuple[str, ...]
    zero_shot: bool = True
    whole_batch: bool = False
    min_batch: int = 1
    chunk_size: int | None = None


class Detector(ABC):
    #: registry name, set by @register
    name: ClassVar[str] = "detector"
    #: modalities this detector reads
    modalities: ClassVar[tuple[Modality, ...]] = ("image",)
    #: True if predict() can work without fit() (zero-shot)
    zero_shot: ClassVar[bool] = True
    #: samples per predict() call when results are streamed (None: the runner's default)
    chunk_size: ClassVar[int | None] = None
    #: the declared options, collected from the class and its bases (see Param)
    declared: ClassVar[dict[str, Param]] = {}
    #: attributes holding fitted state beyond those ending in "_" (e.g. an inner engine)
    fitted_parts: ClassVar[tuple[str, ...]] = ()
    #: how many references fit() saw and when (set by fit; written into saved models)
    fit_info_: dict[str, Any] | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        declared: dict[str, Param] = {}
        for base in reversed(cls.__mro__[1:]):
            declared.update(getattr(base, "declared", {}) or {})
        for key, value in list(vars(cls).items()):
            if isinstance(value, Param):
                value.name = key
                declared.pop(key, None)
                declared[key] = value
        cls.declared = declared
        # fit() and predict() take Samples, arrays, paths or lists of them (genad.types.as_samples)
        if "fit" in vars(cls) and not hasattr(vars(cls)["fit"], "__wrapped_fit__"):
            cls.fit = _recording_fit(vars(cls)["fit"])  # type: ignore[method-assign]
        if "predict" in vars(cls) and not hasattr(vars(cls)["predict"], "__wrapped_predict__"):
            cls.predict = _reading_predict(vars(cls)["predict"])  # type: ignore[method-assign]
        if declared and "__init__" not in vars(cls):
            cls.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
                [
                    inspect.Parameter(p.name, inspect.Parameter.KEYWORD_ONLY, default=p.default)
                    for p in declared.values()
                ]
            )

    def __init__(self, **options: Any) -> None:
        declared = type(self).declared
        self._given: dict[str, Any] = {}  # options of a detector that declares none (old style)
        values: dict[str, Any] = {}
        if declared:
            values = self._resolve(options)
        else:
            self._given = dict(options)
        for name, p in declared.items():
            # a fresh copy of a mutable default, so that instances never share one dict
            setattr(self, name, values[name] if name in values else copy.copy(p.default))
        self.fitted_ = False
        if declared:
            try:
                self._configure()
            except (GenadError, TypeError, ValueError) as e:
                raise GenadError(f"bad option for detector {self.name!r}: {e}") from e
        self.params: dict[str, Any] = self._public()

    # -- options ------------------------------------------------------------------------------
    def _resolve(self, options: dict[str, Any]) -> dict[str, Any]:
        """Options by their declared name, converted and checked (GenadError otherwise)."""
        declared = type(self).declared
        by_alias = {a: p.name for p in declared.values() for a in p.aliases}
        out: dict[str, Any] = {}
        unknown = []
        for key, value in options.items():
            name = key if key in declared else by_alias.get(key)
            if name is None:
                unknown.append(key)
                continue
            if name in out:
                raise GenadError(
                    f"bad option for detector {self.name!r}: {key} and {name} name the same option; give one"
                )
            try:
                out[name] = declared[name].coerce(value)
            except GenadError as e:
                raise GenadError(f"bad option for detector {self.name!r}: {e}") from e
        if unknown:
            valid = ", ".join(p.name for p in declared.values() if p.public or p.secret)
            raise GenadError(
                f"bad option for detector {self.name!r}: unknown option(s) {', '.join(sorted(str(k)[:40] for k in unknown)[:10])}; "
                f"valid options are {valid}"
            )
        return out

    def _configure(self) -> None:  # noqa: B027 - a hook: most detectors need none
        """Check options against each other and derive private settings from them; called
        after construction and after set_params. Raise GenadError for a bad combination.
        Never changes an option's value (get_params returns what was given)."""

    def _public(self) -> dict[str, Any]:
        declared = type(self).declared
        # a detector that declares nothing: what it was given, less secrets and objects
        out = {k: v for k, v in self._given.items() if not is_secret(k) and k not in ("client", "config")}
        for name, p in declared.items():
            if p.public:
                out[name] = _public_value(getattr(self, name))
        return out

    def get_params(self, deep: bool = False) -> dict[str, Any]:
        """Every option as set (secrets included, as scikit-learn does: for clone()). deep: also
        the options of an option that is itself an estimator (a detector given as an
        instance), as "name__option" (scikit-learn's nested form)."""
        out = dict(self._given)
        out.update({name: getattr(self, name) for name in type(self).declared})
        if deep:
            for name, value in list(out.items()):
                if hasattr(value, "get_params") and not isinstance(value, type):
                    out.update({f"{name}__{k}": v for k, v in value.get_params(deep=True).items()})
        return out

    def set_params(self, **options: Any) -> Detector:
        """Change options, with the same conversion and checks as the constructor; "name__option"
        changes an option of the estimator held in option `name` (scikit-learn's nested form)."""
        nested: dict[str, dict[str, Any]] = {}
        for key in [k for k in options if "__" in k]:
            outer, inner = key.split("__", 1)
            nested.setdefault(outer, {})[inner] = options.pop(key)
        for outer, inner_options in nested.items():
            inner_det: Any = options.get(outer, self.get_params().get(outer))
            if not hasattr(inner_det, "set_params") or isinstance(inner_det, type):
                raise GenadError(
                    f"bad option for detector {self.name!r}: {outer}__{next(iter(inner_options))} names an option "
                    f"of {outer}, which holds no estimator"
                )
            inner_det.set_params(**inner_options)
        if not type(self).declared:
            self._given.update(options)
            for k, v in options.items():
                setattr(self, k, v)
        else:
            for name, value in self._resolve(options).items():
                setattr(self, name, value)
            try:
                self._configure()
            except (GenadError, TypeError, ValueError) as e:
                raise GenadError(f"bad option for detector {self.name!r}: {e}") from e
        self.params = self._public()
        return self

    def clone(self) -> Detector:
        """A new, unfitted detector with the same options."""
        return type(self)(**self.get_params())

    # -- what it can do ---------------------------------------------------------------------
    def capabilities(self) -> Capabilities:
        return Capabilities(tuple(self.modalities), self.zero_shot, False, 1, self.chunk_size)

    def _compare_until_fitted(self, fitted: bool) -> Capabilities:
        """The capabilities of a detector whose zero-shot scores the samples of a batch
        against each other (the whole batch at once, at least 3) and whose fitted form scores
        each sample alone (streamed in chunks)."""
        from genad.ops import MIN_ZERO_SHOT_BATCH

        return Capabilities(
            tuple(self.modalities),
            True,
            whole_batch=not fitted,
            min_batch=1 if fitted else MIN_ZERO_SHOT_BATCH,
            chunk_size=self.chunk_size,
        )

    @classmethod
    def tuned(cls, params: dict[str, Any], purpose: str) -> dict[str, Any]:
        """Options for serving inside another detector, given the caller's own `params` (which
        always win). purpose: "proposals" (look twice: maps whose peaks land on small
        defects), "depth_views" (point-cloud renders: small sharp defects on smooth surfaces),
        "video_frames" (zero-shot over one video's frames: consecutive frames look alike).
        Engines that have better settings for a purpose override this."""
        return dict(params)

    # -- the contract -------------------------------------------------------------------------
    def fit(self, normal_samples: Sequence[Sample]) -> Detector:
        """Learn from normal references (few-shot). Optional for zero-shot detectors. The base
        class hands every fit() a list of Samples (see as_samples) and records fit_info_."""
        self.fitted_ = True
        return self

    @abstractmethod
    def predict(self, samples: Sequence[Sample]) -> list[Result]:
        """Score a batch; one Result per sample, in order. The base class hands every predict()
        a list of Samples, whatever it was given (see as_samples)."""

    # -- saved models (genad.model_file) -------------------------------------------------------
    def save(self, path: Any, **info: Any) -> Any:
        """Write this detector (its options and fitted state; never a secret) to one model file
        that `genad.load(path)` reads back without running code from it. Returns the path."""
        from genad.model_file import save_detector

        return save_detector(self, path, info=info or None)

    def weights(self) -> dict[str, str]:
        """The pretrained weights this detector's fitted state depends on: {backbone: sha256}.
        A saved model refuses to load with other weights."""
        return {}

    @classmethod
    def weights_digest(cls, backbone: str) -> str | None:
        """The SHA-256 of `backbone`'s weights as installed here (None: not available)."""
        return None

    def preprocessing(self) -> dict[str, Any]:
        """How inputs are prepared before scoring, for a saved model's manifest (and an export)."""
        return {}

    # -- decisions (genad.decision) -----------------------------------------------------------
    def calibrated(self, auto: Calibration) -> Calibration:
        """The calibration a decision uses: `auto` (the detector's own), moved to the user's
        `raw_threshold` where one is set."""
        raw = getattr(self, "raw_threshold", None)
        return auto if raw is None else auto.at_raw(raw)

    def decide(self, result: Result, auto: Calibration, verdict: bool | None = None) -> Result:
        """Normalised score, raw threshold and decision of `result` from the detector's own
        calibration `auto`, the user's `threshold` (normalised units, 0.5 by default) and
        `raw_threshold` (raw units) options; `verdict`, a model's explicit yes/no, wins."""
        return decide(result, self.calibrated(auto), getattr(self, "threshold", BOUNDARY), verdict)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"


def input_modality(det: Detector | type[Detector]) -> str | None:
    """The modality arrays and paths handed to `det` are read as (genad.types.as_samples): the
    one it reads, or None (arrays as images, files by suffix) for one that reads several."""
    modalities = det.modalities
    return modalities[0] if len(modalities) == 1 else None


def _recording_fit(fit: Callable[..., Any]) -> Callable[..., Any]:
    """A detector's fit(), taking what as_samples reads and recording how many references it
    was fitted on and when (`fit_info_`, written into saved models)."""
    import functools

    @functools.wraps(fit)
    def recorded(self: Detector, normal_samples: Any, *args: Any, **kwargs: Any) -> Any:
        samples = as_samples(normal_samples, input_modality(self))
        out = fit(self, samples, *args, **kwargs)
        import datetime as _dt

        self.fit_info_ = {
            "count": len(samples),
            "at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "ids": [str(s.id) for s in samples[:1000]],
        }
        return out

    recorded.__wrapped_fit__ = True  # type: ignore[attr-defined]
    return recorded


# the base class's own fit (for detectors that keep it) reads and records as theirs do
Detector.fit = _recording_fit(Detector.fit)  # type: ignore[method-assign]


def _reading_predict(predict: Callable[..., Any]) -> Callable[..., Any]:
    """A detector's predict(), taking what as_samples reads (Samples pass through unchanged)."""
    import functools

    @functools.wraps(predict)
    def reading(self: Detector, samples: Any, *args: Any, **kwargs: Any) -> Any:
        return predict(self, as_samples(samples, input_modality(self)), *args, **kwargs)

    reading.__wrapped_predict__ = True  # type: ignore[attr-defined]
    return reading


def threshold_param() -> Any:
    """The one decision knob every detector declares as `threshold`: in normalised units."""
    return param(
        BOUNDARY,
        "float",
        low=0.0,
        high=1.0,
        doc="decision threshold on the normalised 0..1 score (0.5: the detector's calibrated boundary)",
    )


def raw_threshold_param() -> Any:
    """`raw_threshold`: a decision boundary in the detector's raw score units (replaces the
    calibrated one; `threshold` then still applies around it)."""
    return param(None, "float", doc="decision boundary in raw score units (replaces the calibrated one)")


def check_image_detector(name: str) -> str:
    """A Param converter: `name` must be a registered image detector (for detectors that run
    an image engine inside: video frames, point-cloud views)."""
    image_detector_class(name)
    return name


def predict_each(
    samples: Sequence[Sample],
    score_one: Callable[[Sample, Result], Result | None],
    stop_on: tuple[type[Exception], ...] = (),
) -> list[Result]:
    """predict() for detectors that score samples one at a time: `score_one(sample, result)`
    fills in `result` (or returns a Result of its own). Any error becomes that sample's
    Result.error (whatever was filled in before it, e.g. the usage of paid calls, is kept) and
    the others go on; an error of a `stop_on` type (a spent budget) fails that sample and every
    later one with its message. Each Result gets timings["seconds"]."""
    out: list[Result] = []
    stop: str | None = None
    for s in samples:
        r = Result(sample_id=s.id)
        if stop is not None:
            r.error = stop
            out.append(r)
            continue
        t0 = time.perf_counter()
        try:
            got = score_one(s, r)
            if got is not None:
                r = got
        except stop_on as e:
            r.error = stop = str(e)
        except GenadError as e:
            r.error = str(e)
        except Exception as e:
            r.error = f"{type(e).__name__}: {e}"
        r.timings["seconds"] = time.perf_counter() - t0
        out.append(r)
    return out


def _public_value(v: Any) -> Any:
    """An option's value as files and logs show it: a detector by its name, a dataclass (such
    as Knowledge) as its fields."""
    import dataclasses

    if isinstance(v, Detector):
        return v.name if v.name != Detector.name else type(v).__name__
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return dataclasses.asdict(v)
    return v


def image_detector_class(name: str) -> type[Detector]:
    """The registered detector `name`, checked to read images (for detectors that run an
    image engine inside: video frames, point-cloud views, look twice)."""
    from genad import registry

    cls = registry.get(name)
    if "image" not in cls.modalities:
        raise GenadError(
            f"{name!r} is not an image detector (it reads {', '.join(cls.modalities)}): "
            "choose an image detector such as 'embedded'"
        )
    return cls
