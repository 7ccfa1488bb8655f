"""The SYNTHETIC generator: seeded, balanced, labelled SYNTHETIC, physically plausible, learnable."""
from __future__ import annotations

import csv
import json
import os
import time

import cv2
import numpy as np
import pytest

from dataset_builder import build as B
from thermalnet import layout, spec
from dataset_builder import synthetic
from dataset_builder.cli import main as cli_main


def test_seeded_and_shaped():
    v1, ir1, i1 = synthetic.render_scene(5, 3, "human")
    v2, ir2, i2 = synthetic.render_scene(5, 3, "human")
    assert v1.shape == (*spec.FLIR_ONE_VISIBLE_SIZE, 3) and v1.dtype == np.uint8
    assert ir1.shape == spec.FLIR_ONE_IR_SIZE and ir1.dtype == np.float32
    np.testing.assert_array_equal(v1, v2)
    np.testing.assert_array_equal(ir1, ir2)
    v3, ir3, _ = synthetic.render_scene(6, 3, "human")
    assert not np.array_equal(ir1, ir3)
    with pytest.raises(ValueError):
        synthetic.render_scene(5, 3, "toaster")


def test_class_plan_balanced():
    plan = synthetic.class_plan(1100, spec.SEED)
    counts = [plan.count(c) for c in spec.OBJECT_CLASSES]
    assert sum(counts) == 1100 and max(counts) - min(counts) <= 1
    assert plan == synthetic.class_plan(1100, spec.SEED) and plan != synthetic.class_plan(1100, 1)


def test_temperatures_plausible():
    """FLIR ONE range; room ambient 18-24 C; the warm parts of each class where physics puts them."""
    for i in range(12):
        cls = spec.OBJECT_CLASSES[i % 3]
        _, ir, info = synthetic.render_scene(spec.SEED, i, cls)
        lo, hi = spec.FLIR_ONE_RANGE_C
        assert lo < info["t_min"] and info["t_max"] < hi
        assert 18.0 <= info["ambient"] <= 24.0
        # most of a room is near ambient (walls, floor, furniture)
        assert abs(float(np.median(ir)) - info["ambient"]) < 3.0, info
        if cls == "human":           # exposed skin 33-35 C, blurred by the optics: > 31 C somewhere
            assert info["t_max"] > 31.0, info


def test_noise_and_blur_like_a_microbolometer():
    _, ir, info = synthetic.render_scene(spec.SEED, 1, "computer")
    # NETD-like noise: neighbouring pixels of a flat wall differ by ~0.1 C, not 0 and not degrees
    d = np.diff(ir[:20, :], axis=1).ravel()
    assert 0.03 < float(np.median(np.abs(d))) < 0.3


def _pixel_features(v, size=(80, 60)):
    """Per-pixel colour, saturation and edge energy at three scales of context, and height."""
    s = cv2.resize(v, size, interpolation=cv2.INTER_AREA).astype(np.float32) / 255
    g = cv2.cvtColor(s, cv2.COLOR_RGB2GRAY)
    sat = cv2.cvtColor(s, cv2.COLOR_RGB2HSV)[:, :, 1]
    edges = np.hypot(cv2.Sobel(g, cv2.CV_32F, 1, 0), cv2.Sobel(g, cv2.CV_32F, 0, 1))
    f = [s, sat[:, :, None], s - cv2.GaussianBlur(s, (0, 0), 8)]
    for sg in (2, 5, 12):
        f += [cv2.GaussianBlur(s, (0, 0), sg), cv2.GaussianBlur(sat, (0, 0), sg)[:, :, None],
              cv2.GaussianBlur(edges, (0, 0), sg)[:, :, None]]
    f.append(np.repeat(np.linspace(0, 1, size[1], dtype=np.float32)[:, None], size[0], 1)[:, :, None])
    f = np.concatenate(f, axis=2)
    return f.reshape(-1, f.shape[2])


def _forest_rms(xs, ys, tests):
    rf = cv2.ml.RTrees_create()
    rf.setMaxDepth(16)
    rf.setMinSampleCount(4)
    rf.setActiveVarCount(6)
    rf.setTermCriteria((cv2.TERM_CRITERIA_MAX_ITER, 20, 0))
    idx = np.random.default_rng(0).choice(len(xs), 30000, replace=False)
    rf.train(xs[idx], cv2.ml.ROW_SAMPLE, ys[idx])
    return float(np.mean([np.sqrt(np.mean((rf.predict(x)[1].ravel() - y) ** 2)) for x, y in tests]))


