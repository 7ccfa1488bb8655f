"""The builder: LMDBs read back through a real Caffe Data layer, weights, split, windows,
layouts, bad input, --strict, and atomicity under SIGKILL / Ctrl-C.

Pairs here come from the SYNTHETIC generator or are made up in the test (SYNTHETIC too);
the FLIR build uses the real sample files.
"""
from __future__ import annotations

import csv
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from dataset_builder import build as B
from thermalnet import layout, nets, spec
from dataset_builder import splits as S
from dataset_builder import synthetic
from thermalnet.atomic import OutputExists
from dataset_builder.cli import main as cli_main
from thermalnet.imageio import read_rgb, resize_ir, resize_visible
from thermalnet.lmdb_io import lmdb_count, read_lmdb

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _manifest(ds):
    with open(os.path.join(ds, layout.MANIFEST_FILE), newline="") as f:
        return list(csv.DictReader(f))


def _lmdb(ds, db, which):
    return np.stack([a for _, a in read_lmdb(os.path.join(ds, db, which))])


@pytest.fixture(scope="module")
def syn_pairs(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("syn") / "pairs")
    synthetic.generate(out, count=36, seed=7, workers=1, progress=False)
    return out


@pytest.fixture(scope="module")
def syn_ds(syn_pairs, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("ds") / "ds")
    info = B.build(out, pair_roots=[syn_pairs], cfg=B.BuildConfig(workers=2, progress=False))
    return out, info


def test_caffe_data_layers_read_what_was_written(caffe, syn_pairs, syn_ds, tmp_path):
    """Two real Caffe Data layers (features, labels) give exactly the arrays the pipeline
    should have written, recomputed here independently from the source pairs."""
    ds, info = syn_ds
    rows = [r for r in _manifest(ds) if r["split"] == "train"]
    n = len(rows)
    lo, hi = info["window"]
    exp_x, exp_y = [], []
    for r in rows:
        rgb = read_rgb(os.path.join(syn_pairs, "visible", r["id"] + ".png"))
        exp_x.append(resize_visible(rgb, 120, 160)[:, :, ::-1].transpose(2, 0, 1))
        ir = resize_ir(np.load(os.path.join(syn_pairs, "ir", r["id"] + ".npy")), 120, 160)
        exp_y.append(spec.brightness_to_bins(spec.to_brightness(ir, lo, hi))[None])
    exp_x, exp_y = np.stack(exp_x), np.stack(exp_y)
    proto = tmp_path / "read.prototxt"
    layers = []
    for name, src, mean in (("data", "features", False), ("label", "labels", False), ("centred", "features", True)):
        tp = 'transform_param { mean_file: "%s" }' % os.path.join(ds, layout.TRAIN_DB, layout.MEAN_FILE) if mean else ""
        layers.append('layer { name: "%s" type: "Data" top: "%s" %s data_param { source: "%s" batch_size: %d '
                      'backend: LMDB } }' % (name, name, tp, os.path.join(ds, layout.TRAIN_DB, src), n))
    proto.write_text("name: \"readback\"\n" + "\n".join(layers) + "\n")
    net = caffe.Net(str(proto), caffe.TEST)
    net.forward()
    assert net.blobs["data"].data.shape == (n, 3, 120, 160)
    assert net.blobs["label"].data.shape == (n, 1, 120, 160)
    np.testing.assert_array_equal(net.blobs["data"].data, exp_x.astype(np.float32))
    np.testing.assert_array_equal(net.blobs["label"].data, exp_y.astype(np.float32))
    mean = caffe.io.blobproto_to_array(_blobproto(caffe, os.path.join(ds, layout.TRAIN_DB, layout.MEAN_FILE)))
    assert mean.shape == (1, 3, 120, 160)
    np.testing.assert_allclose(mean[0], exp_x.mean(axis=0), atol=1e-3)
    np.testing.assert_allclose(net.blobs["centred"].data, exp_x - mean, atol=1e-3)
    # the val LMDBs hold the test split, in manifest order, with the same key format
    val = [r["id"] for r in _manifest(ds) if r["split"] == "test"]
    keys = [k for k, _ in read_lmdb(os.path.join(ds, layout.VAL_DB, layout.LABELS))]
    assert keys == [layout.LMDB_KEY_FORMAT % i for i in range(len(val))]
    assert lmdb_count(os.path.join(ds, layout.VAL_DB, layout.FEATURES)) == len(val)


