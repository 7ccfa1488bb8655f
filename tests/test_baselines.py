"""thermalnet.baselines: the least-squares luminance fit and the mean IR image, against numpy on a made-up dataset.

The dataset is written here (LMDBs in the kit's layout): visible images whose IR labels
are a known straight line of their luminance plus noise, quantised into Q bins, as the
builder stores them. The fit is compared with np.polyfit / np.linalg.lstsq over the same
pixels, decoded independently.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from thermalnet import baselines as bl, layout

H, W, Q = 12, 16, 32


def _write_dataset(root, n=5, slope=0.6, offset=30.0, noise=6.0, mirror=False, seed=0):
    from thermalnet.lmdb_io import LmdbWriter
    rng = np.random.RandomState(seed)
    rgb = rng.randint(0, 256, size=(n, H, W, 3)).astype(np.uint8)
    luma = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
    ir = np.clip(slope * luma + offset + rng.normal(0, noise, luma.shape), 0, 255)
    bins = np.minimum(np.floor(ir * Q / 256.0), Q - 1).astype(np.uint8)
    os.makedirs(os.path.join(root, layout.TRAIN_DB), exist_ok=True)
    feats, labs = [], []
    for i in range(n):
        feats.append(rgb[i][:, :, ::-1].transpose(2, 0, 1))         # BGR CxHxW, as the builder writes
        labs.append(bins[i][None])
        if mirror:
            feats.append(feats[-1][:, :, ::-1])
            labs.append(labs[-1][:, :, ::-1])
    with LmdbWriter(os.path.join(root, layout.TRAIN_DB, layout.FEATURES)) as fw, \
            LmdbWriter(os.path.join(root, layout.TRAIN_DB, layout.LABELS)) as lw:
        for f, l in zip(feats, labs):
            fw.put(np.ascontiguousarray(f))
            lw.put(np.ascontiguousarray(l))
    with open(os.path.join(root, layout.DATASET_INFO_FILE), "w") as f:
        json.dump({"synthetic": True, "note": "SYNTHETIC made-up test set", "num_bins": Q, "height": H,
                   "width": W}, f)
    centres = (bins.astype(np.float64) + 0.5) * (256.0 / Q) - 0.5
    return root, rgb, luma, centres


def test_fit_equals_polyfit_and_lstsq(tmp_path):
    ds, rgb, luma, centres = _write_dataset(str(tmp_path / "ds"))
    b = bl.Baselines(ds)
    slope, icpt = np.polyfit(luma.ravel(), centres.ravel(), 1)
    assert b.fit["a"] == pytest.approx(slope, abs=1e-9)
    assert b.fit["b"] == pytest.approx(icpt, abs=1e-7)
    A = np.stack([luma.ravel(), np.ones(luma.size)], axis=1)
    (a2, b2), *_ = np.linalg.lstsq(A, centres.ravel(), rcond=None)
    assert (b.fit["a"], b.fit["b"]) == pytest.approx((a2, b2), abs=1e-7)
    assert b.fit["pixels"] == luma.size and b.fit["images"] == 5
    r = np.corrcoef(luma.ravel(), centres.ravel())[0, 1]
    assert b.fit["r2"] == pytest.approx(r * r, abs=1e-9)
    assert 0.5 < b.fit["a"] < 0.7          # the made-up line (0.6) is recovered through the quantisation
    # the prediction is that line through the visible image's luma, clipped to 0..255
    pred = b.predict("fitted_luminance", rgb[0])
    np.testing.assert_allclose(pred, np.clip(slope * luma[0] + icpt, 0, 255), atol=1e-6)
    np.testing.assert_allclose(b.predict("mean_ir", rgb[0]), centres.mean(axis=0), atol=1e-9)
    np.testing.assert_allclose(b.predict("luminance", rgb[0]), luma[0], atol=1e-9)


def test_fit_is_clipped_and_mirror_invariant(tmp_path):
    _, rgb, _, _ = _write_dataset(str(tmp_path / "a"), slope=2.0, offset=-60.0, noise=1.0)
    b = bl.Baselines(str(tmp_path / "a"))
    p = b.predict("fitted_luminance", rgb[1])
    assert p.min() >= 0.0 and p.max() <= 255.0 and (p == 0).any() and (p == 255).any()
    plain = bl.Baselines(_write_dataset(str(tmp_path / "p"))[0]).fit
    mirrored = bl.Baselines(_write_dataset(str(tmp_path / "m"), mirror=True)[0]).fit
    assert mirrored["images"] == 2 * plain["images"]
    assert (mirrored["a"], mirrored["b"]) == pytest.approx((plain["a"], plain["b"]), abs=1e-9)


def test_unpaired_lmdbs_are_refused(tmp_path):
    from thermalnet.lmdb_io import LmdbWriter
    import shutil
    ds, *_ = _write_dataset(str(tmp_path / "ds"), n=3)
    shutil.rmtree(os.path.join(ds, layout.TRAIN_DB, layout.LABELS))
    with LmdbWriter(os.path.join(ds, layout.TRAIN_DB, layout.LABELS)) as lw:   # 4 labels for 3 images
        for _ in range(4):
            lw.put(np.zeros((1, H, W), np.uint8))
    with pytest.raises(ValueError, match="different numbers of entries"):
        bl.Baselines(ds)


def test_other_predictions_and_their_errors(tmp_path):
    ds, rgb, luma, centres = _write_dataset(str(tmp_path / "ds"), n=3)
    b = bl.Baselines(ds)
    np.testing.assert_allclose(b.predict("constant", rgb[0][:2, :3]), np.full((2, 3), centres.mean()), atol=1e-9)
    # Q = 32, bins 8 levels wide, centres 3.5, 11.5, ..., 251.5 (by hand)
    ir = np.array([[0.0, 7.9, 8.0, 255.0]])
    np.testing.assert_array_equal(b.predict("quantised_gt", rgb[0][:1, :4], ir), [[3.5, 3.5, 11.5, 251.5]])
    with pytest.raises(ValueError, match="needs the IR image"):
        b.predict("quantised_gt", rgb[0])
    with pytest.raises(ValueError, match="mean training IR image is \\(12, 16\\) but the test image is \\(11, 16\\)"):
        b.predict("mean_ir", rgb[0][:11])
    with pytest.raises(ValueError, match="unknown baseline 'median'"):
        b.predict("median", rgb[0])
    with pytest.raises(ValueError, match="label (1[6-9]|2[0-9]|3[01]) >= num_bins 16"):
        bl.train_statistics(ds, num_bins=16)
    np.testing.assert_array_equal(bl.luminance(np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255]]], np.uint8)),
                                  [[0.299 * 255, 0.587 * 255, 0.114 * 255]])


def test_flat_visible_images_fit_a_constant(tmp_path):
    """No luminance spread: slope 0, intercept = the mean label, r2 0 (not a division by zero)."""
    ds, _, _, centres = _write_dataset(str(tmp_path / "ds"), n=2)
    from thermalnet.lmdb_io import LmdbWriter
    import shutil
    shutil.rmtree(os.path.join(ds, layout.TRAIN_DB, layout.FEATURES))
    with LmdbWriter(os.path.join(ds, layout.TRAIN_DB, layout.FEATURES)) as fw:
        for _ in range(2):
            fw.put(np.full((3, H, W), 100, np.uint8))
    fit = bl.train_statistics(ds)["fit"]
    assert fit["a"] == 0.0 and fit["r2"] == 0.0 and fit["b"] == pytest.approx(centres.mean(), abs=1e-9)


def test_manifest_and_missing_lmdbs(tmp_path):
    ds = str(tmp_path)
    with pytest.raises(FileNotFoundError, match="manifest.csv: no such manifest"):
        bl.read_manifest(ds)
    with open(os.path.join(ds, layout.MANIFEST_FILE), "w") as f:
        f.write("id,split,object_class\na,train,human\nb,test,computer\nc,test,human\n")
    assert [r["id"] for r in bl.read_manifest(ds)] == ["b", "c"]
    assert [r["id"] for r in bl.read_manifest(ds, "train")] == ["a"]
    assert [r["id"] for r in bl.read_manifest(ds, None)] == ["a", "b", "c"]
    with open(os.path.join(ds, layout.MANIFEST_FILE), "w") as f:
        f.write("name,split\na,test\n")
    with pytest.raises(ValueError, match="manifest needs columns id and split"):
        bl.read_manifest(ds)
    with pytest.raises(FileNotFoundError, match="no LMDB folder"):
        bl.train_statistics(ds, num_bins=32)


def _rewrite(ds, which, arrays, first_key=0):
    """Replace train_db/<which> by these arrays, keys numbered from first_key."""
    from thermalnet.lmdb_io import LmdbWriter
    import shutil
    shutil.rmtree(os.path.join(ds, layout.TRAIN_DB, which))
    with LmdbWriter(os.path.join(ds, layout.TRAIN_DB, which)) as w:
        w.count = first_key
        for a in arrays:
            w.put(a)


def test_unpaired_or_misshapen_training_entries_are_refused(tmp_path):
    ds, *_ = _write_dataset(str(tmp_path / "ds"), n=2)
    _rewrite(ds, layout.LABELS, [np.zeros((1, H, W), np.uint8)] * 2, first_key=5)
    with pytest.raises(ValueError, match="keys differ \\(000000000 vs 000000005\\)"):
        bl.train_statistics(ds)
    _rewrite(ds, layout.LABELS, [np.zeros((1, H, W - 1), np.uint8)] * 2)
    with pytest.raises(ValueError, match="feature 000000000 is \\(3, 12, 16\\), label is \\(12, 15\\)"):
        bl.train_statistics(ds)
    _rewrite(ds, layout.LABELS, [])
    _rewrite(ds, layout.FEATURES, [])
    with pytest.raises(ValueError, match="empty training label LMDB"):
        bl.train_statistics(ds)


def test_label_bounds_flat_ir_and_a_one_row_manifest(tmp_path):
    ds, *_ = _write_dataset(str(tmp_path / "ds"), n=2)
    from thermalnet.lmdb_io import read_lmdb
    top = max(int(lab.max()) for _, lab in read_lmdb(os.path.join(ds, layout.TRAIN_DB, layout.LABELS)))
    with pytest.raises(ValueError, match="label %d >= num_bins %d" % (top, top)):
        bl.train_statistics(ds, num_bins=top)          # a label equal to Q is out of range
    # IR of one temperature: no spread to explain, r2 0 and slope 0 (no division by zero)
    _rewrite(ds, layout.LABELS, [np.full((1, H, W), 5, np.uint8)] * 2)
    fit = bl.train_statistics(ds)["fit"]
    assert fit["r2"] == 0.0 and fit["a"] == pytest.approx(0.0, abs=1e-12) and fit["b"] == pytest.approx(43.5)
    # one pixel in one bin up: IR variance 64 * (1/384)(1 - 1/384) = 0.166, still a fit with its r2
    near = np.full((1, H, W), 5, np.uint8)
    near[0, 3, 4] = 6
    _rewrite(ds, layout.LABELS, [near, np.full((1, H, W), 5, np.uint8)])
    fit = bl.train_statistics(ds)["fit"]
    luma = np.stack([bl.luminance(f[::-1].transpose(1, 2, 0)) for _, f in
                     read_lmdb(os.path.join(ds, layout.TRAIN_DB, layout.FEATURES))])
    ir = np.stack([near[0], np.full((H, W), 5)]) * 8.0 + 3.5
    assert fit["r2"] > 0 and fit["r2"] == pytest.approx(np.corrcoef(luma.ravel(), ir.ravel())[0, 1] ** 2, rel=1e-9)
    # and a visible image of tiny spread (one pixel 2 levels brighter in R: luma variance 0.0009): still a fit
    flat = np.full((3, H, W), 100, np.uint8)
    bright = flat.copy()
    bright[2, 3, 4] = 102                                           # BGR: channel 2 is R
    _rewrite(ds, layout.FEATURES, [bright, flat])
    fit = bl.train_statistics(ds)["fit"]
    luma = np.full((2, H, W), 100.0)
    luma[0, 3, 4] += 2 * 0.299
    slope, icpt = np.polyfit(luma.ravel(), ir.ravel(), 1)
    assert fit["a"] == pytest.approx(slope, rel=1e-6) and fit["b"] == pytest.approx(icpt, rel=1e-6)
    assert fit["r2"] == pytest.approx(1.0)
    with open(os.path.join(ds, layout.MANIFEST_FILE), "w") as f:
        f.write("id,object_class\na,human\n")
    with pytest.raises(ValueError, match="manifest needs columns id and split"):
        bl.read_manifest(ds)


def test_load_test_pair_reads_the_test_folder(tmp_path):
    from PIL import Image
    ds = str(tmp_path)
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 10
    ir = np.array([[0, 100, 255], [7, 8, 9]], np.uint8)
    for sub, img in (("visible", rgb), ("ir", ir)):
        os.makedirs(os.path.join(ds, layout.TEST_DIR, sub))
        Image.fromarray(img).save(os.path.join(ds, layout.TEST_DIR, sub, "p1.png"))
    vis, got = bl.load_test_pair(ds, "p1")
    np.testing.assert_array_equal(vis, rgb)
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, ir)
