"""Heatmaps, overlays and the detect index page."""

import numpy as np
import pytest

from genad.report.detect_index import IndexRow, render_detect_index, write_detect_index
from genad.report.overlay import heatmap_rgb, overlay
from genad.types import Region, Result


def test_heatmap_is_jet_like():
    m = np.array([[0.0, 0.5, 1.0]])
    h = heatmap_rgb(m)
    assert h.dtype == np.uint8 and h.shape == (1, 3, 3)
    assert tuple(h[0, 0]) == (0, 0, 128)  # low = dark blue
    assert h[0, 1, 1] > 200 and h[0, 1, 0] < 160 and h[0, 1, 2] < 160  # middle = green
    assert tuple(h[0, 2]) == (128, 0, 0)  # high = dark red


def test_heatmap_vmin_vmax_clip_and_constant_maps():
    h = heatmap_rgb(np.array([[-5.0, 5.0]]), vmin=0.0, vmax=1.0)
    assert tuple(h[0, 0]) == (0, 0, 128) and tuple(h[0, 1]) == (128, 0, 0)
    flat = heatmap_rgb(np.full((4, 4), 3.0))
    assert (flat == flat[0, 0]).all() and tuple(flat[0, 0]) == (0, 0, 128)
    nan = heatmap_rgb(np.array([[np.nan, 1.0, 0.0]]))
    assert tuple(nan[0, 0]) == (0, 0, 128)  # NaN never looks like a defect
    with pytest.raises(ValueError):
        heatmap_rgb(np.zeros((2, 2, 2)))


def test_overlay_resizes_the_map_and_blends():
    img = np.full((40, 60, 3), 100, np.uint8)
    amap = np.zeros((10, 15), np.float32)
    amap[:, 10:] = 1.0  # right third is hot
    out = overlay(img, amap, alpha=0.5)
    assert out.shape == (40, 60, 3) and out.dtype == np.uint8
    assert out[20, 55, 0] > out[20, 55, 2]  # red on the right
    assert out[20, 5, 2] > out[20, 5, 0]  # blue on the left
    assert (overlay(img, amap, alpha=0.0) == img).all()


def test_overlay_draws_numbered_region_boxes():
    img = np.zeros((80, 80, 3), np.uint8)
    amap = np.zeros((80, 80))
    out = overlay(img, amap, alpha=0.0, regions=[Region(0.9, box=(20, 30, 60, 70), index=1)])
    assert (out[30, 40] == 255).all() and (out[50, 20] == 255).all()  # box edges in white
    assert (out[50, 40] == 0).all()  # inside untouched
    # A region with only a mask gets a box around it.
    mask = np.zeros((80, 80), bool)
    mask[5:10, 5:15] = True
    out2 = overlay(img, amap, alpha=0.0, regions=[Region(0.5, mask=mask)])
    assert (out2[5, 10] == 255).all()


def test_detect_index_escapes_and_orders(tmp_path):
    rows = [
        IndexRow(Result("low.png", score=0.1, decision=False)),
        IndexRow(Result("bad.png", error="cannot read image bad.png")),
        IndexRow(
            Result(
                "high.png",
                score=0.9,
                decision=True,
                explanation="<script>x</script>",
                regions=[Region(0.8, box=(1, 2, 3, 4), index=1)],
            ),
            thumb="data:image/jpeg;base64,AAAA",
            link="overlays/high.png",
        ),
    ]
    html = render_detect_index(rows)
    assert "<script>x</script>" not in html and "&lt;script&gt;" in html
    assert html.index("high.png") < html.index("low.png") < html.index("bad.png")
    assert "3 inputs, 1 anomalous, 1 failed" in html
    path = write_detect_index(tmp_path / "o", rows)
    assert path.read_text(encoding="utf-8") == html


def test_threshold_scale_keeps_sub_threshold_maps_cool():
    from genad.report.overlay import threshold_scale

    quiet = np.linspace(0.0, 0.5, 100).reshape(10, 10)
    lo, hi = threshold_scale(quiet, threshold=1.0)
    assert lo == 0.0 and hi == pytest.approx(1.0 / 0.75)
    assert heatmap_rgb(quiet, lo, hi)[..., 0].max() < 128  # no red anywhere
    loud = quiet.copy()
    loud[0, 0] = 3.0
    lo, hi = threshold_scale(loud, threshold=1.0)
    assert hi == 3.0 and tuple(heatmap_rgb(loud, lo, hi)[0, 0]) == (128, 0, 0)
    assert threshold_scale(quiet, None) == (None, None)
