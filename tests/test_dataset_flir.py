"""FLIR radiometric JPEGs: temperatures, alignment, rejections.

Every test runs on the files tests/flir_writer.py writes from known numbers (temperatures,
tags, a misalignment planted beyond the tags), and on the real camera files of
../shared/samples/flir as well where they are present (conftest.flir_cases).
"""
from __future__ import annotations

import os
import shutil

import cv2
import numpy as np
import pytest

from conftest import flir_cases, flir_path
from dataset_builder import flir, overlay
from dataset_builder.cli import main as cli_main
from tests import flir_writer as W

REAL_WITH_PHOTO = ("flir_one_mug.jpg", "flir_b60_aqua_tower.jpg", "flir_ax8.jpg")
REAL_THERMAL_ONLY = ("flir_e60_car_thermal_only.jpg", "flir_i7_ducks_thermal_only.jpg",
                     "dji_zenmuse_xtr_no_visible.jpg")
PORTRAIT = "written_portrait.jpg"
LETTERBOX = "written_letterbox.jpg"


def test_temperatures_tags_and_crop(flir_written, flir_dirs):
    """Every written file with a photo: the degC read back are the ones chosen (to the counts'
    rounding), the tags are the ones written, and the crop is the footprint they give; the
    real FLIR ONE file, where present, gives what SOURCES.md says of it."""
    folder, info = flir_written
    for name in W.WITH_PHOTO:
        w = info[name]
        pair = flir.read_flir(os.path.join(folder, name))
        (hi, wi), (hv, wv) = w["shape"], w["photo_shape"]
        x0, y0, x1, y1 = pair.meta["vis_box"]
        u0, v0, u1, v1 = pair.meta["ir_box"]
        assert pair.meta["raw_ir_shape"] == [hi, wi] and pair.meta["portrait"] == (hi > wi)
        assert np.abs(pair.celsius - w["celsius"][v0:v1, u0:u1]).max() <= w["tolerance"], name
        assert pair.meta["tags"] == pytest.approx(w["tags"], abs=1e-9)
        s = wv / (w["tags"]["Real2IR"] * wi)
        assert s == pytest.approx(w["scale"], rel=1e-6)
        # the IR grid's centre is the photo centre + (OffsetX, OffsetY); one IR pixel = s photo pixels
        fx0 = wv / 2.0 + w["tags"]["OffsetX"] - wi * s / 2
        fy0 = hv / 2.0 + w["tags"]["OffsetY"] - hi * s / 2
        assert (x0, y0, x1, y1) == tuple(int(round(v)) for v in (fx0 + u0 * s, fy0 + v0 * s, fx0 + u1 * s,
                                                                  fy0 + v1 * s))
        assert pair.visible.shape == (y1 - y0, x1 - x0, 3) and pair.visible.dtype == np.uint8
    pair = flir.read_flir(os.path.join(folder, PORTRAIT))
    assert pair.celsius.shape == (160, 120) and pair.meta["vis_box"] == [74, 66, 434, 546]
    if flir_dirs["real"]:       # the real FLIR ONE file (SOURCES.md: 25.9..62.3 degC, portrait)
        pair = flir.read_flir(os.path.join(flir_dirs["real"], "flir_one_mug.jpg"))
        c = pair.celsius
        assert abs(float(c.min()) - 25.9) < 0.1 and abs(float(c.max()) - 62.3) < 0.1
        # portrait 240x320 raw, fully inside the 480x640 photo: no IR pixel lost
        assert c.shape == (320, 240) and pair.meta["portrait"]
        assert pair.meta["tags"]["Real2IR"] == pytest.approx(1.404, abs=1e-3)
        assert (pair.meta["tags"]["OffsetX"], pair.meta["tags"]["OffsetY"]) == (14, -14)
        # the IR covers 480/1.404 = 342 photo pixels across, 456 down, centred 14 px right, 14 px up
        x0, y0, x1, y1 = pair.meta["vis_box"]
        assert (x1 - x0, y1 - y0) == (342, 456)
        assert ((x0 + x1) / 2 - 240, (y0 + y1) / 2 - 320) == (14, -14)
        assert pair.visible.shape == (456, 342, 3) and pair.visible.dtype == np.uint8


def test_exiftool_and_flyr_tags_agree(flir_dirs, flir_written):
    import flyr

    paths = [flir_path(flir_dirs, c.values[0]) for c in flir_cases(W.WITH_PHOTO, REAL_WITH_PHOTO)]
    tags = flir.read_tags(paths)
    for p in paths:
        fl = flir.tags_from_flyr(flyr.unpack(p))
        for k in flir.ALIGN_TAGS:
            assert tags[p][k] == pytest.approx(fl[k], abs=1e-4), (p, k)
    for name in W.WITH_PHOTO:                    # and both read what was written
        p = os.path.join(flir_dirs["written"], name)
        assert {k: tags[p][k] for k in flir.ALIGN_TAGS} == pytest.approx(flir_written[1][name]["tags"], abs=1e-6)
        assert tags[p]["Model"] == W.MODEL


