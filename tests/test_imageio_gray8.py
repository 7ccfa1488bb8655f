"""thermalnet.imageio.read_gray8: the kit's 8-bit grey PNGs (test/ir brightness, label
bins) read back exactly, for thermalnet.baselines and the DIGITS client (no PIL of their own)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from thermalnet import imageio


def test_grey_png_round_trips_exactly_even_when_constant(tmp_path):
    rng = np.random.RandomState(0)
    a = rng.randint(0, 256, size=(5, 7)).astype(np.uint8)
    imageio.write_png(str(tmp_path / "a.png"), a)
    got = imageio.read_gray8(str(tmp_path / "a.png"))
    assert got.dtype == np.uint8 and got.shape == (5, 7)
    np.testing.assert_array_equal(got, a)
    flat = np.full((4, 4), 17, np.uint8)                 # read_ir would refuse this (no thermal signal)
    imageio.write_png(str(tmp_path / "flat.png"), flat)
    np.testing.assert_array_equal(imageio.read_gray8(str(tmp_path / "flat.png")), flat)


def test_colour_gives_the_first_channel_and_16_bit_is_refused(tmp_path):
    rgb = np.zeros((3, 4, 3), np.uint8)
    rgb[..., 0], rgb[..., 1] = 200, 9
    Image.fromarray(rgb).save(str(tmp_path / "c.png"))
    np.testing.assert_array_equal(imageio.read_gray8(str(tmp_path / "c.png")), rgb[..., 0])
    Image.fromarray(np.full((3, 4), 1000, np.uint16)).save(str(tmp_path / "w.png"))
    with pytest.raises(imageio.ImageReadError, match=r"w\.png: not an 8-bit grey image"):
        imageio.read_gray8(str(tmp_path / "w.png"))
    with pytest.raises(imageio.ImageReadError, match=r"absent\.png: no such file"):
        imageio.read_gray8(str(tmp_path / "absent.png"))
    (tmp_path / "cut.png").write_bytes(open(str(tmp_path / "c.png"), "rb").read()[:40])
    with pytest.raises(imageio.ImageReadError, match=r"cut\.png: "):
        imageio.read_gray8(str(tmp_path / "cut.png"))


def test_baselines_read_the_test_pair_as_stored(tmp_path):
    from thermalnet import baselines, layout
    rng = np.random.RandomState(1)
    vis = rng.randint(0, 256, size=(6, 8, 3)).astype(np.uint8)
    ir = rng.randint(0, 256, size=(6, 8)).astype(np.uint8)
    for sub, arr in (("visible", vis), ("ir", ir)):
        (tmp_path / layout.TEST_DIR / sub).mkdir(parents=True)
        Image.fromarray(arr).save(str(tmp_path / layout.TEST_DIR / sub / "x.png"))
    v, i = baselines.load_test_pair(str(tmp_path), "x")
    assert v.dtype == np.uint8 and i.dtype == np.float64
    np.testing.assert_array_equal(v, vis)
    np.testing.assert_array_equal(i, ir)
    with pytest.raises(ValueError, match=r"y\.png: no such file"):
        baselines.load_test_pair(str(tmp_path), "y")
