"""ONNX export of a fitted embedded model (genad.engines.embedded.export, `genad export`).

The graph, run by onnxruntime on images prepared exactly as its metadata says (the README
snippet's steps), gives genad's image scores within 1e-4 (measured: <= 5e-7) and its maps within
1e-5 (measured: <= 2e-6), the same normalised scores and decisions; `genad export` writes it end
to end; unfitted models, other backbones and files that are not models are refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from PIL import Image

import genad
from foundation_helpers import run_cli
from genad.engines.embedded import export
from genad.engines.embedded.export import _Builder, _resize, export_onnx, working_size
from genad.engines.embedded.geometry import work_size
from genad.errors import GenadError
from genad.io import load_inputs
from genad.io.images import read_image
from genad.ops import resize_map

ROOT = Path(__file__).resolve().parents[1]
REFS = ROOT / "examples" / "magnetic_tile" / "train" / "good"
TEST = ROOT / "examples" / "magnetic_tile" / "test"

SCORE_TOL = 1e-4
MAP_TOL = 1e-5


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """The default embedded model fitted on the 3 example references, saved and exported once."""
    d = tmp_path_factory.mktemp("onnx")
    det = genad.create("embedded").fit(load_inputs([REFS]))
    model = det.save(d / "station.genad")
    onnx_path = export_onnx(genad.load(model), d / "station.onnx")
    return det, model, onnx_path


def _session(path: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _run_documented(sess: ort.InferenceSession, image_path: Path) -> tuple[float, np.ndarray, float, bool]:
    """The preprocessing of the metadata (and the README), by hand: no genad call but read_image."""
    meta = sess.get_modelmeta().custom_metadata_map
    pre = json.loads(meta["genad.preprocessing"])
    im = read_image(image_path)  # uint8 RGB HxWx3
    h, w = im.shape[:2]
    H, W = working_size(h, w, pre["working_scale"], pre["resolution"])
    x = np.asarray(Image.fromarray(im).resize((W, H), Image.BILINEAR), np.float32).transpose(2, 0, 1)[None] / 255
    score, amap, norm, decision = sess.run(
        ["score", "anomaly_map", "normalized_score", "decision"],
        {"image": x, "orig_size": np.array([h, w], np.int64)},
    )
    return float(score[0]), amap[0], float(norm[0]), bool(decision[0])


def _check_against_genad(det, onnx_path: Path, samples) -> None:
    sess = _session(onnx_path)
    results = det.predict(samples)
    for s, r in zip(samples, results):
        score, amap, norm, decision = _run_documented(sess, Path(s.path))
        assert abs(score - r.score) <= SCORE_TOL, s.id
        assert amap.shape == r.anomaly_map.shape
        np.testing.assert_allclose(amap, r.anomaly_map, atol=MAP_TOL, rtol=0)
        assert abs(norm - r.normalized_score) <= SCORE_TOL
        assert decision == r.decision, s.id


def test_onnxruntime_scores_equal_genads(fitted):
    det, _, onnx_path = fitted
    samples = load_inputs([TEST])
    assert len(samples) == 7
    _check_against_genad(det, onnx_path, samples)


def test_metadata_says_how_to_prepare_and_decide(fitted):
    det, _, onnx_path = fitted
    m = onnx.load(onnx_path, load_external_data=False)
    meta = {p.key: p.value for p in m.metadata_props}
    assert meta["genad.version"] == genad.__version__
    pre = json.loads(meta["genad.preprocessing"])
    assert pre == json.loads(json.dumps(det.preprocessing())) and pre["working_scale"] == det.scale_
    assert float(meta["genad.working_scale"]) == det.scale_
    thr = json.loads(meta["genad.threshold"])
    assert thr["raw_threshold"] == pytest.approx(det.calibration_.threshold)  # threshold 0.5: the boundary
    assert thr["calibration"] == det.calibration_.to_dict() and thr["normalised_threshold"] == 0.5
    assert [i.name for i in m.graph.input] == ["image", "orig_size"]
    assert [o.name for o in m.graph.output] == ["score", "anomaly_map", "normalized_score", "decision"]
    # the documented working size is genad's own for any image shape
    namespace: dict = {}
    exec("import math\n" + meta["genad.working_size"], namespace)
    for h, w in [(195, 319), (502, 308), (20, 24), (4000, 3000), (100, 2500), (33, 33)]:
        want = work_size(h, w, det.scale_, 32, det.resolution)
        assert namespace["working_size"](h, w, det.scale_, det.resolution) == want
        assert working_size(h, w, det.scale_, det.resolution) == want


def test_other_settings_and_batches(tmp_path, monkeypatch):
    """One reference (flipped views calibrate it), a coarse resolution with the stride-8+16 grid,
    random projection, two aggregation sizes, the max image score, other sigma and threshold;
    a batch of two images of one size; the bank in a side file (as a bank above 1.5 GB would be)."""
    det = genad.create(
        "embedded", resolution=128, dims=64, aggregation=(1, 3), image_score="max", sigma=2.0, threshold=0.7
    ).fit(load_inputs([REFS])[:1])
    monkeypatch.setattr(export, "EXTERNAL_DATA_BYTES", 0)
    path = export_onnx(det, tmp_path / "m.onnx")
    assert (tmp_path / "m.onnx.data").stat().st_size > path.stat().st_size
    samples = load_inputs([TEST])[::3]  # 3 of the 7 images, of three sizes: the first test covers all
    _check_against_genad(det, path, samples)
    sess = _session(path)
    im = read_image(samples[0].path)
    h, w = im.shape[:2]
    H, W = working_size(h, w, det.scale_, det.resolution)
    x = np.asarray(Image.fromarray(im).resize((W, H), Image.BILINEAR), np.float32).transpose(2, 0, 1)[None] / 255
    batch = np.concatenate([x, x[:, :, ::-1, ::-1]])
    scores, maps = sess.run(["score", "anomaly_map"], {"image": batch, "orig_size": np.array([h, w], np.int64)})
    assert scores.shape == (2,) and maps.shape == (2, h, w)
    assert abs(scores[0] - det.predict(samples[:1])[0].score) <= SCORE_TOL


def test_the_map_resizes_are_pils():
    """The graph's matrix-product resize equals genad.ops.resize_map (PIL bilinear), enlarging,
    shrinking (antialiased) and both at once."""
    g = helper.make_graph(
        [],
        "r",
        [
            helper.make_tensor_value_info("m", TensorProto.FLOAT, ["n", "h", "w"]),
            helper.make_tensor_value_info("src", TensorProto.INT64, [2]),
            helper.make_tensor_value_info("dst", TensorProto.INT64, [2]),
        ],
        [],
    )
    b = _Builder(g)
    sizes = []
    for name in ("src", "dst"):
        for k in (0, 1):
            sizes.append(b.op("Squeeze", b.op("Slice", name, b.const([k], np.int64), b.const([k + 1], np.int64))))
    b.op("Identity", _resize(b, "m", (sizes[0], sizes[1]), (sizes[2], sizes[3])), out="out")
    g.output.append(helper.make_tensor_value_info("out", TensorProto.FLOAT, None))
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for (h, w), (H, W) in [
        ((16, 20), (256, 320)),
        ((256, 384), (195, 314)),
        ((384, 256), (502, 308)),
        ((40, 30), (17, 100)),
        ((64, 64), (64, 64)),
        ((7, 3), (1000, 1)),
    ]:
        a = rng.random((h, w), dtype=np.float32)
        out = sess.run(None, {"m": a[None], "src": np.array([h, w]), "dst": np.array([H, W])})[0][0]
        np.testing.assert_allclose(out, resize_map(a, (H, W)), atol=1e-6, rtol=0)


def test_cli_export_end_to_end(fitted, tmp_path, capsys):
    det, model, _ = fitted
    out = tmp_path / "cli" / "station.onnx"
    code, stdout, err = run_cli(["export", model, "--onnx", out], capsys)
    assert code == 0, err
    assert out.is_file() and str(out) in stdout
    sample = load_inputs([TEST / "good"])[0]
    score = _run_documented(_session(out), Path(sample.path))[0]
    assert abs(score - det.predict([sample])[0].score) <= SCORE_TOL


def test_refusals(fitted, tmp_path, capsys):
    det, _, _ = fitted
    unfitted = genad.create("embedded").save(tmp_path / "zero.genad")
    code, _, err = run_cli(["export", unfitted, "--onnx", tmp_path / "z.onnx"], capsys)
    assert code == 2 and "not fitted" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "z.onnx").exists()
    image = next((TEST / "good").iterdir())
    code, _, err = run_cli(["export", image, "--onnx", tmp_path / "i.onnx"], capsys)
    assert code == 2 and "not a genad model file" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(["export", tmp_path / "missing.genad", "--onnx", tmp_path / "m.onnx"], capsys)
    assert code == 2 and "no such model file" in err
    other = genad.create("embedded", backbone="dinov2-s")
    other.bank_, other.scale_, other.calibration_ = det.bank_, det.scale_, det.calibration_
    with pytest.raises(GenadError, match="effnet-lite"):
        export_onnx(other, tmp_path / "d.onnx")
    with pytest.raises(GenadError, match="not fitted"):
        export_onnx(genad.create("embedded"), tmp_path / "u.onnx")


def test_the_documented_snippet_reproduces_genad(fitted, tmp_path, monkeypatch):
    """docs/embedded.md's onnxruntime snippet (the README's), run as written on a test image."""
    det, _, onnx_path = fitted
    text = (ROOT / "docs" / "embedded.md").read_text(encoding="utf-8")
    section = text.split("### ONNX export", 1)[1]
    snippet = section.split("```python\n", 1)[1].split("```", 1)[0]
    sample = load_inputs([TEST / "crack"])[0]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "station.onnx").symlink_to(onnx_path)
    (tmp_path / "part.png").symlink_to(Path(sample.path).resolve())  # the name is the snippet's; PIL reads the jpeg
    namespace: dict = {}
    exec(compile(snippet, "docs/embedded.md", "exec"), namespace)
    r = det.predict([sample])[0]
    assert abs(float(namespace["score"][0]) - r.score) <= SCORE_TOL
    np.testing.assert_allclose(namespace["anomaly_map"][0], r.anomaly_map, atol=MAP_TOL, rtol=0)
    assert bool(namespace["decision"][0]) == r.decision
