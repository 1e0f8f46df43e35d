"""ONNX export of a fitted (few-shot) embedded model: one graph from pixels to decision.

    genad export station.genad --onnx station.onnx        # or export_onnx(genad.load(...), path)

The graph holds everything genad does after the image is resized to its working size:

    image     float32 (N, 3, H, W), RGB in [0, 1], at the working size (see below)
    orig_size int64 (2,): (height, width) of the image before that resize
      -> the backbone (EfficientNet-Lite, after the model's input normalisation), the layers combined,
         the optional random projection, the r x r neighbourhood means, unit length
      -> per r, the distance to the nearest memory-bank patch, sqrt(max(0, 2 - 2 max cos)) as
         search.nn_distance_unit (the bank is a constant, searched exactly), mean over r
      -> the patch map resized to (H, W) and Gaussian-smoothed (sigma in working pixels,
         border "nearest", truncate 3), then resized to orig_size: both resizes are PIL's
         bilinear (antialiased when shrinking) written as two matrix products
      -> score: mean of the map's top 1% pixels ("top1") or its maximum ("max")
    outputs: score (N,), anomaly_map (N, orig H, orig W), normalized_score (N,), decision (N,)

What is outside the graph (the caller's part, written into the metadata and docs/embedded.md):
read the image as uint8 RGB, compute its working size with `working_size` below (the fixed
factor `working_scale` of the references, area capped, sides rounded to 32), resize it with
PIL's bilinear filter, scale to [0, 1], NCHW. Images of one call share their size.

Only the effnet-lite backbones export (dinov2-s and onnx: backbones are refused), and only a
fitted model: zero-shot scoring compares a batch with itself, which is no fixed graph.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from genad.errors import GenadError

#: ONNX opset of the graph (onnxruntime >= 1.13 runs it)
OPSET = 17
#: initializers above this many bytes go to a side file OUT.onnx.data (protobuf's 2 GB limit)
EXTERNAL_DATA_BYTES = 1_500_000_000

INPUTS = {
    "image": "float32 (N, 3, H, W): RGB in [0, 1] at the working size (H, W), resized as "
    "genad.preprocessing says; the N images of one call share their size",
    "orig_size": "int64 (2,): the images' (height, width) before resizing",
}
OUTPUTS = {
    "score": "float32 (N,): genad's raw image score (Result.score)",
    "anomaly_map": "float32 (N, height, width): the anomaly map at the input's size (Result.anomaly_map)",
    "normalized_score": "float32 (N,): calibrated score in [0, 1], 0.5 at the calibrated boundary",
    "decision": "bool (N,): score > the raw threshold (genad.threshold raw_threshold)",
}

WORKING_SIZE = """\
def working_size(h, w, scale, resolution, multiple=32):
    s = min(scale, 2.0 * resolution / math.sqrt(h * w))
    if min(h, w) * s < 2 * multiple:
        s = 2 * multiple / min(h, w)
    return (max(2 * multiple, int(round(h * s / multiple)) * multiple),
            max(2 * multiple, int(round(w * s / multiple)) * multiple))"""

PREPARE = (
    "uint8 RGB HxWx3 (genad.io.images.read_image: EXIF orientation applied, grey replicated, alpha "
    "composited on white) -> (H, W) = working_size(h, w, working_scale, resolution) -> "
    "PIL Image.resize((W, H), Image.BILINEAR) -> float32 / 255 -> transpose to (1, 3, H, W)"
)


def working_size(h: int, w: int, scale: float, resolution: int, multiple: int = 32) -> tuple[int, int]:
    """The working size genad resizes an (h, w) image to (geometry.work_size with its defaults),
    written out for the metadata (WORKING_SIZE is the same code as text)."""
    s = min(scale, 2.0 * resolution / math.sqrt(h * w))
    if min(h, w) * s < 2 * multiple:
        s = 2 * multiple / min(h, w)
    return (
        max(2 * multiple, int(round(h * s / multiple)) * multiple),
        max(2 * multiple, int(round(w * s / multiple)) * multiple),
    )


def check_exportable(det: Any) -> None:
    """GenadError (one line) unless `det` is a fitted embedded model with an effnet backbone."""
    if getattr(det, "name", None) != "embedded":
        raise GenadError(f"only embedded models export to ONNX, not a {getattr(det, 'name', type(det).__name__)!r}")
    if getattr(det, "bank_", None) is None or det.scale_ is None or det.calibration_ is None:
        raise GenadError(
            "this embedded model is not fitted (zero-shot scores a batch against itself, which is no "
            "fixed graph): fit it on normal images first (genad fit GOOD_DIR --save FILE)"
        )
    if not str(det.backbone).startswith("effnet-lite"):
        raise GenadError(
            f"ONNX export supports the effnet-lite0/1/2 backbones; this model uses {det.backbone!r} (refit with one)"
        )


def export_onnx(det: Any, path: str | Path) -> Path:
    """Write `det` (a fitted embedded model) as one ONNX graph to `path`; returns the path."""
    import onnx

    check_exportable(det)
    path = Path(path)
    model = _with_postprocessing(_features_graph(det), det)
    _add_metadata(model, det)
    big = sum(t.ByteSize() for t in model.graph.initializer) > EXTERNAL_DATA_BYTES
    if not big:  # protobuf cannot hold > 2 GB in memory: a big graph is checked from its files
        _check(model)
    tmp = path.with_name(path.name + ".part")
    data = path.with_name(path.name + ".data")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if big:
            data.unlink(missing_ok=True)  # onnx appends to an existing side file
            onnx.save_model(model, tmp, save_as_external_data=True, location=data.name)
        else:
            onnx.save_model(model, tmp)
        tmp.replace(path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise GenadError(f"cannot write {path}: {e}") from e
    if big:
        _check(str(path))
    return path


def _check(model: Any) -> None:
    import onnx

    try:
        onnx.checker.check_model(model, full_check=False)
    except Exception as e:  # pragma: no cover - a bug here, not a user error
        raise GenadError(f"the exported graph does not check: {str(e).splitlines()[0]}") from e


# --------------------------------------------------------------------------- backbone + bank


def _patch_scorer(det: Any):
    """A torch module: image (N, 3, H, W) in [0, 1] -> patch scores (N, h, w), built from the
    same functions genad's predict uses (features.project / aggregate, combine_layers)."""
    import torch

    from genad.engines.embedded.backbones import combine_layers
    from genad.engines.embedded.features import aggregate, projection

    backbone = det._backbone()
    banks = det.bank_.banks  # r -> (M, D) unit rows
    channels = int(combine_layers(backbone(np.zeros((1, 3, 64, 64), np.float32))).shape[1])
    # features.project's matrix, made here: inside the trace its cache would not see plain ints
    proj = projection(channels, det.dims) if det.dims is not None and channels > det.dims else None

    class PatchScores(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = backbone.model
            self.layers = tuple(backbone.layers)
            self.register_buffer("mean", torch.from_numpy(np.asarray(backbone.mean, np.float32)).reshape(1, 3, 1, 1))
            self.register_buffer("std", torch.from_numpy(np.asarray(backbone.std, np.float32)).reshape(1, 3, 1, 1))
            self.project = proj is not None
            if proj is not None:
                self.register_buffer("projection", proj.clone())
            self.rs = [int(r) for r in banks]
            for r, bank in banks.items():
                self.register_buffer(f"bank_t_{int(r)}", bank.detach().float().T.contiguous())

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            m: Any = self.model
            mean: Any = self.mean
            std: Any = self.std
            x = (image - mean) / std  # the backbone's input normalisation (its option `normalization`)
            x = m._swish(m._bn0(m._conv_stem(x)))
            outs = []
            for i, block in enumerate(m._blocks[: max(self.layers) + 1]):
                x = block(x)
                if i in self.layers:
                    outs.append(x)
            fmap = combine_layers(outs)
            if self.project:  # features.project
                fmap = torch.einsum("bchw,cd->bdhw", fmap, self.projection).contiguous()
            total = None
            for r in self.rs:
                q = aggregate(fmap, r)  # (N, h*w, D)
                best = torch.matmul(q, getattr(self, f"bank_t_{r}")).amax(dim=-1)
                d = (2.0 - 2.0 * best).clamp_min(0).sqrt() / len(self.rs)
                total = d if total is None else total + d
            assert total is not None
            return total.reshape(fmap.shape[0], fmap.shape[2], fmap.shape[3])

    return PatchScores().eval()


def _features_graph(det: Any):
    """The torch part exported by the TorchScript exporter (works offline, no onnxscript)."""
    import onnx
    import torch

    module = _patch_scorer(det)
    dummy = torch.rand(1, 3, 256, 320, generator=torch.Generator().manual_seed(0))
    # torch >= 2.9 defaults to the dynamo exporter, which needs onnxscript; older ones lack the flag
    legacy = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    try:
        with tempfile.TemporaryDirectory(prefix="genad-onnx-") as tmp, warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            part = os.path.join(tmp, "features.onnx")
            torch.onnx.export(
                module,
                (dummy,),
                part,
                **legacy,  # type: ignore[arg-type]
                opset_version=OPSET,
                input_names=["image"],
                output_names=["patch_scores"],
                dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"}, "patch_scores": {0: "batch"}},
                do_constant_folding=True,
            )
            return onnx.load_model(part)
    except Exception as e:
        raise GenadError(f"torch could not export the backbone to ONNX ({str(e).splitlines()[0]})") from e


# --------------------------------------------------------------------------- after the patches


class _Builder:
    """Appends nodes and constants to a graph with fresh names."""

    def __init__(self, graph: Any) -> None:
        self.g = graph
        self.n = 0

    def _name(self, hint: str) -> str:
        self.n += 1
        return f"genad/{hint}_{self.n}"

    def const(self, value: Any, dtype: Any = None, hint: str = "c") -> str:
        from onnx import numpy_helper

        name = self._name(hint)
        self.g.initializer.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, *inputs: str, out: str | None = None, **attrs: Any) -> str:
        from onnx import helper

        name = out or self._name(op_type.lower())
        self.g.node.append(helper.make_node(op_type, list(inputs), [name], name=name, **attrs))
        return name