@pytest.mark.parametrize("case", flir_cases(W.WITH_PHOTO, REAL_WITH_PHOTO))
def test_aligned_crop_beats_naive_resize(flir_dirs, case):
    """Edges of the tag-aligned photo crop agree with the IR edges better than the naive
    centre-resize (NCC of gradient magnitudes); the edge search only improves on that."""
    s = overlay.alignment_scores(flir_path(flir_dirs, case), refine_px=24)
    assert s["tags"] > s["naive"] + 0.08, s
    assert s["refined"] >= s["tags"] - 1e-6, s


@pytest.mark.parametrize("case", flir_cases((PORTRAIT,), ("flir_one_mug.jpg",)))
def test_misaligned_crop_scores_lower(flir_dirs, case):
    """The score is sensitive to registration: moving the crop 16 photo pixels (5 IR pixels
    of the written file, about 11 of the mug's) away from the best alignment, in any
    direction, lowers it."""
    import flyr

    p = flir_path(flir_dirs, case)
    th = flyr.unpack(p)
    rgb, c = th.optical, th.celsius.astype(np.float32)
    tags = flir.read_tags([p])[p]
    dx, dy, _ = flir.refine_shift(rgb, c, tags, 24)
    scores = []
    for sx, sy in ((0, 0), (16, 0), (-16, 0), (0, 16), (0, -16)):
        vis, ir, _ = flir.aligned_crop(rgb, c, tags, (dx + sx, dy + sy))
        scores.append(flir.edge_agreement(cv2.resize(vis, ir.shape[::-1], interpolation=cv2.INTER_AREA), ir))
    assert scores[0] > max(scores[1:]) + 0.05, scores


@pytest.mark.parametrize("case", flir_cases(W.THERMAL_ONLY, REAL_THERMAL_ONLY))
def test_thermal_only_rejected(flir_dirs, case):
    p = flir_path(flir_dirs, case)
    with pytest.raises(flir.FlirError) as e:
        flir.read_flir(p)
    msg = str(e.value)
    assert msg.startswith(p + ": ") and "without an embedded visible photo" in msg and "\n" not in msg


def test_thermal_only_rejected_without_exiftool(flir_dirs, monkeypatch):
    """flyr alone (no exiftool on PATH) still gives a clear reason. (The little-endian FFF and
    the Zenmuse file are left out: flyr cannot read them; the Zenmuse costs it ~12 s before
    its KeyError. With exiftool both are rejected at once.)"""
    monkeypatch.setattr(flir, "exiftool_path", lambda: None)
    written = [n for n in W.THERMAL_ONLY if W.WRITTEN[n].get("byteorder", ">") == ">"]
    for case in flir_cases(written, REAL_THERMAL_ONLY[:2]):
        p = flir_path(flir_dirs, case.values[0])
        with pytest.raises(flir.FlirError) as e:
            flir.read_flir(p)
        assert str(e.value).startswith(p + ": ")
    pair = flir.read_flir(os.path.join(flir_dirs["written"], PORTRAIT))     # tags from flyr's PiP record
    assert pair.meta["vis_box"] == [74, 66, 434, 546]


def test_non_flir_and_truncated_rejected(flir_dirs, tmp_path):
    plain = tmp_path / "holiday.jpg"
    cv2.imwrite(str(plain), np.full((40, 60, 3), 128, np.uint8))
    with pytest.raises(flir.FlirError) as e:
        flir.read_flir(str(plain))
    assert str(plain) in str(e.value) and "not a radiometric FLIR JPEG" in str(e.value)
    data = open(os.path.join(flir_dirs["written"], PORTRAIT), "rb").read()
    for frac in (0.05, 0.5):
        cut = tmp_path / ("cut_%d.jpg" % int(frac * 100))
        cut.write_bytes(data[: int(len(data) * frac)])
        with pytest.raises(flir.FlirError) as e:
            flir.read_flir(str(cut))
        assert str(e.value).startswith(str(cut) + ": ") and "truncated" in str(e.value), str(e.value)
    with pytest.raises(flir.FlirError):
        flir.read_flir(str(tmp_path / "missing.jpg"))


