"""Dataset-builder options the ablations need (Q, lambda, mirrored pairs) and the pair
layouts of public aligned sets (RoadScene, vi/ir, Visible/Infrared), on SYNTHETIC pairs.

Expectations are computed here from the written LMDBs and by hand, not with the
builder's own functions.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from dataset_builder import build as B
from dataset_builder import pairs as P
from thermalnet import layout
from dataset_builder import synthetic
from dataset_builder.cli import main as cli_main
from thermalnet.lmdb_io import read_mean_binaryproto
from tests.test_dataset_build import _lmdb


@pytest.fixture(scope="module")
def few_pairs(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("syn") / "pairs")
    synthetic.generate(out, count=14, seed=3, workers=1, progress=False)
    return out


@pytest.fixture(scope="module")
def plain_and_mirrored(few_pairs, tmp_path_factory):
    root = tmp_path_factory.mktemp("ds")
    plain = str(root / "plain")
    mirrored = str(root / "mirrored")
    B.build(plain, pair_roots=[few_pairs], cfg=B.BuildConfig(workers=1, progress=False, test_count=4))
    assert cli_main(["build", "--pairs", few_pairs, "--out", mirrored, "--mirror", "--test-count", "4",
                     "--workers", "1", "--quiet"]) == 0
    return plain, mirrored


def test_mirror_writes_flipped_copies_of_training_pairs_only(plain_and_mirrored):
    plain, mirrored = plain_and_mirrored
    fp, lp = _lmdb(plain, layout.TRAIN_DB, layout.FEATURES), _lmdb(plain, layout.TRAIN_DB, layout.LABELS)
    fm, lm = _lmdb(mirrored, layout.TRAIN_DB, layout.FEATURES), _lmdb(mirrored, layout.TRAIN_DB, layout.LABELS)
    assert len(fm) == len(lm) == 2 * len(fp) == 20
    # entry 2k is pair k as it was, entry 2k+1 its mirror: features and labels flipped together
    np.testing.assert_array_equal(fm[0::2], fp)
    np.testing.assert_array_equal(lm[0::2], lp)
    np.testing.assert_array_equal(fm[1::2], fp[:, :, :, ::-1])
    np.testing.assert_array_equal(lm[1::2], lp[:, :, :, ::-1])
    assert not np.array_equal(fm[1::2], fm[0::2])          # a scene is not its own mirror
    # the test split is never mirrored
    np.testing.assert_array_equal(_lmdb(mirrored, layout.VAL_DB, layout.FEATURES), _lmdb(plain, layout.VAL_DB, layout.FEATURES))
    # the mean is over every training entry, so it is left-right symmetric
    mean = read_mean_binaryproto(os.path.join(mirrored, layout.TRAIN_DB, layout.MEAN_FILE))
    np.testing.assert_allclose(mean, fm.astype(np.float64).mean(axis=0), atol=1e-3)
    np.testing.assert_allclose(mean, mean[:, :, ::-1], atol=1e-3)
    info = json.load(open(os.path.join(mirrored, layout.DATASET_INFO_FILE)))
    assert info["mirror"] is True and info["counts"]["train"] == 10 and info["counts"]["train_entries"] == 20


@pytest.mark.parametrize("q,lam", [(16, 0.0), (64, 1.0)])
def test_bins_and_lambda_reach_labels_and_weights(few_pairs, tmp_path, q, lam):
    ds = str(tmp_path / "ds")
    info = B.build(ds, pair_roots=[few_pairs], cfg=B.BuildConfig(workers=1, progress=False, test_count=4,
                                                                 num_bins=q, rebalance_lambda=lam))
    assert info["num_bins"] == q and info["lambda"] == lam
    labels = _lmdb(ds, layout.TRAIN_DB, layout.LABELS)
    assert labels.max() < q
    # prior counted here from the LMDB; v(Y) by hand: ((1 - lam) p + lam / Q)^-1, E_p[v] = 1
    counts = np.bincount(labels.ravel(), minlength=q).astype(np.float64)
    prior = counts / counts.sum()
    mix = (1 - lam) * prior + lam / q
    v = np.array([1.0 / m if m > 0 else 0.0 for m in mix])
    v[mix == 0] = v.max()                 # bins never seen: the largest finite weight
    v /= (prior * v).sum()
    w = np.loadtxt(os.path.join(ds, layout.CLASS_WEIGHTS_FILE))
    assert w.shape == (q,)
    np.testing.assert_allclose(w, v, rtol=1e-5)
    if lam == 1.0:
        np.testing.assert_allclose(w, np.ones(q), rtol=1e-6)     # no rebalancing


def test_bad_bins_or_lambda_is_one_line_error(few_pairs, tmp_path, capsys):
    for args in (["--bins", "1"], ["--lambda", "1.5"]):
        rc = cli_main(["build", "--pairs", few_pairs, "--out", str(tmp_path / "x"), "--quiet"] + args)
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 1 and len(err) == 1 and err[0].startswith("error:")
        assert not os.path.exists(str(tmp_path / "x"))


@pytest.mark.parametrize("vis,ir", [("crop_LR_visible", "cropinfrared"), ("vi", "ir"), ("Visible", "Infrared"),
                                    ("visible", "infrared"), ("Vis", "Ir"), ("VIS", "IR")])
def test_public_pair_layouts_are_found(tmp_path, vis, ir):
    root = tmp_path / "set"
    (root / vis).mkdir(parents=True)
    (root / ir).mkdir()
    for i in range(3):
        Image.new("RGB", (40, 30), (i, 2 * i, 3 * i)).save(str(root / vis / ("FLIR_%05d.jpg" % i)))
        Image.new("L", (40, 30), 10 * i).save(str(root / ir / ("FLIR_%05d.jpg" % i)))
    # RoadScene ships an unpaired high-resolution folder too: it must not be picked instead
    if vis == "crop_LR_visible":
        (root / "crop_HR_visible").mkdir()
        (root / "infrared").mkdir()
    found = P.find_pair_dirs(str(root))
    assert found == [(str(root / vis), str(root / ir))]
    pairs, skipped = P.list_pairs(str(root))
    assert [p.id for p in pairs] == ["FLIR_00000", "FLIR_00001", "FLIR_00002"] and skipped == []


# ---- the dataset window (found by make mutation: window) -------------------------------------------

def test_dataset_window_subsamples_every_kth_pixel_of_the_training_images(monkeypatch):
    """Above _MAX_WINDOW_SAMPLES the window reads every k-th pixel, k = ceil(total / max), of the
    training images only; the 0.5 / 99.5 percentiles of exactly those pixels, worked out apart."""
    from dataset_builder import build as B
    rng = np.random.RandomState(3)
    stack = [rng.uniform(10, 40, size=(10, 20)) for _ in range(3)]     # 200 pixels an image
    stack[1][:] = 1000.0                                                # not in the training split
    monkeypatch.setattr(B, "_MAX_WINDOW_SAMPLES", 64)                   # 400 pixels: k = ceil(6.25) = 7
    lo, hi = B.dataset_window(stack, [2, 0])
    sample = np.concatenate([stack[0].ravel()[::7], stack[2].ravel()[::7]])
    assert (lo, hi) == tuple(np.percentile(sample, (0.5, 99.5)))
    assert (lo, hi) != tuple(np.percentile(np.concatenate([stack[0].ravel()[::6], stack[2].ravel()[::6]]),
                                           (0.5, 99.5)))
    monkeypatch.setattr(B, "_MAX_WINDOW_SAMPLES", 10 ** 6)             # below the limit: every pixel
    assert B.dataset_window(stack, [0, 2]) == tuple(np.percentile(np.concatenate([stack[0], stack[2]]),
                                                                  (0.5, 99.5)))


def test_dataset_window_of_a_flat_training_split_is_one_line():
    from dataset_builder import build as B
    with pytest.raises(B.BuildError, match=r"^training IR has no temperature spread \(20\.000\.\.20\.000\): "
                                           r"cannot set a window$"):
        B.dataset_window([np.full((4, 4), 20.0), np.full((4, 4), 35.0)], [0])
