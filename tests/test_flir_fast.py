"""The FLIR reader's fast path: flyr's numbers bit for bit, flyr's decisions where it cannot be sure.

On the files tests/flir_writer.py writes, and on the real samples too where they are present.
"""
from __future__ import annotations

import io
import os
import struct

import numpy as np
import pytest

from conftest import flir_cases, flir_path
from dataset_builder import flir
from tests import flir_writer as W

REAL_DECODABLE = ("flir_one_mug.jpg", "flir_b60_aqua_tower.jpg", "flir_ax8.jpg",
                  "flir_e60_car_thermal_only.jpg", "flir_i7_ducks_thermal_only.jpg")
REAL_WITH_PHOTO = REAL_DECODABLE[:3]
BIG_ENDIAN_FFF = tuple(n for n, p in W.WRITTEN.items() if p.get("byteorder", ">") == ">")
PNG_RAW = "written_portrait.jpg"
LE_RAW = "written_thermal_only_le.jpg"


@pytest.mark.parametrize("case", flir_cases(BIG_ENDIAN_FFF, REAL_DECODABLE))
def test_same_numbers_as_flyr(flir_dirs, case):
    """Temperatures (float64), photo and PiP record equal flyr's exactly, for PNG raw images
    and unpacked little-endian ones (written: with and without a photo; real: the E60)."""
    import flyr

    p = flir_path(flir_dirs, case)
    th = flyr.unpack(p)
    fast = flir.decode_fast(p)
    assert fast.celsius.dtype == np.float64 and np.array_equal(fast.celsius, th.celsius)
    if th.optical is None:
        assert fast.optical is None
    else:
        assert fast.optical.dtype == th.optical.dtype and np.array_equal(fast.optical, th.optical)
    if th.pip_info is None:
        assert fast.pip_info is None
    else:
        assert vars(fast.pip_info) == vars(th.pip_info)


def test_read_flir_takes_the_fast_path_and_gives_the_old_pairs(flir_dirs, monkeypatch):
    """With flyr's decoder forbidden read_flir still reads every file with a photo (so it did
    not need flyr), and the pairs equal those read through flyr, meta included."""
    paths = [flir_path(flir_dirs, c.values[0]) for c in flir_cases(W.WITH_PHOTO, REAL_WITH_PHOTO)]
    tags = flir.read_tags(paths)
    real_decode = flir._decode

    def no_flyr(path):
        raise AssertionError("flyr decoder called for " + path)

    monkeypatch.setattr(flir, "_decode", no_flyr)
    fast = [flir.read_flir(p, tags=tags[p]) for p in paths]
    monkeypatch.setattr(flir, "_decode", real_decode)

    def not_fast(path):
        raise flir._NotFast("test")

    monkeypatch.setattr(flir, "decode_fast", not_fast)
    for p, a in zip(paths, fast):
        b = flir.read_flir(p, tags=tags[p])
        assert np.array_equal(a.celsius, b.celsius) and np.array_equal(a.visible, b.visible)
        assert a.meta == b.meta


@pytest.mark.parametrize("case", flir_cases(("written_fff_little_endian.jpg",), ("dji_zenmuse_xtr_no_visible.jpg",)))
def test_little_endian_fff_left_to_flyr_at_once(flir_dirs, case):
    """A little-endian record header (DJI) is not where flyr reads it: flyr decides (and with
    exiftool the file is rejected from its tags before any decoding)."""
    p = flir_path(flir_dirs, case)
    with pytest.raises(flir._NotFast):
        flir.decode_fast(p)
    assert "RawThermalImageType" in flir.read_tags([p])[p]        # exiftool reads it


def _edit_directory(folder, tmp_path, name, edit):
    """A copy of a file whose FLIR record directory entries were changed by edit(entries)."""
    data = bytearray(open(os.path.join(folder, name), "rb").read())
    fff = flir.flir_stream(bytes(data))
    start, count = struct.unpack_from(">II", fff, 0x18)
    entries = [fff[start + 32 * i:start + 32 * (i + 1)] for i in range(count)]
    new = edit(list(entries))
    table = bytes(data).find(b"".join(entries))       # the directory lies within one chunk
    assert table > 0
    data[table:table + 32 * count] = b"".join(new)
    out = tmp_path / name
    out.write_bytes(bytes(data))
    return str(out)


def _with_subtype(kind, subtype):
    def edit(entries):
        out = []
        for e in entries:
            if struct.unpack_from(">H", e)[0] == kind:
                e = e[:2] + struct.pack(">H", subtype) + e[4:]
            out.append(e)
        return out
    return edit


