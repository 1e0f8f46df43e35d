"""Saved models (genad.model_file): every detector that fits comes back from its file with the
same scores, the file holds no pickle and no secret, and loading refuses, with one line, real
corrupt, truncated and mismatched files and files that are not genad models."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import genad
from fake_openai import FakeOpenAI, reply
from foundation_helpers import run_cli
from genad.errors import GenadError
from genad.io import load_inputs
from genad.modalities.pointcloud.synth import make_dataset
from genad.model_file import MANIFEST, ModelFileError, load_detector, read_manifest
from genad.types import ImageSample, TimeSeriesSample, VideoSample
from lmm_helpers import grep_tree, solid
from video_helpers import moving_square_frames

ROOT = Path(__file__).resolve().parents[1]
REFS = ROOT / "examples" / "magnetic_tile" / "train" / "good"
TEST = ROOT / "examples" / "magnetic_tile" / "test"


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """An embedded model fitted on the example references, saved once."""
    det = genad.create("embedded").fit(load_inputs([REFS]))
    path = det.save(tmp_path_factory.mktemp("m") / "station.genad")
    return det, path


def _same(a, b, tol=0.0):
    assert [r.sample_id for r in a] == [r.sample_id for r in b]
    for x, y in zip(a, b):
        assert x.error == y.error
        if x.score is None:
            continue
        assert abs(x.score - y.score) <= tol and x.decision == y.decision
        assert x.threshold == pytest.approx(y.threshold, abs=tol)
        if x.anomaly_map is not None:
            np.testing.assert_allclose(x.anomaly_map, y.anomaly_map, atol=max(tol, 1e-7))


def test_embedded_round_trip_gives_identical_scores_and_maps(fitted):
    det, path = fitted
    test = load_inputs([TEST])
    back = genad.load(path)
    assert type(back) is type(det) and back.params == det.params and back.fitted_
    assert back.capabilities() == det.capabilities()  # few-shot: streams, any batch size
    _same(det.predict(test), back.predict(test))
    m = read_manifest(path)
    assert m["detector"] == "embedded" and m["references"]["count"] == 3
    assert m["backbone"][0]["name"] == "effnet-lite0" and len(m["backbone"][0]["sha256"]) == 64
    assert m["preprocessing"]["resolution"] == 320 and m["preprocessing"]["working_scale"] == det.scale_
    assert m["threshold"]["normalised"] == 0.5 and m["threshold"]["calibration"] is not None


def test_the_file_is_a_zip_of_json_and_npy_without_pickle(fitted):
    _, path = fitted
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        assert names[0] == MANIFEST and all(n == MANIFEST or n.startswith("arrays/") for n in names)
        for n in names[1:]:
            a = np.lib.format.read_array(io.BytesIO(z.read(n)), allow_pickle=False)  # would raise on pickles
            assert a.dtype != object
        assert b"\x80\x04" not in z.read(MANIFEST)  # no pickle protocol header in the manifest


@pytest.mark.parametrize(
    "name,make",
    [
        ("baseline", lambda: (genad.create("baseline", grid=16), "image")),
        ("ts-matrix-profile", lambda: (genad.create("ts-matrix-profile"), "series")),
        ("ts-iforest", lambda: (genad.create("ts-iforest"), "series")),
    ],
)
def test_other_detectors_round_trip(name, make, tmp_path):
    det, kind = make()
    if kind == "image":
        refs, test = load_inputs([REFS]), load_inputs([TEST])
    else:
        rng = np.random.default_rng(0)
        refs = [
            TimeSeriesSample(id=f"n{i}", values=np.sin(np.arange(300) / 5) + rng.normal(0, 0.05, 300)) for i in range(2)
        ]
        x = np.sin(np.arange(300) / 5)
        x[200:205] += 4
        test = [TimeSeriesSample(id="t", values=x)]
    det.fit(refs)
    back = genad.load(det.save(tmp_path / f"{name}.genad"))
    assert back.name == name
    _same(det.predict(test), back.predict(test))


def test_point_cloud_and_video_keep_their_inner_image_detectors(tmp_path):
    train, test = make_dataset("plane", n_train=2, n_normal=2, n_defective=2, n_points=2000, seed=3)
    pc = genad.create("pointcloud", image_detector="baseline", image_params={"grid": 16}, views=2).fit(train)
    back = genad.load(pc.save(tmp_path / "pc.genad"))
    assert [type(d).__name__ for d in back.view_detectors_] == ["BaselineDetector"] * 2
    _same(pc.predict(test), back.predict(test))

    fast = {"resolution": 64, "strides": "8,16"}
    video = genad.create("video", image_params=fast).fit(
        [VideoSample(id="n", frames=moving_square_frames(24, anomaly=False))]
    )
    vback = genad.load(video.save(tmp_path / "v.genad"))
    clip = [VideoSample(id="v", frames=moving_square_frames(60))]
    _same(video.predict(clip), vback.predict(clip), tol=1e-6)
    assert read_manifest(tmp_path / "v.genad")["backbone"][0]["name"] == "effnet-lite0"  # the inner engine's


def test_lmm_detectors_keep_settings_and_references_never_the_key(tmp_path):
    key = "sk-model-file-SECRET-1234"
    answer = '{"reason": "clean", "anomalous": false, "anomaly_score": 0.1}'
    with FakeOpenAI([reply(answer)]) as srv:
        det = genad.create("lmm", base_url=srv.base_url, model="m", api_key=key, cache_dir=None, variant="naive")
        ref = ImageSample(id="ref", array=solid((10, 200, 10)), class_name="tile")
        det.fit([ref])
        path = det.save(tmp_path / "lmm.genad")
        assert grep_tree(tmp_path, key) == []
        back = genad.load(path)
        assert back.base_url == srv.base_url and back.api_key is None  # the key comes from the environment
        assert [r.id for r in back.references_] == ["ref"] and back.references_[0].class_name == "tile"
        np.testing.assert_array_equal(back.references_[0].load(), ref.load())
        back.set_params(api_key=key)
        (r,) = back.predict([ImageSample(id="x", array=solid((200, 10, 10)))])
        assert r.score == 0.1
        assert len(srv.images_in(srv.chat_requests()[0])) == 2  # the saved reference, then the image


def test_look_twice_keeps_its_fitted_engine_and_video_rules_its_rules(tmp_path):
    lt = genad.create("lmm+embedded", embedded="baseline", embedded_params={"grid": 16}, model="m", api_key="k")
    lt.fit(load_inputs([REFS]))
    back = genad.load(lt.save(tmp_path / "lt.genad"))
    assert back.engine.center_ is not None and len(back.references_) == 3
    np.testing.assert_array_equal(back.engine.center_, lt.engine.center_)

    vr = genad.create("video-rules", rules={"normal": ["a square moves"], "abnormal": ["a red square"]})
    vr.rules_ = vr._given_rules
    back2 = genad.load(vr.save(tmp_path / "vr.genad"))
    assert back2.rules_.normal == ["a square moves"] and back2.rules_.abnormal == ["a red square"]


# --------------------------------------------------------------------------- refusals


def _rewrite(src: Path, dst: Path, edit) -> Path:
    """A copy of model file `src` whose manifest went through `edit`."""
    with zipfile.ZipFile(src) as z, zipfile.ZipFile(dst, "w") as out:
        for n in z.namelist():
            data = z.read(n)
            if n == MANIFEST:
                m = json.loads(data)
                edit(m)
                data = json.dumps(m).encode()
            out.writestr(n, data)
    return dst


def test_another_format_version_is_refused(fitted, tmp_path):
    bad = _rewrite(fitted[1], tmp_path / "v2.genad", lambda m: m.update(format_version=2, genad_version="9.0"))
    with pytest.raises(ModelFileError, match=r"model format 2 \(written by genad '9.0'\).*reads format 1"):
        genad.load(bad)


def test_other_backbone_weights_are_refused(fitted, tmp_path):
    def other_weights(m):
        m["model"]["weights"] = {"effnet-lite0": "0" * 64}

    bad = _rewrite(fitted[1], tmp_path / "w.genad", other_weights)
    with pytest.raises(ModelFileError, match="other weights of backbone 'effnet-lite0'.*refit"):
        genad.load(bad)

    def missing_backbone(m):
        m["model"]["weights"] = {"onnx:/nowhere/model.onnx": "1" * 64}

    bad2 = _rewrite(fitted[1], tmp_path / "w2.genad", missing_backbone)
    with pytest.raises(ModelFileError, match="not available here"):
        genad.load(bad2)


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.97])
def test_a_truncated_file_is_refused(fitted, tmp_path, keep):
    data = fitted[1].read_bytes()
    bad = tmp_path / "cut.genad"
    bad.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ModelFileError, match="not a genad model file, or it is truncated or corrupt"):
        genad.load(bad)


def test_a_corrupt_array_is_refused(fitted, tmp_path):
    data = bytearray(fitted[1].read_bytes())
    with zipfile.ZipFile(fitted[1]) as z:
        info = next(i for i in z.infolist() if i.filename.startswith("arrays/"))
    at = info.header_offset + 30 + len(info.filename) + 500  # inside the stored (uncompressed) array
    data[at] ^= 0xFF
    bad = tmp_path / "flip.genad"
    bad.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="corrupt"):
        genad.load(bad)


def test_an_array_whose_checksum_does_not_match_is_refused(fitted, tmp_path):
    def wrong_sum(m):
        name = next(iter(m["arrays"]))
        m["arrays"][name]["sha256"] = "f" * 64

    bad = _rewrite(fitted[1], tmp_path / "sum.genad", wrong_sum)
    with pytest.raises(ModelFileError, match="does not match its checksum"):
        genad.load(bad)


def test_files_that_are_not_genad_models_are_refused(tmp_path):
    png = tmp_path / "image.genad"
    Image.fromarray(solid((1, 2, 3))).save(png, format="PNG")
    text = tmp_path / "notes.genad"
    text.write_text("hello")
    other_zip = tmp_path / "other.zip"
    with zipfile.ZipFile(other_zip, "w") as z:
        z.writestr("data.json", "{}")
    wrong_kind = tmp_path / "kind.genad"
    with zipfile.ZipFile(wrong_kind, "w") as z:
        z.writestr(MANIFEST, json.dumps({"format": "something-else"}))
    for p in (png, text):
        with pytest.raises(ModelFileError, match="not a genad model file"):
            genad.load(p)
    for p in (other_zip, wrong_kind):
        with pytest.raises(ModelFileError, match="is not a genad model file"):
            genad.load(p)
    with pytest.raises(ModelFileError, match="no such model file"):
        genad.load(tmp_path / "missing.genad")
    with pytest.raises(ModelFileError, match="is a folder"):
        genad.load(tmp_path)


def test_a_file_cannot_name_code_to_run(fitted, tmp_path):
    def evil_value(m):
        m["model"]["state"]["calibration_"] = {"$value": "os.system", "fields": {"command": "touch /tmp/pwned"}}

    with pytest.raises(ModelFileError, match="unknown value type"):
        genad.load(_rewrite(fitted[1], tmp_path / "evil.genad", evil_value))

    def evil_detector(m):
        m["model"]["name"] = "os.system"

    with pytest.raises(ModelFileError, match="not available here|cannot be made here"):
        genad.load(_rewrite(fitted[1], tmp_path / "evil2.genad", evil_detector))

    # an object array (what a pickle would need) is refused by the reader
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)

    def object_array(m):
        name = next(iter(m["arrays"]))
        m["arrays"][name]["sha256"] = __import__("hashlib").sha256(buf.getvalue()).hexdigest()
        m["_object_array"] = name

    bad = _rewrite(fitted[1], tmp_path / "obj.genad", object_array)
    name = json.loads(zipfile.ZipFile(bad).read(MANIFEST))["_object_array"]
    with zipfile.ZipFile(bad) as z:
        entries = {n: z.read(n) for n in z.namelist()}
    entries[f"arrays/{name}.npy"] = buf.getvalue()
    with zipfile.ZipFile(bad, "w") as z:
        for n, d in entries.items():
            z.writestr(n, d)
    with pytest.raises(ModelFileError, match="cannot be read"):
        load_detector(bad)


def test_saving_an_unsaveable_state_is_a_clear_error(tmp_path):
    det = genad.create("baseline")
    det.center_ = object()  # not a value a model file holds
    with pytest.raises(GenadError, match="cannot save"):
        det.save(tmp_path / "x.genad")
    assert not (tmp_path / "x.genad").exists()


# --------------------------------------------------------------------------- the command line


def test_fit_info_detect_and_eval_with_a_saved_model(tmp_path, capsys):
    model = tmp_path / "station.genad"
    code, out, err = run_cli(["fit", REFS, "--save", model, "--calibrate", TEST, "--target-fpr", "0.2"], capsys)
    assert code == 0, err
    assert "fitted embedded on 3 normal examples" in out and "saved" in out
    code, out, _ = run_cli(["info", model], capsys)
    assert code == 0 and "effnet-lite0 sha256" in out and "references" in out and "target-fpr" in out
    code, out, _ = run_cli(["info", model, "--json"], capsys)
    shown = json.loads(out)
    assert shown["detector"] == "embedded" and shown["calibrated"]["target_fpr"] == 0.2
    threshold = shown["params"]["threshold"]

    saved = genad.load(model)
    assert saved.threshold == pytest.approx(threshold)
    code, out, err = run_cli(["detect", TEST, "--model", model, "--out", tmp_path / "o"], capsys)
    assert code == 0, err
    rows = [json.loads(x) for x in (tmp_path / "o" / "results.jsonl").read_text().splitlines()]
    want = {r.sample_id: r.score for r in saved.predict(load_inputs([TEST]))}
    assert {r["id"]: r["score"] for r in rows} == pytest.approx(want)
    assert json.loads((tmp_path / "o" / "config.json").read_text())["model"] == str(model)

    # refusals: references and a model, another detector, a model for another kind of input
    code, _, err = run_cli(["detect", TEST, "--model", model, "--normal", REFS], capsys)
    assert code == 2 and "not both" in err
    code, _, err = run_cli(["detect", TEST, "--model", model, "-d", "baseline"], capsys)
    assert code == 2 and "holds a 'embedded' model" in err
    csv = tmp_path / "s.csv"
    csv.write_text("v\n" + "\n".join(str(i % 7) for i in range(100)))
    code, _, err = run_cli(["detect", csv, "--model", model], capsys)
    assert code == 2 and "reads image, not timeseries" in err
    broken = tmp_path / "broken.genad"
    broken.write_bytes(model.read_bytes()[:1000])
    code, _, err = run_cli(["detect", TEST, "--model", broken], capsys)
    assert code == 2 and "truncated or corrupt" in err and "Traceback" not in err


def test_eval_with_a_saved_model_does_not_fit(fitted, tmp_path, capsys, monkeypatch):
    import shutil

    from genad.engines.embedded.detector import EmbeddedDetector

    data = tmp_path / "magnetic_tile"
    for src in sorted(TEST.rglob("*.jpg")):
        dst = data / src.relative_to(TEST.parent)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dst)

    def no_fit(self, samples):
        raise AssertionError("a saved model must not be fitted again")

    monkeypatch.setattr(EmbeddedDetector, "fit", no_fit)
    code, out, err = run_cli(["eval", data, "--model", fitted[1], "--json", tmp_path / "s.json", "-q"], capsys)
    assert code == 0, err
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["fitted_before"]["references"] == 3 and summary["n_scored"] == 7
    assert "fitted before on 3 references" in out
    code, _, err = run_cli(["eval", data, "--model", fitted[1], "--shots", "2"], capsys)
    assert code == 2 and "not both" in err


def test_a_saved_model_can_be_edited_like_a_detector(fitted, tmp_path):
    back = genad.load(fitted[1])
    back.set_params(threshold=0.9)
    assert back.threshold == 0.9 and back.bank_ is not None  # options change, the fitted state stays
    clone = back.clone()
    assert clone.bank_ is None and clone.threshold == 0.9  # a clone is unfitted, as in scikit-learn
