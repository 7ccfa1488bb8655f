"""read_rgb's fast paths (libspng for PNG, OpenCV for JPEG and without pyspng) give PIL's pixels,
byte for byte, and PIL's errors.

The dataset builder decodes PNG and JPEG through them (thermalnet.imageio._fast_rgb)
because it is faster (make bench); a built dataset must not change by a single byte.
"""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from thermalnet import imageio


def _scene(h=97, w=131):
    """Smooth gradients plus noise: JPEG's upsampling and IDCT rounding both show."""
    rng = np.random.RandomState(7)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255.0 / w, y * 255.0 / h, (x + y) * 127.0 / (h + w)], axis=2)
    return np.clip(base + rng.randn(h, w, 3) * 20, 0, 255).astype(np.uint8)


def _orientation_exif(value):
    ex = Image.Exif()
    ex[0x0112] = value
    return ex.tobytes()


CASES = {
    "rgb.png": ({"format": "PNG"}, True),
    "rgb_interlaced.png": ({"format": "PNG", "interlace": 1}, True),
    "q90_420.jpg": ({"format": "JPEG", "quality": 90}, True),
    "q95_444.jpg": ({"format": "JPEG", "quality": 95, "subsampling": 0}, True),
    "q75_422.jpg": ({"format": "JPEG", "quality": 75, "subsampling": 1}, True),
    "progressive.jpg": ({"format": "JPEG", "quality": 85, "progressive": True}, True),
    "rotated_exif.jpg": ({"format": "JPEG", "quality": 90, "exif": _orientation_exif(6)}, True),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_fast_path_equals_pil(tmp_path, name):
    kwargs, fast = CASES[name]
    p = str(tmp_path / name)
    Image.fromarray(_scene()).save(p, **kwargs)
    assert (imageio._fast_rgb(p) is not None) == fast
    got, ref = imageio.read_rgb(p), imageio.pil_rgb(p)
    assert got.dtype == np.uint8 and got.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(got, ref)     # EXIF orientation ignored by both: the stored pixels


@pytest.mark.parametrize("mode,ext", [("L", "jpg"), ("CMYK", "jpg"), ("RGBA", "png"), ("P", "png"), ("L", "png")])
def test_other_modes_take_pil_path(tmp_path, mode, ext):
    p = str(tmp_path / ("x." + ext))
    Image.fromarray(_scene()).convert(mode).save(p)
    assert imageio._fast_rgb(p) is None
    np.testing.assert_array_equal(imageio.read_rgb(p), imageio.pil_rgb(p))


def test_sixteen_bit_rgb_png_takes_pil_path(tmp_path):
    import cv2
    p = str(tmp_path / "deep.png")
    cv2.imwrite(p, _scene().astype(np.uint16) * 257 + 3)
    assert imageio._fast_rgb(p) is None
    np.testing.assert_array_equal(imageio.read_rgb(p), imageio.pil_rgb(p))


@pytest.mark.parametrize("ext", ["png", "jpg"])
def test_cut_off_files_keep_pils_error(tmp_path, ext):
    full = tmp_path / ("full." + ext)
    Image.fromarray(_scene(240, 320)).save(str(full))
    data = full.read_bytes()
    cut = tmp_path / ("cut." + ext)
    cut.write_bytes(data[:len(data) * 2 // 3])
    assert imageio._fast_rgb(str(cut)) is None
    with pytest.raises(imageio.ImageReadError, match="cut.%s: .*truncated" % ext):
        imageio.read_rgb(str(cut))


def test_corrupt_png_data_is_an_image_read_error(tmp_path):
    p = tmp_path / "bad.png"
    Image.fromarray(_scene(240, 320)).save(str(p))
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF                    # a flipped byte inside IDAT: OpenCV refuses, PIL names it
    p.write_bytes(bytes(data))
    with pytest.raises(imageio.ImageReadError, match="bad.png: "):
        imageio.read_rgb(str(p))


def test_a_png_damaged_inside_gives_the_kits_error_and_no_libpng_line(tmp_path):
    """OpenCV's libpng prints 'libpng error: ...' itself; the kit's one line must stay the only one."""
    import subprocess
    import sys
    import cv2
    good = tmp_path / "good.png"
    cv2.imwrite(str(good), np.random.RandomState(0).randint(0, 255, (48, 64, 3)).astype(np.uint8))
    b = bytearray(good.read_bytes())
    b[200:260] = b"x" * 60                      # inside the IDAT stream, the end marker intact
    bad = tmp_path / "bad.png"
    bad.write_bytes(bytes(b))
    p = subprocess.run([sys.executable, "-c", "import sys; from thermalnet.imageio import read_rgb, ImageReadError\n"
                        "try:\n    read_rgb(sys.argv[1])\nexcept ImageReadError as e:\n    print(e)\n",
                        str(bad)], capture_output=True, text=True, timeout=60)
    assert p.stdout.startswith(str(bad) + ": ") and p.stderr == "", (p.stdout, p.stderr)


def test_png_path_checks_every_chunk_crc(tmp_path):
    """libspng (pyspng) decodes past bad checksums; the kit checks them first and so still
    names a damaged file instead of returning its garbled pixels."""
    p = tmp_path / "x.png"
    Image.fromarray(_scene()).save(str(p))
    data = bytearray(p.read_bytes())
    assert imageio._png_crcs_match(bytes(data))
    idat = data.index(b"IDAT")
    data[idat + 10] ^= 0x01                          # one bit inside the first IDAT chunk
    assert not imageio._png_crcs_match(bytes(data))
    assert not imageio._png_crcs_match(bytes(data[:len(data) // 2]))     # no IEND
    assert not imageio._png_crcs_match(b"GIF89a" + bytes(data[6:]))


@pytest.mark.parametrize("decoder", ["libspng", "opencv"])
def test_both_png_decoders_give_pils_pixels(tmp_path, monkeypatch, decoder):
    if decoder == "libspng":
        assert imageio._spng is not None, "pyspng is not installed (requirements.txt pins it)"
    if decoder == "opencv":
        monkeypatch.setattr(imageio, "_spng", None)
    p = str(tmp_path / "x.png")
    Image.fromarray(_scene(240, 320)).save(p)
    got = imageio._fast_rgb(p)
    assert got is not None and got.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(got, imageio.pil_rgb(p))


def test_embedded_jpeg_bytes_decode_to_pils_pixels(tmp_path):
    import io
    buf = io.BytesIO()
    Image.fromarray(_scene(120, 160)).save(buf, format="JPEG", quality=90)
    data = buf.getvalue()
    ref = np.array(Image.open(io.BytesIO(data)))
    np.testing.assert_array_equal(imageio.decode_rgb_jpeg(data, 160, 120), ref)
    assert imageio.decode_rgb_jpeg(data, 161, 120) is None              # not the size the record says
    grey = io.BytesIO()
    Image.fromarray(_scene(120, 160)).convert("L").save(grey, format="JPEG")
    assert imageio.decode_rgb_jpeg(grey.getvalue(), 160, 120) is None   # PIL's mode L: PIL's path
    png = io.BytesIO()
    Image.fromarray(_scene(120, 160)).save(png, format="PNG")
    assert imageio.decode_rgb_jpeg(png.getvalue(), 160, 120) is None