def _blobproto(caffe, path):
    blob = caffe.proto.caffe_pb2.BlobProto()
    with open(path, "rb") as f:
        blob.ParseFromString(f.read())
    return blob


def test_weights_prior_manifest_and_info(syn_ds):
    ds, info = syn_ds
    labels = _lmdb(ds, layout.TRAIN_DB, layout.LABELS)
    prior = np.loadtxt(os.path.join(ds, layout.CLASS_PRIOR_FILE))
    weights = np.loadtxt(os.path.join(ds, layout.CLASS_WEIGHTS_FILE))
    assert prior.shape == weights.shape == (spec.NUM_BINS,)
    # recomputed here, not with spec.class_prior / spec.rebalance_weights (the code under test):
    # bin frequencies of the train labels, then eq. 1's v(Y) with Zhang et al.'s lambda = 1/2
    # (tests/test_spec.py pins spec.REBALANCE_LAMBDA to it and checks both on hand-worked numbers)
    counts = np.bincount(labels.astype(np.int64).ravel(), minlength=spec.NUM_BINS)
    assert counts.size == spec.NUM_BINS and counts.sum() == labels.size
    np.testing.assert_allclose(prior, counts / float(labels.size), rtol=0, atol=1e-8)      # file: 8 decimals
    v = 1.0 / (0.5 * prior + 0.5 / spec.NUM_BINS)
    np.testing.assert_allclose(weights, v / float((prior * v).sum()), rtol=1e-6)
    assert float((prior * weights).sum()) == pytest.approx(1.0, abs=1e-5)
    with open(os.path.join(ds, layout.DATASET_INFO_FILE)) as f:
        meta = json.load(f)
    for k in ("synthetic", "note", "num_bins", "height", "width", "window_mode", "window", "lambda", "counts",
              "object_classes"):
        assert k in meta
    assert meta["synthetic"] is True and "SYNTHETIC" in meta["note"]
    assert meta["num_bins"] == spec.NUM_BINS and meta["lambda"] == spec.REBALANCE_LAMBDA
    # 36 pairs, test fraction 1/11; no --mirror: one LMDB entry per training pair
    assert meta["counts"] == {"train": 33, "test": 3, "skipped": 0, "train_entries": 33}
    assert meta["window_mode"] == "dataset"
    rows = _manifest(ds)
    with open(os.path.join(ds, layout.MANIFEST_FILE)) as f:
        assert f.readline().strip() == ",".join(B.MANIFEST_COLUMNS)
    assert all(r["source"].startswith("SYNTHETIC:") for r in rows)
    assert {r["object_class"] for r in rows} == set(spec.OBJECT_CLASSES)
    # every class in the 3 test pairs (stratified)
    assert sorted(r["object_class"] for r in rows if r["split"] == "test") == sorted(spec.OBJECT_CLASSES)
    for r in rows:
        assert (float(r["t_min"]), float(r["t_max"])) == pytest.approx(tuple(meta["window"]), abs=1e-3)
        assert (r["vis_h"], r["vis_w"], r["ir_h"], r["ir_w"], r["height"], r["width"]) == \
            ("480", "640", "120", "160", "120", "160")
    # test split also as files: visible RGB, brightness PNG, degC
    for r in (r for r in rows if r["split"] == "test"):
        vis = np.asarray(Image.open(os.path.join(ds, layout.TEST_DIR, "visible", r["id"] + ".png")))
        irb = np.asarray(Image.open(os.path.join(ds, layout.TEST_DIR, "ir", r["id"] + ".png")))
        degc = np.load(os.path.join(ds, layout.TEST_DIR, "ir_degC", r["id"] + ".npy"))
        assert vis.shape == (120, 160, 3) and irb.shape == (120, 160) and degc.shape == (120, 160)
        assert degc.dtype == np.float32
        np.testing.assert_array_equal(irb, np.round(spec.to_brightness(degc, *meta["window"])).astype(np.uint8))
    assert not glob.glob(ds + ".tmp-*") and not os.path.exists(os.path.join(ds, ".staging"))


