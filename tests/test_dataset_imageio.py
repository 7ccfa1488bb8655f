"""imageio: the kit's only image reader/writer names the bad file and never half-writes."""
from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from thermalnet import imageio
from thermalnet.imageio import ImageReadError


def _png(path, arr):
    Image.fromarray(arr).save(path)
    return str(path)


def test_rgb_round_trip(tmp_path):
    rgb = np.random.RandomState(0).randint(0, 256, (30, 40, 3)).astype(np.uint8)
    p = str(tmp_path / "a.png")
    imageio.write_png(p, rgb)
    np.testing.assert_array_equal(imageio.read_rgb(p), rgb)
    assert [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")] == []


def test_grey_and_16bit_read_as_rgb(tmp_path):
    grey = np.arange(20 * 30, dtype=np.uint8).reshape(20, 30)
    out = imageio.read_rgb(_png(tmp_path / "g.png", grey))
    assert out.shape == (20, 30, 3) and (out[:, :, 0] == grey).all()
    deep = (np.arange(20 * 30, dtype=np.uint16).reshape(20, 30) * 100)
    out = imageio.read_rgb(_png(tmp_path / "d.png", deep))
    assert out.dtype == np.uint8 and out.shape == (20, 30, 3)


@pytest.mark.parametrize("content,reason", [(None, "no such file"), (b"hello, not an image", "not a readable image")])
def test_unreadable_named(tmp_path, content, reason):
    p = tmp_path / "bad.png"
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(ImageReadError) as e:
        imageio.read_rgb(str(p))
    assert str(e.value).startswith(str(p) + ": ") and reason in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_truncated_image_rejected(tmp_path, ext):
    rgb = np.random.RandomState(1).randint(0, 256, (64, 64, 3)).astype(np.uint8)
    full = tmp_path / ("full" + ext)
    Image.fromarray(rgb).save(full)
    cut = tmp_path / ("cut" + ext)
    data = full.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError) as e:
        imageio.read_rgb(str(cut))
    assert str(cut) in str(e.value) and "truncated" in str(e.value)


def test_ir_units(tmp_path):
    ramp = np.tile(np.arange(40, dtype=np.uint8), (30, 1))
    ir = imageio.read_ir(_png(tmp_path / "b.png", ramp))
    assert ir.units == "brightness" and ir.values.dtype == np.float32 and ir.values[0, 39] == 39
    counts = (ramp.astype(np.uint16) * 1000 + 7)
    ir = imageio.read_ir(_png(tmp_path / "c.png", counts))
    assert ir.units == "counts" and ir.values[0, 39] == 39007
    c = np.linspace(15, 40, 30 * 40, dtype=np.float32).reshape(30, 40)
    np.save(tmp_path / "t.npy", c)
    ir = imageio.read_ir(str(tmp_path / "t.npy"))
    assert ir.units == "degC"
    np.testing.assert_array_equal(ir.values, c)
    # LLVIP stores grey IR as 3 equal channels
    ir = imageio.read_ir(_png(tmp_path / "rgbgrey.png", np.repeat(ramp[:, :, None], 3, axis=2)))
    assert ir.units == "brightness" and ir.values.shape == (30, 40)


def test_bad_ir_rejected(tmp_path):
    ramp = np.tile(np.arange(40, dtype=np.uint8), (30, 1))
    false_colour = np.stack([ramp, 255 - ramp, ramp // 2], axis=2)
    np.save(tmp_path / "nan.npy", np.where(np.arange(30 * 40).reshape(30, 40) == 7, np.nan, 1.0))
    np.save(tmp_path / "flat.npy", np.full((30, 40), 21.5, np.float32))
    np.save(tmp_path / "cube.npy", np.zeros((3, 30, 40), np.float32))
    (tmp_path / "junk.npy").write_bytes(b"\x93NUMPY garbage")
    cases = [("false-colour", _png(tmp_path / "fc.png", false_colour)),
             ("constant", _png(tmp_path / "k.png", np.full((30, 40), 17, np.uint8))),
             ("NaN", str(tmp_path / "nan.npy")),
             ("constant", str(tmp_path / "flat.npy")),
             ("2-D", str(tmp_path / "cube.npy")),
             ("readable", str(tmp_path / "junk.npy"))]
    for word, path in cases:
        with pytest.raises(ImageReadError) as e:
            imageio.read_ir(path)
        assert str(e.value).startswith(path + ": "), str(e.value)
        assert word.lower() in str(e.value).lower(), (word, str(e.value))


def test_resize_helpers():
    rgb = np.random.RandomState(2).randint(0, 256, (480, 640, 3)).astype(np.uint8)
    assert imageio.resize_visible(rgb, 120, 160).shape == (120, 160, 3)
    ir = np.random.RandomState(3).rand(120, 160).astype(np.float32)
    up = imageio.resize_ir(ir, 240, 320)
    assert up.shape == (240, 320) and up.dtype == np.float32
    # bilinear up-sampling stays within the data's range (no ringing)
    assert up.min() >= ir.min() - 1e-6 and up.max() <= ir.max() + 1e-6
    # area down-sampling of a 2x2-block image returns the block means
    blocks = np.kron(ir, np.ones((2, 2), np.float32))
    np.testing.assert_allclose(imageio.resize_ir(blocks, 120, 160), ir, atol=1e-6)