def _pil_weights(b: _Builder, n_in: str, n_out: str) -> str:
    """(n_out, n_in) float32 weights of PIL's bilinear resize of one axis (Resample.c's
    precompute_coeffs: triangle filter stretched by the reduction factor when shrinking, taps
    beyond the edges dropped and each row renormalised), computed in float64 as PIL does.
    `n_in`, `n_out`: int64 scalars."""
    from onnx import TensorProto

    fin = b.op("Cast", n_in, to=TensorProto.DOUBLE)
    fout = b.op("Cast", n_out, to=TensorProto.DOUBLE)
    zero, one, half = b.const(0.0, np.float64), b.const(1.0, np.float64), b.const(0.5, np.float64)
    scale = b.op("Div", fin, fout)
    ss = b.op("Div", one, b.op("Max", scale, one))  # 1 / filterscale
    i = b.op("Range", b.const(0, np.int64), n_out, b.const(1, np.int64))
    centre = b.op("Mul", b.op("Add", b.op("Cast", i, to=TensorProto.DOUBLE), half), scale)
    j = b.op("Range", b.const(0, np.int64), n_in, b.const(1, np.int64))
    jc = b.op("Add", b.op("Cast", j, to=TensorProto.DOUBLE), half)  # input pixel centres
    diff = b.op("Sub", b.op("Unsqueeze", jc, b.const([0], np.int64)), b.op("Unsqueeze", centre, b.const([1], np.int64)))
    w = b.op("Max", b.op("Sub", one, b.op("Abs", b.op("Mul", diff, ss))), zero)
    w = b.op("Div", w, b.op("ReduceSum", w, b.const([1], np.int64), keepdims=1))
    return b.op("Cast", w, to=TensorProto.FLOAT)