@pytest.mark.slow
def test_visible_predicts_temperature():
    """A small random forest on per-pixel colour/texture features predicts the IR of unseen
    scenes better than the training mean does, and loses that edge when the pairs are
    shuffled (negative control): the visible image carries the thermal information.
    (A CNN sees whole objects; this local model is only a lower bound.)"""
    cv2.setRNGSeed(0)
    xs, ys = [], []
    for i in range(60):
        v, ir, _ = synthetic.render_scene(11, i, spec.OBJECT_CLASSES[i % 3])
        xs.append(_pixel_features(v))
        ys.append(cv2.resize(ir, (80, 60), interpolation=cv2.INTER_AREA).ravel())
    train, test = range(45), range(45, 60)
    x_tr = np.concatenate([xs[i] for i in train])
    y_tr = np.concatenate([ys[i] for i in train]).astype(np.float32)
    tests = [(xs[i], ys[i]) for i in test]
    mean = float(y_tr.mean())
    const = float(np.mean([np.sqrt(np.mean((mean - y) ** 2)) for _, y in tests]))
    aligned = _forest_rms(x_tr, y_tr, tests)
    perm = np.random.default_rng(1).permutation(len(train))
    y_shuf = np.concatenate([ys[train[j]] for j in perm]).astype(np.float32)
    shuffled = _forest_rms(x_tr, y_shuf, tests)
    print("RMS degC: constant %.2f, forest %.2f, forest on shuffled pairs %.2f" % (const, aligned, shuffled))
    assert aligned < 0.9 * const
    assert aligned < 0.9 * shuffled


def test_generate_folder_and_cli(tmp_path, capsys):
    out = str(tmp_path / "pairs")
    assert cli_main(["synthetic", "--out", out, "--count", "9", "--seed", "3", "--workers", "2", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "SYNTHETIC pairs: 9" in printed
    for c in spec.OBJECT_CLASSES:
        assert c in printed and "3 pairs" in printed.split(c)[1].split("\n")[0]
    assert "degC" in printed
    assert sorted(os.listdir(os.path.join(out, "visible"))) == ["syn_%05d.png" % i for i in range(9)]
    assert sorted(os.listdir(os.path.join(out, "ir"))) == ["syn_%05d.npy" % i for i in range(9)]
    with open(os.path.join(out, "README.txt")) as f:
        assert f.readline().startswith("SYNTHETIC")
    with open(os.path.join(out, "pairs.json")) as f:
        meta = json.load(f)
    assert meta["synthetic"] is True and meta["seed"] == 3
    with open(os.path.join(out, "classes.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["object_class"] for r in rows] == synthetic.class_plan(9, 3)
    # identical to rendering in-process: workers do not change the data
    v, ir, _ = synthetic.render_scene(3, 4, rows[4]["object_class"])
    np.testing.assert_array_equal(np.load(os.path.join(out, "ir", "syn_00004.npy")), ir)


@pytest.mark.slow
def test_full_1100_pairs_paper_split(tmp_path, capsys):
    """The demo default: 1100 SYNTHETIC pairs -> the paper's 1000/100 split, every class in both."""
    t0 = time.time()
    pairs = str(tmp_path / "pairs")
    summary = synthetic.generate(pairs, count=spec.PAPER_TRAIN + spec.PAPER_TEST, seed=spec.SEED, progress=False)
    t_gen = time.time() - t0
    t0 = time.time()
    info = B.build(str(tmp_path / "ds"), pair_roots=[pairs], cfg=B.BuildConfig(progress=False))
    t_build = time.time() - t0
    print(synthetic.format_summary(summary))
    print(B.format_summary(info, "ds"))
    print("generation %.1f s (%.1f pairs/s), build %.1f s (%.1f pairs/s)"
          % (t_gen, 1100 / t_gen, t_build, 1100 / t_build))
    assert info["counts"] == {"train": spec.PAPER_TRAIN, "test": spec.PAPER_TEST, "skipped": 0,
                              "train_entries": spec.PAPER_TRAIN}          # no mirrored copies by default
    assert info["synthetic"] is True
    for split in ("train", "test"):
        assert set(info["class_counts"][split]) == set(spec.OBJECT_CLASSES)
    assert sorted(info["class_counts"]["test"].values()) == [33, 33, 34]
    assert summary["count"] == 1100


def test_demo_cli(tmp_path, capsys):
    out = str(tmp_path / "demo")
    assert cli_main(["demo", "--out", out, "--count", "12", "--workers", "1", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "SYNTHETIC pairs: 12" in printed and "SYNTHETIC dataset" in printed and "11 train / 1 test" in printed
    with open(os.path.join(out, "dataset", layout.DATASET_INFO_FILE)) as f:
        assert json.load(f)["synthetic"] is True
