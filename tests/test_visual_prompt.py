"""Region division and set-of-mark images (GPT-4V-AD visual prompting)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from genad.engines.lmm.visual_prompt import (
    divide,
    font_size_for,
    mark_positions,
    masks_to_labels,
    region_boxes,
    render_set_of_mark,
    save_visual_prompt,
)
from genad.errors import GenadError
from genad.types import Region, Result, VisualPrompt


def textured(h: int = 120, w: int = 160, seed: int = 0) -> np.ndarray:
    """A smooth two-tone picture with noise: enough structure for SLIC to find segments."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.where((xx // 40 + yy // 30) % 2 == 0, 60, 190).astype(np.float64)
    img = base[:, :, None] + np.array([0.0, 20.0, -20.0]) + rng.normal(0, 6, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def assert_partition(masks: list[np.ndarray], shape: tuple[int, int]) -> None:
    stack = np.stack(masks)
    assert stack.shape[1:] == shape
    assert stack.dtype == bool
    np.testing.assert_array_equal(stack.sum(axis=0), np.ones(shape, dtype=int))
    assert all(m.any() for m in masks)


@pytest.mark.parametrize("n,shape", [(1, (10, 10)), (3, (10, 11)), (4, (120, 160)), (7, (97, 53))])
def test_grid_is_a_partition_of_n_by_n_cells(n, shape):
    img = np.zeros((*shape, 3), dtype=np.uint8)
    masks = divide(img, "grid", n)
    assert len(masks) == n * n
    assert_partition(masks, shape)
    # row-major order: cell 1 holds the top-left pixel, cell n the top-right, n*n the bottom-right
    assert masks[0][0, 0] and masks[n - 1][0, -1] and masks[-1][-1, -1]
    # cells are near-equal rectangles
    areas = [m.sum() for m in masks]
    assert max(areas) - min(areas) <= (shape[0] // n + 1) + (shape[1] // n + 1) + 1


def test_grid_cells_are_the_expected_rectangles():
    masks = divide(np.zeros((4, 6, 3), np.uint8), "grid", 2)
    expected = np.array([[1, 1, 1, 2, 2, 2]] * 2 + [[3, 3, 3, 4, 4, 4]] * 2)
    np.testing.assert_array_equal(masks_to_labels(masks), expected)


def test_slic_is_a_partition_near_the_asked_count():
    img = textured()
    masks = divide(img, "slic", 12)
    assert 4 <= len(masks) <= 24
    assert_partition(masks, img.shape[:2])
    # superpixels follow edges: the checker squares are not split across by much
    labels = masks_to_labels(masks)
    assert len(np.unique(labels)) == len(masks)


def test_proposals_from_a_map_rank_by_peak_and_add_background():
    img = np.zeros((100, 100, 3), np.uint8)
    amap = np.zeros((100, 100), np.float32)
    amap[10:20, 10:20] = 0.6  # second
    amap[60:80, 50:90] = 0.9  # first
    amap[40:45, 5:10] = 0.7  # third
    masks = divide(img, "proposals", 2, anomaly_map=amap)
    assert len(masks) == 3  # two proposals + background
    assert_partition(masks, (100, 100))
    assert masks[0][70, 70] and masks[0].sum() == 20 * 40
    assert masks[1][42, 7] and masks[1].sum() == 25
    assert masks[2][15, 15]  # the third blob is now part of the background


def test_proposals_from_a_low_resolution_map_and_from_regions():
    img = np.zeros((64, 64, 3), np.uint8)
    small = np.zeros((16, 16), np.float32)
    small[4:8, 4:8] = 1.0
    masks = divide(img, "proposals", 3, anomaly_map=small, background=False)
    assert len(masks) == 1 and masks[0].shape == (64, 64)
    ys, xs = np.nonzero(masks[0])
    assert 14 <= ys.min() <= 18 and 30 <= ys.max() <= 33 and 14 <= xs.min() <= 18

    r_low = Region(score=0.2, box=(0, 0, 10, 10))
    m_high = np.zeros((64, 64), bool)
    m_high[5:20, 5:20] = True
    r_high = Region(score=0.9, mask=m_high)
    masks = divide(img, "proposals", 3, regions=[r_low, r_high])
    assert_partition(masks, (64, 64))
    np.testing.assert_array_equal(masks[0], m_high)  # highest score first
    assert masks[1].sum() == 100 - 25  # the overlap stays with the higher-ranked region


def test_divide_mistakes_raise_one_line_errors():
    img = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(GenadError, match="choose one of grid, slic, proposals"):
        divide(img, "voronoi")
    with pytest.raises(GenadError, match="smaller n"):
        divide(img, "grid", 9)
    with pytest.raises(GenadError, match="anomaly map or regions"):
        divide(img, "proposals")


def test_set_of_mark_has_readable_numbers_at_the_marked_points():
    img = np.full((200, 300, 3), 128, np.uint8)
    masks = divide(img, "grid", 3)
    som = render_set_of_mark(img, masks)
    assert som.shape == img.shape and som.dtype == np.uint8
    positions = mark_positions(masks)
    boxes = region_boxes(masks_to_labels(masks), 9)
    size = font_size_for((200, 300), 9)
    assert size == round(200 / 18)
    for (x, y), (x0, y0, x1, y1) in zip(positions, boxes):
        assert x0 <= x < x1 and y0 <= y < y1  # the number sits inside its region
        patch = som[y - size // 2 : y + size // 2, x - size // 2 : x + size // 2]
        # a black box with white digits: both far from the flat grey around them
        assert (patch.max(axis=2) < 40).mean() > 0.3
        assert (patch.min(axis=2) > 150).mean() > 0.05
    # far from numbers and boundaries the picture is untouched
    np.testing.assert_array_equal(som[5:15, 40:60], img[5:15, 40:60])
    # boundaries are drawn between cells (column 100 is the first/second cell edge)
    assert (som[:, 99:101].reshape(-1, 3) != 128).any(axis=1).mean() > 0.8


def test_set_of_mark_font_scales_with_the_image_and_numbers_differ():
    small = np.full((360, 360, 3), 200, np.uint8)
    big = np.full((900, 900, 3), 200, np.uint8)
    ms, mb = divide(small, "grid", 2), divide(big, "grid", 2)
    assert (font_size_for((360, 360), 4), font_size_for((900, 900), 4)) == (20, 50)
    assert font_size_for((60, 60), 4) == 10  # never below 10 px
    som_s, som_b = render_set_of_mark(small, ms), render_set_of_mark(big, mb)
    ink_s = (som_s != 200).any(axis=2).mean()
    ink_b = (som_b != 200).any(axis=2).mean()
    assert abs(ink_s - ink_b) < 0.05  # same share of the picture: the marks scaled with it
    # the drawn labels of regions 1 and 4 differ ("1" vs "4")
    (x1, y1), _, _, (x4, y4) = mark_positions(mb)
    s = font_size_for((900, 900), 4)
    p1 = som_b[y1 - s : y1 + s, x1 - s : x1 + s]
    p4 = som_b[y4 - s : y4 + s, x4 - s : x4 + s]
    assert np.abs(p1.astype(int) - p4.astype(int)).sum() > 0


def test_small_region_label_goes_beside_it_not_over_it():
    img = np.full((300, 300, 3), 128, np.uint8)
    small = np.zeros((300, 300), bool)
    small[140:150, 140:150] = True
    som = render_set_of_mark(img, [small, ~small])
    inner = som[142:148, 142:148]
    np.testing.assert_array_equal(inner, img[142:148, 142:148])  # the defect stays visible
    above = som[125:139, 140:150]
    assert (above.max(axis=2) < 40).mean() > 0.4  # its number box is just above it


def test_save_visual_prompt_writes_som_label_image_and_json(tmp_path):
    img = textured(60, 80)
    masks = divide(img, "grid", 2)
    som = render_set_of_mark(img, masks)
    labels = masks_to_labels(masks).astype(np.uint8)
    res = Result(
        sample_id="a.png",
        score=0.8,
        regions=[Region(score=0.8, index=3, label="scratch", explanation="thin line")],
        visual_prompt=VisualPrompt(labels, "grid:2", som),
    )
    paths = save_visual_prompt(tmp_path / "vp", res)
    np.testing.assert_array_equal(np.asarray(Image.open(paths["som"])), som)
    np.testing.assert_array_equal(np.asarray(Image.open(paths["regions"])), labels)
    meta = json.loads(paths["json"].read_text())
    assert meta["method"] == "grid:2" and len(meta["regions"]) == 4
    r3 = meta["regions"][2]
    assert r3["index"] == 3 and r3["score"] == 0.8 and r3["label"] == "scratch"
    assert r3["box"] == [0, 30, 40, 60] and r3["area"] == 1200
    assert meta["regions"][0]["score"] is None

    with pytest.raises(GenadError, match="no visual prompt"):
        save_visual_prompt(tmp_path, Result(sample_id="b"))


def test_save_visual_prompt_redraws_a_dropped_set_of_mark_from_the_image(tmp_path):
    img = textured(60, 80)
    masks = divide(img, "grid", 3)
    res = Result(sample_id="a.png", visual_prompt=VisualPrompt(masks_to_labels(masks).astype(np.uint8), "grid:3"))
    paths = save_visual_prompt(tmp_path, res, image=img)
    np.testing.assert_array_equal(np.asarray(Image.open(paths["som"])), render_set_of_mark(img, masks))


def test_thin_and_large_regions_get_a_mark_point_inside_them():
    thin = np.zeros((400, 400), bool)
    thin[10:390, 201] = True  # one pixel wide, longer than the 128-px subsampling
    blob = np.zeros((400, 400), bool)
    blob[50:350, 20:180] = True
    for m, (x, y) in zip([thin, blob], mark_positions([thin, blob])):
        assert m[y, x]
    x, y = mark_positions([blob])[0]
    assert abs(x - 100) <= 4 and abs(y - 200) <= 80  # near the middle, far from the edges