def _resize(b: _Builder, m: str, src_hw: tuple[str, str], dst_hw: tuple[str, str]) -> str:
    """(N, h, w) -> (N, H, W) as genad.ops.resize_map (PIL bilinear) does: Wh @ m @ Ww^T."""
    wh = _pil_weights(b, src_hw[0], dst_hw[0])
    ww = _pil_weights(b, src_hw[1], dst_hw[1])
    return b.op("MatMul", b.op("MatMul", wh, m), b.op("Transpose", ww, perm=[1, 0]))


def gaussian_kernel(sigma: float, truncate: float = 3.0) -> np.ndarray:
    """scipy.ndimage.gaussian_filter's 1-d kernel (radius int(truncate * sigma + 0.5))."""
    radius = int(truncate * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    phi = np.exp(-0.5 / (float(sigma) * float(sigma)) * x**2)
    return phi / phi.sum()


def _smooth(b: _Builder, m: str, sigma: float) -> str:
    """(N, H, W) Gaussian-smoothed as scipy's gaussian_filter(mode="nearest", truncate=3):
    rows then columns, each an edge-replicating Pad and a 1-d Conv."""
    k = gaussian_kernel(sigma)
    r = (k.size - 1) // 2
    x = b.op("Unsqueeze", m, b.const([1], np.int64))  # (N, 1, H, W)
    x = b.op("Pad", x, b.const([0, 0, r, 0, 0, 0, r, 0], np.int64), mode="edge")
    x = b.op("Conv", x, b.const(k.reshape(1, 1, -1, 1), np.float32))
    x = b.op("Pad", x, b.const([0, 0, 0, r, 0, 0, 0, r], np.int64), mode="edge")
    x = b.op("Conv", x, b.const(k.reshape(1, 1, 1, -1), np.float32))
    return b.op("Squeeze", x, b.const([1], np.int64))


def _with_postprocessing(model: Any, det: Any) -> Any:
    """Patch scores -> map at the working size, smoothed -> map at the input's size -> image
    score, normalised score and decision (EmbeddedDetector.image_map and decide)."""
    from onnx import TensorProto, helper

    g = model.graph
    (patch_out,) = [o.name for o in g.output]
    del g.output[:]
    b = _Builder(g)
    g.input.append(helper.make_tensor_value_info("orig_size", TensorProto.INT64, [2]))

    def dim(shape: str, k: int) -> str:
        return b.op("Squeeze", b.op("Slice", shape, b.const([k], np.int64), b.const([k + 1], np.int64)))

    pshape, ishape = b.op("Shape", patch_out), b.op("Shape", "image")
    grid = (dim(pshape, 1), dim(pshape, 2))
    work = (dim(ishape, 2), dim(ishape, 3))
    orig = (dim("orig_size", 0), dim("orig_size", 1))
    m = _resize(b, patch_out, grid, work)
    if det.sigma > 0:
        m = _smooth(b, m, det.sigma)
    amap = b.op("Identity", _resize(b, m, work, orig), out="anomaly_map")
    n = b.op("Shape", amap, start=0, end=1)
    flat = b.op("Reshape", amap, b.op("Concat", n, b.const([-1], np.int64), axis=0))
    if det.image_score == "max":
        score = b.op("ReduceMax", flat, axes=[1], keepdims=0, out="score")
    else:
        size = b.op("Mul", orig[0], orig[1])
        k = b.op("Max", b.op("Div", size, b.const(100, np.int64)), b.const(1, np.int64))  # max(1, size // 100)
        top = b.op("TopK", flat, b.op("Unsqueeze", k, b.const([0], np.int64)), axis=1)
        b.g.node[-1].output.append(b._name("topk_idx"))
        score = b.op("ReduceMean", top, axes=[1], keepdims=0, out="score")
    cal = det.calibrated(det.calibration_)
    raw_thr = cal.raw_at(det.threshold)
    if cal.kind == "unit":
        t = b.const(cal.threshold, np.float32)
        c = b.op("Clip", score, b.const(0.0, np.float32), b.const(1.0, np.float32))
        low = b.op("Div", b.op("Mul", b.const(0.5, np.float32), c), t)
        high = b.op(
            "Add",
            b.const(0.5, np.float32),
            b.op(
                "Div",
                b.op("Mul", b.const(0.5, np.float32), b.op("Sub", c, t)),
                b.const(1.0 - cal.threshold, np.float32),
            ),
        )
        b.op("Where", b.op("LessOrEqual", c, t), low, high, out="normalized_score")
    else:
        z = b.op("Div", b.op("Sub", score, b.const(cal.threshold, np.float32)), b.const(cal.scale, np.float32))
        z = b.op("Clip", z, b.const(-500.0, np.float32), b.const(500.0, np.float32))
        b.op("Sigmoid", z, out="normalized_score")
    b.op("Greater", score, b.const(raw_thr, np.float32), out="decision")
    for name, typ, shape in (
        ("score", TensorProto.FLOAT, ["batch"]),
        ("anomaly_map", TensorProto.FLOAT, ["batch", "orig_height", "orig_width"]),
        ("normalized_score", TensorProto.FLOAT, ["batch"]),
        ("decision", TensorProto.BOOL, ["batch"]),
    ):
        g.output.append(helper.make_tensor_value_info(name, typ, shape))
    g.name = "genad_embedded"
    return model


# --------------------------------------------------------------------------- metadata


def metadata(det: Any) -> dict[str, str]:
    """The graph's metadata_props: what a station needs to prepare images and decide."""
    import genad

    cal = det.calibrated(det.calibration_)
    raw_thr = cal.raw_at(det.threshold)
    pre = det.preprocessing()
    return {
        "genad.version": genad.__version__,
        "genad.detector": "embedded (few-shot memory bank)",
        "genad.preprocessing": json.dumps(pre),
        "genad.working_scale": repr(float(det.scale_)),
        "genad.resolution": str(int(det.resolution)),
        "genad.working_size": WORKING_SIZE,
        "genad.prepare": PREPARE,
        "genad.inputs": json.dumps(INPUTS),
        "genad.outputs": json.dumps(OUTPUTS),
        "genad.after": "nothing: anomaly_map is already at orig_size and score is genad's score",
        "genad.threshold": json.dumps(
            {
                "raw_threshold": raw_thr if math.isfinite(raw_thr) else None,
                "normalised_threshold": float(det.threshold),
                "calibration": cal.to_dict(),
                "normalise": (
                    "1 / (1 + exp(-(score - threshold) / scale))"
                    if cal.kind == "logistic"
                    else "c = clip(score, 0, 1); c <= t: 0.5 c / t, else 0.5 + 0.5 (c - t) / (1 - t)"
                ),
                "decision": "score > raw_threshold",
            }
        ),
        "genad.bank_patches": json.dumps({str(r): int(t.shape[0]) for r, t in det.bank_.banks.items()}),
        "genad.references": str(int(det.n_refs_)),
    }


def _add_metadata(model: Any, det: Any) -> None:
    import genad

    model.producer_name = "genad"
    model.producer_version = genad.__version__
    model.doc_string = (
        "genad embedded few-shot model: image (working size, [0, 1]) and orig_size -> score, anomaly_map, "
        "normalized_score, decision; see the genad.* metadata"
    )
    del model.metadata_props[:]
    for k, v in metadata(det).items():
        p = model.metadata_props.add()
        p.key, p.value = k, v
