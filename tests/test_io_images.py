"""Images of any mode and size come out as uint8 RGB HxWx3, the way a person sees them."""

import numpy as np
import pytest
from PIL import Image

from foundation_helpers import truncate
from genad.errors import GenadError
from genad.io.images import image_size, read_image, read_mask


def test_grey_becomes_three_equal_channels(tmp_path):
    a = np.arange(12 * 7, dtype=np.uint8).reshape(12, 7)
    Image.fromarray(a, mode="L").save(tmp_path / "g.png")
    out = read_image(tmp_path / "g.png")
    assert out.shape == (12, 7, 3) and out.dtype == np.uint8
    assert (out[:, :, 0] == a).all() and (out[:, :, 1] == a).all() and (out[:, :, 2] == a).all()


def test_rgba_transparent_pixels_read_as_white(tmp_path):
    a = np.zeros((5, 6, 4), np.uint8)
    a[..., :3] = (10, 20, 30)
    a[..., 3] = 255
    a[0, 0, 3] = 0  # fully transparent
    Image.fromarray(a, mode="RGBA").save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    assert out.shape == (5, 6, 3)
    assert tuple(out[0, 0]) == (255, 255, 255)
    assert tuple(out[1, 1]) == (10, 20, 30)


def test_sixteen_bit_is_stretched_not_clipped(tmp_path):
    a = np.array([[1000, 2000], [3000, 2000]], dtype=np.uint16)
    Image.fromarray(a).save(tmp_path / "d.png")  # 16-bit grey PNG
    assert Image.open(tmp_path / "d.png").mode.startswith("I")
    out = read_image(tmp_path / "d.png")
    assert out.dtype == np.uint8 and out.shape == (2, 2, 3)
    assert out[0, 0, 0] == 0 and out[1, 0, 0] == 255 and out[0, 1, 0] in (127, 128)


def test_exif_orientation_is_applied(tmp_path):
    # Stored 20 wide x 10 high with a red top-left corner; orientation 6 = rotate 90 deg clockwise.
    a = np.zeros((10, 20, 3), np.uint8)
    a[:3, :3] = (255, 0, 0)
    im = Image.fromarray(a)
    exif = im.getexif()
    exif[0x0112] = 6
    im.save(tmp_path / "r.jpg", exif=exif.tobytes(), quality=95)
    out = read_image(tmp_path / "r.jpg")
    assert out.shape == (20, 10, 3)  # now 10 wide, 20 high
    assert out[1, -2, 0] > 200 and out[1, 1, 0] < 60  # the red corner moved to the top right
    assert image_size(tmp_path / "r.jpg") == (10, 20)


def test_palette_and_odd_sizes(tmp_path):
    im = Image.new("P", (1, 333))
    im.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    im.putpixel((0, 5), 1)
    im.save(tmp_path / "p.png")
    out = read_image(tmp_path / "p.png")
    assert out.shape == (333, 1, 3) and tuple(out[5, 0]) == (200, 100, 50)


def test_truncated_and_fake_images_are_clear_errors(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "t.png")
    truncate(tmp_path / "t.png")
    with pytest.raises(GenadError, match="cannot read image .*t.png"):
        read_image(tmp_path / "t.png")
    (tmp_path / "x.png").write_text("not an image")
    with pytest.raises(GenadError, match="cannot read image"):
        read_image(tmp_path / "x.png")
    with pytest.raises(GenadError, match="no such file"):
        read_image(tmp_path / "missing.png")


def test_masks_threshold_above_127(tmp_path):
    m = np.array([[0, 127, 128, 255]], dtype=np.uint8)
    Image.fromarray(m).save(tmp_path / "m.png")
    assert read_mask(tmp_path / "m.png").tolist() == [[False, False, True, True]]