def test_other_byte_orders_left_to_flyr(flir_dirs, tmp_path):
    """A record that says big-endian (subtype 1), or a PNG under 'little-endian' (2): the fast
    path does not guess; flyr reads them as it always did (it ignores the subtype)."""
    import flyr

    folder = flir_dirs["written"]
    le = _edit_directory(folder, tmp_path, LE_RAW, _with_subtype(flir.REC_RAW, 1))
    with pytest.raises(flir._NotFast, match="subtype 1"):
        flir.decode_fast(le)
    png = _edit_directory(folder, tmp_path, PNG_RAW, _with_subtype(flir.REC_RAW, flir.RAW_LE))
    with pytest.raises(flir._NotFast, match="subtype 2"):
        flir.decode_fast(png)
    pair = flir.read_flir(png)
    orig = flyr.unpack(os.path.join(folder, PNG_RAW)).celsius.astype(np.float32)
    assert pair.meta["raw_ir_shape"] == list(orig.shape)
    x0, y0, x1, y1 = pair.meta["ir_box"]
    assert np.array_equal(pair.celsius, orig[y0:y1, x0:x1])


def test_a_record_flyr_cannot_find_is_not_read_either(flir_dirs, tmp_path):
    """flyr looks up the record entries from the stream's first byte, so it misses the
    directory's last two: a raw record moved there makes flyr fail, and the fast path must
    not read the file anyway."""
    def move_raw_last(entries):
        i = next(i for i, e in enumerate(entries) if struct.unpack_from(">H", e)[0] == flir.REC_RAW)
        entries[i], entries[-1] = entries[-1], entries[i]
        return entries

    p = _edit_directory(flir_dirs["written"], tmp_path, PNG_RAW, move_raw_last)
    with pytest.raises(flir._NotFast, match="elsewhere"):
        flir.decode_fast(p)
    with pytest.raises(flir.FlirError) as e:
        flir.read_flir(p)
    assert str(e.value).startswith(p + ": ")


def _camera(path, **changes):
    from flyr.thermal import parse_camera_info

    fff = flir.flir_stream(open(path, "rb").read())
    rec = flir.flir_records(fff)[flir.REC_CAMERA]
    cam = parse_camera_info(io.BytesIO(fff), (0, flir.REC_CAMERA, rec[1], rec[2]))
    cam.update(changes)
    return cam


@pytest.mark.parametrize("case", flir_cases((PNG_RAW,), ("flir_one_mug.jpg",)))
@pytest.mark.parametrize("changes", [{}, {"emissivity": 0.8, "object_distance": 20.0, "relative_humidity": 0.9,
                                          "atmospheric_temperature": 303.15, "ir_window_transmission": 0.9,
                                          "ir_window_temperature": 283.15, "reflected_apparent_temperature": 263.15}])
def test_planck_inverts_the_radiometric_model(flir_dirs, case, changes):
    """planck_celsius undoes the model written forwards on its own (flir_writer.planck_counts,
    which also writes the test files): the object temperatures come back to 1e-6 degC, with
    the file's constants (the written file's, the mug's where present) and with far, humid,
    windowed ones."""
    cam = _camera(flir_path(flir_dirs, case), **changes)
    temps = np.array([-20.0, 0.0, 21.5, 37.0, 60.0, 95.0])
    raw = np.array([W.planck_counts(cam, t + 273.15) for t in temps]).reshape(2, 3)
    out = flir.planck_celsius(raw, cam)
    assert out.dtype == np.float64 and np.abs(out - temps.reshape(2, 3)).max() < 1e-6


def test_content_box_as_the_channel_maximum_gives_it():
    """content_box's elementwise channel maximum finds the box the plain max(axis=2) finds,
    on letterboxed and noisy photos."""
    rng = np.random.RandomState(3)

    def reference(rgb):
        bright = rgb.max(axis=2) > flir._BORDER_LEVEL
        rows = np.flatnonzero(bright.mean(axis=1) > 0.05)
        cols = np.flatnonzero(bright.mean(axis=0) > 0.05)
        h, w = rgb.shape[:2]
        if rows.size == 0 or cols.size == 0:
            return 0, 0, w, h
        box = (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)
        return (0, 0, w, h) if box[2] - box[0] < w // 2 or box[3] - box[1] < h // 2 else box

    for i in range(20):
        img = (rng.rand(120, 160, 3) * rng.choice([12, 40, 255])).astype(np.uint8)
        y0, x0 = rng.randint(0, 30, 2)
        img[:y0] = 0
        img[:, :x0] = 0
        img[:, :, i % 3] //= 1 + i % 4         # one channel darker than the others
        assert flir.content_box(img) == reference(img), i