@pytest.mark.parametrize("case", flir_cases((LETTERBOX,), ("flir_ax8.jpg",)))
def test_letterboxed_photo_content_box(flir_dirs, case):
    """The photo sits in black borders (60 px in the written file, like the AX8's): the crop
    stays inside the real picture."""
    pair = flir.read_flir(flir_path(flir_dirs, case))
    x0, y0, x1, y1 = pair.meta["vis_box"]
    assert x0 > 40 and y0 > 40 and x1 < 600 and y1 < 440
    assert (pair.visible.max(axis=2) > 10).mean() > 0.99      # no black border left in the crop
    assert 0.5 <= pair.meta["overlap"] < 1.0
    if case[0] == "written":
        # photo content 60..580 x 60..420; the IR grid (7 px per IR pixel) starts at 40, 30
        assert pair.meta["ir_box"] == [3, 5, 77, 55] and pair.meta["vis_box"] == [61, 65, 579, 415]


def test_overlay_cli(flir_dirs, tmp_path, capsys):
    out = tmp_path / "fig" / "overlay.png"
    assert cli_main(["overlay", os.path.join(flir_dirs["written"], PORTRAIT), "--out", str(out)]) == 0
    img = cv2.imread(str(out))
    assert img is not None and img.shape[0] > 200 and img.shape[1] > 600
    assert "edge" not in capsys.readouterr().err
    bad = tmp_path / "ducks.jpg"
    shutil.copy(os.path.join(flir_dirs["written"], W.THERMAL_ONLY[0]), bad)
    assert cli_main(["overlay", str(bad), "--out", str(tmp_path / "x.png")]) == 1
    err = capsys.readouterr().err
    assert str(bad) in err and "thermal only" in err and not (tmp_path / "x.png").exists()


def test_content_box_letterbox_and_dark_photos():
    img = np.zeros((480, 640, 3), np.uint8)
    img[70:410, 66:574] = 120
    assert flir.content_box(img) == (66, 70, 574, 410)
    night = np.zeros((480, 640, 3), np.uint8)
    night[200:260, 300:360] = 200          # one lit window in a dark scene: not a letterbox
    assert flir.content_box(night) == (0, 0, 640, 480)


# -- the tag geometry against an independent reader, and the residual -----------------------

def _decoded(dirs, case):
    import flyr

    p = flir_path(dirs, case)
    th = flyr.unpack(p)
    return p, th, np.ascontiguousarray(th.optical[:, :, :3]), th.celsius.astype(np.float32), flir.read_tags([p])[p]


@pytest.mark.parametrize("case", flir_cases(W.WITH_PHOTO, REAL_WITH_PHOTO))
def test_footprint_is_where_flyr_pastes_the_ir(flir_dirs, case):
    """Independent reference: flyr's own picture-in-picture rendering (Real2IR against the
    full raw width, OffsetX/Y in photo pixels from the photo centre) pastes a solid IR image
    exactly where the kit's footprint says it lies, to within flyr's integer rounding."""
    from PIL import Image

    _, th, rgb, c, tags = _decoded(flir_dirs, case)
    solid = np.zeros(c.shape + (3,), np.uint8)
    solid[:, :, 0] = solid[:, :, 2] = 255            # magenta: no JPEG photo pixel is exactly that
    out = np.asarray(th.picture_in_picture_pil(render=Image.fromarray(solid), render_crop=False))
    ys, xs = np.nonzero((out[:, :, 0] == 255) & (out[:, :, 1] == 0) & (out[:, :, 2] == 255))
    fp = flir.footprint(tags, rgb.shape, c.shape)
    mine = (fp.x0, fp.y0, fp.x0 + c.shape[1] * fp.s, fp.y0 + c.shape[0] * fp.s)
    theirs = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    assert np.abs(np.subtract(mine, theirs)).max() <= 1.0, (mine, theirs)


@pytest.mark.parametrize("case", flir_cases(W.WITH_PHOTO[:2], ("flir_one_mug.jpg", "flir_b60_aqua_tower.jpg")))
def test_tag_offsets_and_scale_as_read_fit_best(flir_dirs, case):
    """The offsets as the tags give them align better than none, than the opposite sign and
    than half of them; Real2IR taken against the photo width beats a 5 % larger or smaller
    scale (each scale with its own best shift). (The letterboxed files have zero offsets;
    the AX8's pipe scene pins the scale only loosely: 0.95 scores 0.48 there, 1.0 0.45.)"""
    _, _, rgb, c, tags = _decoded(flir_dirs, case)

    def tags_only(ox, oy):
        vis, ir, _ = flir.aligned_crop(rgb, c, dict(tags, OffsetX=ox, OffsetY=oy))
        return flir.crop_agreement(vis, ir)

    ox, oy = tags["OffsetX"], tags["OffsetY"]
    given = tags_only(ox, oy)
    assert given > max(tags_only(0, 0), tags_only(-ox, -oy), tags_only(ox / 2.0, oy / 2.0)) + 0.05
    best = {k: flir.refine_shift(rgb, c, dict(tags, Real2IR=tags["Real2IR"] / k), 24)[2] for k in (0.95, 1.0, 1.05)}
    assert best[1.0] > max(best[0.95], best[1.05]) + 0.02, best