def test_window_is_train_percentiles(syn_pairs, syn_ds):
    ds, info = syn_ds
    rows = [r for r in _manifest(ds) if r["split"] == "train"]
    vals = np.concatenate([resize_ir(np.load(os.path.join(syn_pairs, "ir", r["id"] + ".npy")), 120, 160).ravel()
                           for r in rows])
    lo, hi = np.percentile(vals, spec.DATASET_WINDOW_PERCENTILES)
    assert info["window"] == pytest.approx([lo, hi], abs=1e-4)


def test_split_rules():
    classes = [spec.OBJECT_CLASSES[i % 3] for i in range(1100)]
    train, test = S.split_indices(classes, seed=1)
    assert (len(train), len(test)) == (spec.PAPER_TRAIN, spec.PAPER_TEST)
    assert not set(train) & set(test) and len(set(train) | set(test)) == 1100
    per = {c: sum(classes[i] == c for i in test) for c in spec.OBJECT_CLASSES}
    assert sorted(per.values()) == [33, 33, 34]
    assert S.split_indices(classes, seed=1) == (train, test)          # seeded
    assert S.split_indices(classes, seed=2)[1] != test
    # 2000 pairs: the paper's 100 test pairs, the rest trains
    assert len(S.split_indices(["a"] * 2000)[1]) == 100
    # fewer than 1100: the stated fraction, at least one test pair, at least one train pair
    assert len(S.split_indices(["a"] * 110)[1]) == 10
    assert [len(x) for x in S.split_indices(["a", "b"])] == [1, 1]
    skew = ["human"] * 90 + ["computer"] * 20
    _, t = S.split_indices(skew, test_count=11)
    assert sum(skew[i] == "computer" for i in t) == 2
    with pytest.raises(S.SplitError):
        S.split_indices(["a"])


def test_window_modes_image_and_fixed(syn_pairs, tmp_path):
    out = str(tmp_path / "img")
    info = B.build(out, pair_roots=[syn_pairs], cfg=B.BuildConfig(window_mode="image", workers=1, progress=False,
                                                                 test_count=4))
    assert info["window"] is None
    for r in (r for r in _manifest(out) if r["split"] == "test"):
        d = np.load(os.path.join(out, layout.TEST_DIR, "ir_degC", r["id"] + ".npy"))
        assert float(r["t_min"]) == pytest.approx(float(d.min()), abs=1e-3)
        assert float(r["t_max"]) == pytest.approx(float(d.max()), abs=1e-3)
        b = np.asarray(Image.open(os.path.join(out, layout.TEST_DIR, "ir", r["id"] + ".png")))
        assert b.min() == 0 and b.max() == 255
    out = str(tmp_path / "fixed")
    info = B.build(out, pair_roots=[syn_pairs], cfg=B.BuildConfig(window_mode="fixed", window=(10.0, 50.0),
                                                                 workers=1, progress=False))
    assert info["window"] == [10.0, 50.0]
    assert {(r["t_min"], r["t_max"]) for r in _manifest(out)} == {("10.0000", "50.0000")}
    with pytest.raises(B.BuildError):
        B.build(str(tmp_path / "x"), pair_roots=[syn_pairs], cfg=B.BuildConfig(window_mode="fixed"))