# Residual after the tags (photo pixels, the best edge-agreement shift within +-24) on every
# real FLIR sample with a photo: (x, y), tolerance, photo width. README (dataset_builder) has
# the table. The written files' residuals are the ones planted (flir_writer.WRITTEN), found
# to a photo pixel.
RESIDUAL = {"flir_one_mug.jpg": ((15, -3), 2, 480),          # close-up: parallax, see below
            "flir_ax8.jpg": ((-18, -13), 3, 640),            # 80x60 IR: 6.9 photo px per IR pixel
            "flir_b60_aqua_tower.jpg": ((-3, -5), 2, 480)}   # a tower far away: no parallax
RESIDUAL.update({n: (W.WRITTEN[n]["residual"], 1, W.WRITTEN[n]["photo_hw"][1]) for n in W.WITH_PHOTO})


@pytest.mark.parametrize("case", flir_cases(W.WITH_PHOTO, REAL_WITH_PHOTO))
def test_residual_before_and_after_refinement(flir_dirs, case):
    """Before: the tags alone leave the residual above. After --refine-alignment, a second
    search from the refined position finds nothing left (<= 1 px) and the edges agree better."""
    p, _, rgb, c, tags = _decoded(flir_dirs, case)
    (ex, ey), tol, width = RESIDUAL[case[1]]
    assert rgb.shape[1] == width
    pair = flir.read_flir(p, tags=tags, refine_px=24)
    dx, dy = pair.meta["shift"]
    assert abs(dx - ex) <= tol and abs(dy - ey) <= tol, (dx, dy)
    assert pair.meta["edge_agreement"] > pair.meta["edge_agreement_tags"] + 0.1, pair.meta
    plain = flir.read_flir(p, tags=tags)
    assert plain.meta["shift"] == [0, 0]
    assert plain.meta["edge_agreement"] == pytest.approx(pair.meta["edge_agreement_tags"], abs=1e-9)
    again = flir.refine_shift(rgb, c, dict(tags, OffsetX=tags["OffsetX"] + dx, OffsetY=tags["OffsetY"] + dy), 24)
    assert max(abs(again[0]), abs(again[1])) <= 1, again


@pytest.mark.parametrize("case", flir_cases((PORTRAIT,), ("flir_one_mug.jpg",)))
def test_residual_found_by_an_independent_estimator(flir_dirs, case):
    """flyr's own shift estimator (phase correlation of edge masks, on the IR grid) finds the
    residual too: the one planted in the written file, the mug's in the real one.

    The mug's residual is the parallax of a close object: the warm mug (taken as 8 cm
    across) spans 88 IR pixels (median row above 40 degC) = 125 photo pixels, so it stood
    d = f * 0.08 m / 125 px = 0.34 m away (f = 536 photo px: the file's 35.4 degree field of
    view over the 342 px the IR spans); 15 px of parallax then needs a lens baseline
    b = 15 px * d / f = 1.0 cm if the tags hold for far objects (1.5 cm if for 1 m): the
    spacing of the FLIR ONE's two lenses. A centimetre-sized baseline is what makes the
    residual a close-range effect; it fades as 1/d."""
    from flyr import msx

    _, th, rgb, c, tags = _decoded(flir_dirs, case)
    fx, fy = msx.estimate_shift(th.render(palette="grayscale")[:, :, 0], rgb, th.pip_info)
    s = flir.footprint(tags, rgb.shape, c.shape).s
    (ex, ey), _, _ = RESIDUAL[case[1]]
    tol = max(2, s + 1e-6)                 # it counts whole IR pixels: one of them, or 2 photo px
    assert abs(fx * s - ex) <= tol and abs(fy * s - ey) <= tol, (fx, fy, s)
    if case[1] == "flir_one_mug.jpg":
        f_px = (c.shape[1] * s / 2) / np.tan(np.radians(35.36 / 2))   # FieldOfView tag of the file: 35.36
        widths = [np.ptp(np.flatnonzero(row)) + 1 for row in (c > 40) if row.any()]
        d = f_px * 0.08 / (np.median(widths) * s)
        baseline = ex * d / f_px
        assert 0.25 < d < 0.45 and 0.006 < baseline < 0.02, (f_px, d, baseline)