def _grey_pairs(root, vis_dir, ir_dir, n, size=(48, 64), ir_size=(24, 32), ext=".png", ir_rgb=False, seed=0):
    """SYNTHETIC aligned pairs: visible brightness encodes the IR brightness."""
    rng = np.random.RandomState(seed)
    os.makedirs(os.path.join(root, vis_dir), exist_ok=True)
    os.makedirs(os.path.join(root, ir_dir), exist_ok=True)
    stems = []
    for i in range(n):
        ir = rng.randint(0, 256, ir_size).astype(np.uint8)
        vis = np.repeat(np.kron(ir, np.ones((size[0] // ir_size[0], size[1] // ir_size[1]), np.uint8))[:, :, None],
                        3, axis=2)
        stem = "I%05d" % i
        Image.fromarray(vis).save(os.path.join(root, vis_dir, stem + ext))
        Image.fromarray(np.repeat(ir[:, :, None], 3, axis=2) if ir_rgb else ir).save(
            os.path.join(root, ir_dir, stem + ext))
        stems.append(stem)
    return stems


def test_pair_layouts(tmp_path):
    """tv/+ir/ (8-bit brightness: labels are its bins), KAIST nests, LLVIP RGB-grey JPEGs."""
    tv = str(tmp_path / "tv_set")
    _grey_pairs(tv, "tv", "ir", 6)
    out = str(tmp_path / "ds_tv")
    info = B.build(out, pair_roots=[tv], cfg=B.BuildConfig(height=24, width=32, workers=1, progress=False))
    assert info["ir_units"] == "brightness" and info["window_mode"] == "fixed" and info["window"] == [0.0, 255.0]
    assert info["synthetic"] is False and info["object_classes"] == ["unknown"]
    feats, labels = _lmdb(out, layout.TRAIN_DB, layout.FEATURES), _lmdb(out, layout.TRAIN_DB, layout.LABELS)
    np.testing.assert_array_equal(labels[:, 0], spec.brightness_to_bins(feats[:, 0].astype(np.float64)))
    kaist = str(tmp_path / "kaist")
    for s in ("set00/V000", "set00/V001", "set06/V000"):
        _grey_pairs(os.path.join(kaist, s), "visible", "lwir", 3)
    info = B.build(str(tmp_path / "ds_kaist"), pair_roots=[kaist],
                   cfg=B.BuildConfig(height=24, width=32, workers=1, progress=False))
    rows = _manifest(str(tmp_path / "ds_kaist"))
    assert len(rows) == 9 and "set00_V001_I00002" in {r["id"] for r in rows}
    assert {r["id"] for r in rows if r["split"] == "test"} == {"set06_V000_I%05d" % k for k in range(3)}
    llvip = str(tmp_path / "llvip")
    _grey_pairs(llvip, "visible", "infrared", 4, ext=".jpg", ir_rgb=True)
    with open(os.path.join(llvip, "classes.csv"), "w") as f:
        f.write("stem,object_class\nI00000,human\nI00001,human\n")
    info = B.build(str(tmp_path / "ds_llvip"), pair_roots=[llvip], cfg=B.BuildConfig(
        height=48, width=64, ir_range=(-10.0, 40.0), workers=1, progress=False))
    assert info["ir_units"] == "degC" and info["window_mode"] == "dataset"
    assert sorted(r["object_class"] for r in _manifest(str(tmp_path / "ds_llvip"))) == \
        ["human", "human", "unknown", "unknown"]


def test_portrait_and_upsampling(tmp_path):
    """A portrait 32x24 IR pair at the paper's 240x320: centre crop, IR upsampled bilinear."""
    root = str(tmp_path / "portrait")
    _grey_pairs(root, "visible", "ir", 3, size=(64, 48), ir_size=(32, 24))
    out = str(tmp_path / "ds")
    B.build(out, pair_roots=[root], cfg=B.BuildConfig(height=spec.PAPER_HEIGHT, width=spec.PAPER_WIDTH,
                                                      workers=1, progress=False))
    assert _lmdb(out, layout.TRAIN_DB, layout.FEATURES).shape[1:] == (3, 240, 320)
    r = _manifest(out)[0]
    assert (r["ir_h"], r["ir_w"], r["height"], r["width"]) == ("32", "24", "240", "320")
    vis, ir = np.zeros((64, 48, 3), np.uint8), np.random.RandomState(0).rand(32, 24).astype(np.float32)
    v2, i2 = B.fit_pair(vis, ir, 120, 160, "crop")
    assert v2.shape == (120, 160, 3) and i2.shape == (120, 160)
    v3, i3 = B.fit_pair(vis, ir, 120, 160, "rotate")
    assert v3.shape == (120, 160, 3) and i3.shape == (120, 160)
    # the 24x32 landscape the rotation gives has the network's 4:3 aspect: nothing is cropped,
    # only enlarged (a fit that centre-crops the portrait instead keeps 18 of its 32 rows)
    np.testing.assert_allclose(i3, resize_ir(ir[::-1].T, 120, 160), atol=1e-6)


def test_rotate_fit_turns_both_images_clockwise():
    """--fit rotate on a portrait pair already at the network's size (no resizing): the output
    pixels ARE the input pixels turned clockwise, visible and IR alike (out[i, j] = in[H-1-j, i]);
    a landscape pair is left as it is."""
    rng = np.random.RandomState(4)
    vis = rng.randint(0, 256, (160, 120, 3)).astype(np.uint8)
    ir = rng.rand(160, 120).astype(np.float32)
    v, i = B.fit_pair(vis, ir, 120, 160, "rotate")
    np.testing.assert_array_equal(i, ir[::-1].T)
    np.testing.assert_array_equal(v, vis[::-1].transpose(1, 0, 2))
    assert i[0, 0] == ir[159, 0] and i[0, 159] == ir[0, 0] and i[119, 159] == ir[0, 119]
    v2, i2 = B.fit_pair(np.ascontiguousarray(v), np.ascontiguousarray(i), 120, 160, "rotate")
    np.testing.assert_array_equal(i2, i)
    np.testing.assert_array_equal(v2, v)


@pytest.fixture()
def bad_pairs(tmp_path):
    root = str(tmp_path / "bad")
    stems = _grey_pairs(root, "visible", "ir", 8, size=(48, 64), ir_size=(48, 64))
    vis, ird = os.path.join(root, "visible"), os.path.join(root, "ir")
    np.save(os.path.join(ird, "const.npy"), np.full((48, 64), 21.0, np.float32))
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(os.path.join(vis, "const.png"))
    nan = np.random.RandomState(1).rand(48, 64).astype(np.float32)
    nan[5, 5] = np.nan
    np.save(os.path.join(ird, "nan.npy"), nan)
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(os.path.join(vis, "nan.png"))
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(os.path.join(vis, "lonely.png"))
    Image.fromarray(np.zeros((48, 64), np.uint8)).save(os.path.join(ird, "orphan.png"))
    data = open(os.path.join(vis, stems[0] + ".png"), "rb").read()
    with open(os.path.join(vis, stems[0] + ".png"), "wb") as f:
        f.write(data[: len(data) // 2])
    with open(os.path.join(vis, stems[1] + ".png"), "wb") as f:
        f.write(b"not an image at all")
    Image.fromarray(np.zeros((20, 64, 3), np.uint8)).save(os.path.join(vis, stems[2] + ".png"))
    expect = {os.path.join(ird, "const.npy"): "constant", os.path.join(ird, "nan.npy"): "NaN",
              os.path.join(vis, "lonely.png"): "no IR partner", os.path.join(ird, "orphan.png"): "no visible partner",
              os.path.join(vis, stems[0] + ".png"): "truncated",
              os.path.join(vis, stems[1] + ".png"): "not a readable image",
              os.path.join(vis, stems[2] + ".png"): "aspect"}
    return root, expect


def test_bad_inputs_skipped_and_named(bad_pairs, tmp_path):
    root, expect = bad_pairs
    lines = []
    out = str(tmp_path / "ds")
    info = B.build(out, pair_roots=[root], cfg=B.BuildConfig(height=24, width=32, workers=2, progress=False),
                   log=lines.append)
    assert info["counts"]["skipped"] == len(expect)
    assert info["counts"]["train"] + info["counts"]["test"] == 8 - 3 + 0
    for path, word in expect.items():
        hit = [l for l in lines if l.startswith("skip: %s: " % path)]
        assert len(hit) == 1 and word.lower() in hit[0].lower(), (path, word, lines)
    with open(os.path.join(out, B.SKIPPED_FILE), newline="") as f:
        assert {r["file"] for r in csv.DictReader(f)} == set(expect)


def test_strict_exit_code_and_nothing_written(bad_pairs, tmp_path, capsys):
    root, expect = bad_pairs
    out = str(tmp_path / "strict_ds")
    rc = cli_main(["build", "--pairs", root, "--out", out, "--size", "24", "32", "--strict", "--quiet"])
    assert rc == 1 and not os.path.exists(out) and not glob.glob(out + ".tmp-*")
    err = capsys.readouterr().err
    assert "--strict" in err and all(p in err for p in expect)
    rc = cli_main(["build", "--pairs", root, "--out", out, "--size", "24", "32", "--quiet"])
    assert rc == 0 and os.path.isfile(os.path.join(out, layout.DATASET_INFO_FILE))


def test_flir_folder_build(flir_written, tmp_path, capsys):
    """A folder of FLIR files (written from known numbers): the three with a visible photo
    become pairs, the rest are named and skipped."""
    from tests import flir_writer as W

    written, info = flir_written
    src = str(tmp_path / "flir")
    shutil.copytree(written, src)
    Image.fromarray(np.full((40, 60, 3), 90, np.uint8)).save(os.path.join(src, "holiday.jpg"))
    data = open(os.path.join(written, "written_portrait.jpg"), "rb").read()
    with open(os.path.join(src, "mug_cut.jpg"), "wb") as f:
        f.write(data[: len(data) // 2])
    with open(os.path.join(src, "classes.csv"), "w") as f:
        f.write("written_portrait,mug\n")
    out = str(tmp_path / "ds")
    rc = cli_main(["build", "--flir", src, "--out", out, "--classes", os.path.join(src, "classes.csv"), "--quiet"])
    assert rc == 0
    err = capsys.readouterr().err
    for name, why in [(n, "thermal only") for n in W.THERMAL_ONLY] + [("holiday.jpg", "not a radiometric"),
                                                                      ("mug_cut.jpg", "truncated")]:
        line = [l for l in err.splitlines() if os.path.join(src, name) in l]
        assert len(line) == 1 and why in line[0], (name, err)
    rows = {r["id"]: r for r in _manifest(out)}
    assert set(rows) == {os.path.splitext(n)[0] for n in W.WITH_PHOTO}
    assert rows["written_portrait"]["object_class"] == "mug" and rows["written_letterbox"]["object_class"] == "unknown"
    m = rows["written_portrait"]
    # 160x120 portrait IR, 3 photo px per IR pixel, centred 14 px right and 14 px up of the 480x640 photo
    assert (m["vis_h"], m["vis_w"], m["ir_h"], m["ir_w"]) == ("480", "360", "160", "120")
    assert m["source"] == "flir:written_portrait.jpg"
    with open(os.path.join(out, layout.DATASET_INFO_FILE)) as f:
        meta = json.load(f)
    assert meta["synthetic"] is False and meta["counts"] == {"train": 2, "test": 1, "skipped": 5, "train_entries": 2}
    rc = cli_main(["build", "--flir", src, "--out", str(tmp_path / "strict"), "--strict", "--quiet"])
    assert rc == 1 and not os.path.exists(str(tmp_path / "strict"))
    with open(os.path.join(out, B.ALIGNMENT_FILE), newline="") as f:
        align = {r["id"]: r for r in csv.DictReader(f)}
    assert set(align) == set(rows)
    a = align["written_portrait"]
    assert (a["model"], a["offset_x"], a["offset_y"], a["shift_x"], a["shift_y"]) == (W.MODEL, "14", "-14", "0", "0")
    assert (a["vis_x0"], a["vis_x1"], a["ir_u1"], a["ir_v1"]) == ("74", "434", "120", "160")
    assert a["edge_agreement"] == a["edge_agreement_tags"]        # no refinement: before == after


def test_flir_refined_alignment(flir_dirs, tmp_path):
    """--refine-alignment on every FLIR file with a photo (written; real too where present):
    alignment.csv says, per pair, the residual shift the edge search found and the edge
    agreement before (tags alone) and after (the crop kept). The residuals themselves are
    pinned in test_dataset_flir.py (the written files': the ones planted)."""
    from conftest import flir_cases, flir_path
    from dataset_builder import flir
    from tests import flir_writer as W

    out = str(tmp_path / "ds")
    paths = [flir_path(flir_dirs, c.values[0]) for c in
             flir_cases(W.WITH_PHOTO, ("flir_one_mug.jpg", "flir_ax8.jpg", "flir_b60_aqua_tower.jpg"))]
    rc = cli_main(["build", "--flir"] + paths + ["--out", out, "--refine-alignment", "24", "--quiet"])
    assert rc == 0
    with open(os.path.join(out, flir.ALIGNMENT_FILE), newline="") as f:
        assert tuple(next(csv.reader(f))) == flir.ALIGNMENT_COLUMNS
        f.seek(0)
        rows = {r["id"]: r for r in csv.DictReader(f)}
    names = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    assert sorted(rows) == sorted(names)
    for n, p in zip(names, paths):
        a = rows[n]
        m = flir.read_flir(p, refine_px=24).meta
        assert [int(a["shift_x"]), int(a["shift_y"])] == m["shift"] != [0, 0]
        assert float(a["edge_agreement_tags"]) == pytest.approx(m["edge_agreement_tags"], abs=1e-4)
        assert float(a["edge_agreement"]) == pytest.approx(m["edge_agreement"], abs=1e-4)
        assert float(a["edge_agreement"]) > float(a["edge_agreement_tags"]) + 0.1, a
    if "flir_one_mug" in rows:
        assert float(rows["flir_one_mug"]["edge_agreement"]) > 0.45


def test_refuses_to_replace_foreign_folder(syn_pairs, tmp_path):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.tex").write_text("do not delete")
    with pytest.raises(OutputExists):
        B.build(str(out), pair_roots=[syn_pairs], cfg=B.BuildConfig(workers=1, progress=False))
    assert (out / "thesis.tex").read_text() == "do not delete"


def _start_build(pairs, out, size=("360", "480"), entry=("-m", "dataset_builder")):
    env = dict(os.environ, PYTHONPATH=REPO)
    # SIGINT back to its default in the child: a shell's background job (CI scripts, `make test &`)
    # starts with SIGINT ignored, which Python then keeps, and Ctrl-C would never reach the build.
    return subprocess.Popen([sys.executable, *entry, "build", "--pairs", pairs, "--out", out,
                             "--size", size[0], size[1], "--workers", "1", "--quiet"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_writing(out, proc, before, timeout=120):
    """Until the builder has made its temporary folder beside `out`; then the build is frozen
    (SIGSTOP) so the signal under test cannot arrive after it finished: 36 small pairs are
    decoded and written within milliseconds once the folder exists. Returns None when the
    build was already done, or had already swapped the new dataset in (`out`'s manifest is no
    longer `before`; the temporary folder then holds the old one while it is deleted): the
    caller starts another."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        for tmp in glob.glob(out + ".tmp-*"):
            if os.path.isdir(tmp):
                proc.send_signal(signal.SIGSTOP)
                if proc.poll() is None and os.path.isdir(tmp) and \
                        os.path.isfile(os.path.join(out, layout.MANIFEST_FILE)) and _manifest(out) == before:
                    return tmp
                proc.send_signal(signal.SIGCONT)
                proc.wait(60)
                return None
        if proc.poll() is not None:
            raise AssertionError("build finished before it could be interrupted: %s" % proc.stderr.read())
        time.sleep(0.005)
    raise AssertionError("build never started writing")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_interrupted_build_keeps_old_dataset(syn_pairs, syn_ds, tmp_path, sig):
    old, _ = syn_ds
    out = str(tmp_path / "ds")
    shutil.copytree(old, out)
    before = _manifest(out)
    n_before = lmdb_count(os.path.join(out, layout.TRAIN_DB, layout.FEATURES))
    for _ in range(5):
        proc = _start_build(syn_pairs, out)
        tmp = _wait_writing(out, proc, before)
        if tmp is not None:
            break
        shutil.rmtree(out)
        shutil.copytree(old, out)
    assert tmp is not None, "the build finished before it could be stopped, five times"
    proc.send_signal(sig)
    proc.send_signal(signal.SIGCONT)     # a stopped process handles SIGINT once it runs again
    rc = proc.wait(60)
    assert rc == (-signal.SIGKILL if sig == signal.SIGKILL else 130), proc.stderr.read()
    # the old dataset is whole and untouched
    assert _manifest(out) == before
    assert lmdb_count(os.path.join(out, layout.TRAIN_DB, layout.FEATURES)) == n_before
    assert _lmdb(out, layout.TRAIN_DB, layout.FEATURES).shape[2:] == (120, 160)
    if sig == signal.SIGKILL:
        assert os.path.isdir(tmp)            # a killed process cannot clean up ...
    else:
        assert not os.path.exists(tmp)       # ... Ctrl-C does
    # the next build removes the dead build's leftovers and replaces the dataset
    info = B.build(out, pair_roots=[syn_pairs], cfg=B.BuildConfig(height=60, width=80, workers=1, progress=False))
    assert not glob.glob(out + ".tmp-*") and not glob.glob(out + ".old-*")
    assert _lmdb(out, layout.TRAIN_DB, layout.FEATURES).shape[1:] == (3, 60, 80)
    assert info["counts"]["train"] == n_before


# dataset_builder's CLI with a real SIGINT the instant its temporary folder exists: the window in
# which a Ctrl-C once left `<out>.tmp-<pid>-...` behind (the process preempted right after mkdir).
_CTRL_C_AT_TMP = """
import os, signal, sys
real_mkdir = os.mkdir
def mkdir(path, *args, **kw):
    real_mkdir(path, *args, **kw)
    if os.path.basename(path).startswith(os.path.basename(sys.argv[sys.argv.index("--out") + 1]) + ".tmp-"):
        os.kill(os.getpid(), signal.SIGINT)
os.mkdir = mkdir
from dataset_builder.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_ctrl_c_the_instant_the_build_folder_exists_keeps_old_dataset_and_leaves_nothing(syn_pairs, syn_ds,
                                                                                         tmp_path):
    old, _ = syn_ds
    out = str(tmp_path / "ds")
    shutil.copytree(old, out)
    before = _manifest(out)
    proc = _start_build(syn_pairs, out, entry=("-c", _CTRL_C_AT_TMP))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert _manifest(out) == before
    assert os.listdir(str(tmp_path)) == ["ds"]


def test_thermalnet_val_stage_reads_the_dataset(caffe, syn_ds, tmp_path):
    """The real network (prototxt/thermalnet_v1_1.prototxt, bound by thermalnet/nets.materialize)
    reads the val LMDBs of a built dataset: same labels, mean-subtracted features, finite loss."""
    ds, _ = syn_ds
    path = nets.materialize(nets.network("v1_1").net, ds, str(tmp_path / "net.prototxt"), val_batch_size=2)
    net = caffe.Net(path, caffe.TEST, stages=["val"])
    out = net.forward()
    labels = _lmdb(ds, layout.VAL_DB, layout.LABELS)[:2]
    feats = _lmdb(ds, layout.VAL_DB, layout.FEATURES)[:2].astype(np.float32)
    mean = caffe.io.blobproto_to_array(_blobproto(caffe, os.path.join(ds, layout.TRAIN_DB, layout.MEAN_FILE)))
    np.testing.assert_array_equal(net.blobs["label"].data, labels)
    np.testing.assert_allclose(net.blobs["data"].data, feats - mean, atol=1e-3)
    losses = [float(np.asarray(v).ravel()[0]) for k, v in out.items() if "loss" in k]
    assert losses and all(np.isfinite(losses))
