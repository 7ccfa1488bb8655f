"""tools.evaluate and thermalnet.baselines on a small SYNTHETIC dataset with the real Caffe.

The dataset comes from dataset_builder.synthetic (labelled SYNTHETIC) built at 48x64
so the test stays fast; the model is a 2-iteration training run of the real v1.1 net.
Every metric the tool writes is recomputed here independently: pycaffe forward by hand,
numpy softmax/decoding, numpy RMS / offset-free RMS / PSNR, SSIM by the numpy
implementation of tests/test_metrics.py, the 3x3 Gaussian by hand, the fitted-luminance
line by np.linalg.lstsq over the training LMDBs.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from thermalnet import baselines as bl, spec
from tools import evaluate as ev

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEPLOY = os.path.join(REPO, "prototxt", "thermalnet_v1_1_deploy.prototxt")
H, W = 48, 64


def make_synthetic_dataset(root, count=24, height=H, width=W):
    from dataset_builder.build import BuildConfig, build
    from dataset_builder.synthetic import generate
    generate(os.path.join(root, "pairs"), count, spec.SEED, workers=1, progress=False)
    ds = os.path.join(root, "dataset")
    build(ds, (), [os.path.join(root, "pairs")], BuildConfig(height=height, width=width, test_count=6,
                                                           workers=1, progress=False), log=lambda m: None)
    return ds


def train_tiny(ds, out):
    from tools import train
    return train.train(ds, train.DEFAULT_NET, out, epochs=1, batch_size=9, base_lr=1e-3, progress=False)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("eval"))
    ds = make_synthetic_dataset(root)
    s = train_tiny(ds, os.path.join(root, "run"))
    out = os.path.join(root, "run", "eval")
    summary = ev.evaluate(ds, DEPLOY, s["final_caffemodel"], out, progress=False, figures_per_class=1)
    return ds, s["final_caffemodel"], out, summary


def _png(path):
    return np.asarray(Image.open(path))


def _by_hand_tn(caffe, ds, model, image_id):
    """Visible PNG -> BGR - mean -> deploy net -> prob -> expectation over bin centres."""
    from thermalnet.lmdb_io import read_mean_binaryproto
    rgb = _png(os.path.join(ds, "test", "visible", image_id + ".png")).astype(np.float32)
    x = rgb[:, :, ::-1].transpose(2, 0, 1) - read_mean_binaryproto(os.path.join(ds, "train_db", "mean.binaryproto"))
    net = caffe.Net(DEPLOY, caffe.TEST, weights=model)
    net.blobs["data"].reshape(1, 3, H, W)
    net.blobs["data"].data[0] = x
    net.forward()
    prob = net.blobs["prob"].data[0].astype(np.float64)
    assert prob.shape == (spec.NUM_BINS, H, W)
    assert np.allclose(prob.sum(axis=0), 1.0, atol=1e-4)
    # mmse: divide out the class weights the loss used, renormalise, take the mean brightness.
    w = np.array([float(l) for l in open(os.path.join(ds, "class_weights.txt")).read().split()])
    p = prob / w[:, None, None]
    p /= p.sum(axis=0)
    centers = (np.arange(spec.NUM_BINS) + 0.5) * (256.0 / spec.NUM_BINS) - 0.5
    return (p * centers[:, None, None]).sum(axis=0)


def _rms(a, b):
    return float(np.sqrt(np.mean((np.asarray(a, float) - np.asarray(b, float)) ** 2)))


def _gaussian3x3_by_hand(img, sigma=0.8):
    """3x3 taps exp(-x^2 / 2 sigma^2) normalised, applied as a full 2-D kernel, borders mirrored without repeat."""
    t = np.exp(-0.5 * (np.array([-1.0, 0.0, 1.0]) / sigma) ** 2)
    k = np.outer(t, t) / np.outer(t, t).sum()
    p = np.pad(img, 1, mode="reflect")
    h, w = img.shape
    return sum(k[i, j] * p[i:i + h, j:j + w] for i in range(3) for j in range(3))


def _train_luma_fit(ds):
    from thermalnet.lmdb_io import read_lmdb
    feats = np.stack([f for _, f in read_lmdb(os.path.join(ds, "train_db", "features"))]).astype(np.float64)
    labels = np.stack([l[0] for _, l in read_lmdb(os.path.join(ds, "train_db", "labels"))]).astype(np.float64)
    luma = 0.299 * feats[:, 2] + 0.587 * feats[:, 1] + 0.114 * feats[:, 0]       # BGR
    ir = (labels + 0.5) * (256.0 / spec.NUM_BINS) - 0.5
    (a, b), *_ = np.linalg.lstsq(np.stack([luma.ravel(), np.ones(luma.size)], 1), ir.ravel(), rcond=None)
    return a, b, ir.mean(axis=0)


def test_per_image_metrics_recomputed_independently(evaluated, caffe):
    from tests.test_metrics import ssim_reference
    ds, model, out, summary = evaluated
    rows = ev.read_table_csv(os.path.join(out, "per_image.csv"))
    assert len(rows) == 6
    a, b, mean_img = _train_luma_fit(ds)
    fit = summary["baseline_fit"]["fitted_luminance"]
    assert (fit["a"], fit["b"]) == pytest.approx((a, b), abs=1e-6)
    for r in rows[:3]:
        ir = _png(os.path.join(ds, "test", "ir", r["id"] + ".png")).astype(np.float64)
        rgb = _png(os.path.join(ds, "test", "visible", r["id"] + ".png")).astype(np.float64)
        tn = _by_hand_tn(caffe, ds, model, r["id"])
        assert r["tn"] == pytest.approx(_rms(ir, tn), abs=1e-3)
        d = tn - ir
        assert r["tn_rms_offset_free"] == pytest.approx(np.sqrt(np.mean((d - d.mean()) ** 2)), abs=1e-3)
        assert r["tn_psnr"] == pytest.approx(10 * np.log10(255.0 ** 2 / np.mean(d ** 2)), abs=1e-3)
        assert r["tn_ssim"] == pytest.approx(ssim_reference(ir, tn), abs=1e-4)
        # TN + GS: the 3x3 Gaussian (sigma 0.8) of TN, recomputed here; a 5x5 kernel or another sigma fails
        gs = _gaussian3x3_by_hand(tn)
        assert r["tn_gs"] == pytest.approx(_rms(ir, gs), abs=1e-3)
        assert r["tn_gs_ssim"] == pytest.approx(ssim_reference(ir, gs), abs=1e-4)
        fitted = np.clip(a * (0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]) + b, 0, 255)
        assert r["fitted_luminance"] == pytest.approx(_rms(ir, fitted), abs=1e-3)
        assert r["fitted_luminance_ssim"] == pytest.approx(ssim_reference(ir, fitted), abs=1e-4)
        e = mean_img - ir
        assert r["mean_ir_rms_offset_free"] == pytest.approx(np.sqrt(np.mean((e - e.mean()) ** 2)), abs=1e-3)
        assert r["mean_ir_psnr"] == pytest.approx(10 * np.log10(255.0 ** 2 / np.mean(e ** 2)), abs=1e-3)
        assert r["mean_ir"] == pytest.approx(_rms(ir, mean_img), abs=1e-3)
        assert r["constant"] == pytest.approx(_rms(ir, np.full_like(ir, mean_img.mean())), abs=1e-3)
        luma = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
        assert r["luminance"] == pytest.approx(_rms(ir, luma), abs=1e-3)
        quant = (np.minimum(np.floor(ir * spec.NUM_BINS / 256.0), spec.NUM_BINS - 1) + 0.5) * 8 - 0.5
        assert r["quantised_gt"] == pytest.approx(_rms(ir, quant), abs=1e-3)
        assert r["quantised_gt"] <= 8 / np.sqrt(12) + 0.3      # uniform quantisation error of 8-level bins
        assert r["tn_pp"] is None and r["tn_pp_ssim"] is None


def _gaussian5x5_by_hand(img, sigma=0.8):
    t = np.exp(-0.5 * (np.arange(-2.0, 3.0) / sigma) ** 2)
    k = np.outer(t, t) / np.outer(t, t).sum()
    p = np.pad(img, 2, mode="reflect")
    h, w = img.shape
    return sum(k[i, j] * p[i:i + h, j:j + w] for i in range(5) for j in range(5))


def test_tn_gs_is_exactly_the_3x3_gaussian_on_a_sharp_prediction(evaluated, tmp_path, monkeypatch):
    """A trained net's output is already smooth, so smoothing barely moves its RMS; here TN is made
    sharp (a seeded random image per test image) so that a 5x5 kernel or a wrong sigma would show."""
    ds, model, _, _ = evaluated
    fake = {}

    def sharp(predictor, images, decoding, class_weights, temperature=None, rng=None):
        out = []
        for img in images:
            rng = np.random.RandomState(int(img.sum()) % (2 ** 31))
            out.append(rng.uniform(0, 255, size=img.shape[:2]))
            fake[len(fake)] = out[-1]
        return out

    monkeypatch.setattr(ev, "decode_batch", sharp)
    ev.evaluate(ds, DEPLOY, model, str(tmp_path / "e"), progress=False, figures_per_class=0, limit=3)
    rows = ev.read_table_csv(str(tmp_path / "e" / "per_image.csv"))
    assert len(rows) == 3
    for i, r in enumerate(rows):
        ir = _png(os.path.join(ds, "test", "ir", r["id"] + ".png")).astype(np.float64)
        tn = fake[i]
        assert r["tn"] == pytest.approx(_rms(ir, tn), abs=1e-3)
        right = _rms(ir, _gaussian3x3_by_hand(tn))
        assert r["tn_gs"] == pytest.approx(right, abs=1e-3)
        for wrong in (_gaussian5x5_by_hand(tn), _gaussian3x3_by_hand(tn, 1.5), _gaussian3x3_by_hand(tn, 0.5)):
            assert abs(_rms(ir, wrong) - right) > 0.5      # each wrong smoothing is far outside the tolerance


def test_table_rows_are_class_means_with_the_papers_numbers(evaluated):
    ds, _, out, summary = evaluated
    per = ev.read_table_csv(os.path.join(out, "per_image.csv"))
    table = ev.read_table_csv(os.path.join(out, "table2.csv"))
    names = [r["object_class"] for r in table]
    assert names[:3] == list(spec.OBJECT_CLASSES) and names[-1] == "overall"
    for r in table:
        sel = per if r["object_class"] == "overall" else [p for p in per if p["object_class"] == r["object_class"]]
        assert r["n"] == len(sel)
        for k in ev.METRIC_KEYS:
            if not k.startswith("tn_pp"):
                assert r[k] == pytest.approx(np.mean([p[k] for p in sel]), abs=1e-3), k
        assert r["tn_pp"] is None
        nested = summary["metrics"][r["object_class"]]
        assert nested["n"] == r["n"]
        assert nested["tn"]["ssim"] == r["tn_ssim"] or nested["tn"]["ssim"] == pytest.approx(r["tn_ssim"], abs=1e-4)
        assert nested["fitted_luminance"]["psnr"] == pytest.approx(r["fitted_luminance_psnr"], abs=1e-4)
        assert nested["mean_ir"]["rms_offset_free"] == pytest.approx(r["mean_ir_rms_offset_free"], abs=1e-4)
    human = table[0]
    assert (human["paper_tn"], human["paper_tn_pp"], human["paper_tn_gs"]) == (9.1, 31.9, 7.5)
    assert table[1]["paper_tn"] == 37.8 and table[2]["paper_tn_gs"] == 13.5
    md = open(os.path.join(out, "table2.md")).read()
    assert "| Human | %d | %.1f | not run | %.1f | 9.1 | 31.9 | 7.5 |" % (human["n"], human["tn"], human["tn_gs"]) in md
    assert "Data: **SYNTHETIC** (dataset.json: SYNTHETIC" in md and "Table 2 (SYNTHETIC data)" in md
    for caption in ("RMS (eq. 2) per class", "offset-free RMS) per class", "SSIM per class", "PSNR (dB) per class"):
        assert caption in md and caption + ", mean over images" in md
    assert "Fitted luminance: IR = " in md
    assert summary["data"]["label"] == "SYNTHETIC data" and summary["data"]["synthetic"] is True
    assert summary["tn_pp"] == "not run" and "no VGG-16 weights" in summary["tn_pp_note"]


def test_figures_are_written(evaluated):
    _, _, out, summary = evaluated
    assert os.path.getsize(os.path.join(out, "bars.png")) > 1000
    trips = summary["triptychs"]
    assert {t["object_class"] for t in trips} == set(spec.OBJECT_CLASSES)      # one per class present
    for t in trips:
        img = _png(os.path.join(out, t["png"]))
        assert img.shape[1] > 2 * img.shape[0]       # three panels side by side


def test_missing_vgg_weights_named_in_the_note(evaluated, tmp_path):
    ds, model, _, _ = evaluated
    s = ev.evaluate(ds, DEPLOY, model, str(tmp_path / "e"), vgg_weights=str(tmp_path / "nope.caffemodel"),
                    progress=False, limit=2, figures_per_class=0)
    assert s["tn_pp"] == "not run" and "nope.caffemodel: no such VGG-16 weights file" in s["tn_pp_note"]


def test_decodings_differ_and_baselines_do_not(evaluated, tmp_path):
    ds, model, out, summary = evaluated
    assert summary["decoding"] == "mmse"
    tn = {"mmse": summary["table"][-1]["tn"]}
    for d in ("argmax", "expectation"):
        s = ev.evaluate(ds, DEPLOY, model, str(tmp_path / d), decoding=d, progress=False, figures_per_class=0)
        tn[d] = s["table"][-1]["tn"]
        assert s["table"][-1]["mean_ir"] == summary["table"][-1]["mean_ir"]
    assert len(set(tn.values())) == 3, tn


def test_unweight_inverts_class_reweighting():
    rng = np.random.RandomState(0)
    p = rng.dirichlet(np.ones(spec.NUM_BINS), size=(3, 4)).transpose(2, 0, 1)    # (Q, 3, 4)
    w = rng.uniform(0.2, 5.0, size=spec.NUM_BINS)
    q = p * w[:, None, None]
    q /= q.sum(axis=0)               # what weighted cross-entropy drives the softmax to
    assert np.allclose(ev.unweight(q, w), p)


def test_bad_inputs_are_one_line_errors(evaluated, tmp_path, capsys):
    ds, model, _, _ = evaluated
    with pytest.raises(FileNotFoundError, match="missing.caffemodel"):
        ev.evaluate(ds, DEPLOY, str(tmp_path / "missing.caffemodel"), str(tmp_path / "o"), progress=False)
    empty = tmp_path / "empty_ds"
    empty.mkdir()
    rc = ev.main(["--dataset", str(empty), "--deploy", DEPLOY, "--model", model, "--out", str(tmp_path / "o2")])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1 and "dataset.json" in err
    with pytest.raises(ValueError, match="unknown baseline"):
        bl.Baselines(ds).predict("median", np.zeros((H, W, 3), np.uint8))


def test_cli_help():
    out = subprocess.run([sys.executable, "-m", "tools.evaluate", "--help"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0
    for opt in ("--dataset", "--deploy", "--model", "--out", "--backend", "--vgg-weights", "--decoding"):
        assert opt in out.stdout


def test_high_frequency_columns_and_relations_recomputed(evaluated, caffe):
    """ir_hf / tn_hf / tn_gs_hf per image = RMS of image minus the by-hand 3x3 Gaussian; eval.json's relations
    (GS gain, HF ratio) follow from table2.csv's means."""
    ds, model, out, summary = evaluated
    with open(os.path.join(out, "per_image.csv")) as f:
        per = list(csv.DictReader(f))
    for row in per[:3]:
        ir = bl.load_test_pair(ds, row["id"])[1].astype(np.float64)
        tn = _by_hand_tn(caffe, ds, model, row["id"])
        gs = _gaussian3x3_by_hand(tn)
        for key, img in (("ir_hf", ir), ("tn_hf", tn), ("tn_gs_hf", gs)):
            assert float(row[key]) == pytest.approx(_rms(img, _gaussian3x3_by_hand(img)), rel=1e-4, abs=1e-4), key
    overall = summary["table"][-1]
    assert summary["relations"]["overall"]["gs_gain_percent"] == pytest.approx(
        100 * (overall["tn"] - overall["tn_gs"]) / overall["tn"])
    assert summary["relations"]["overall"]["hf_ratio"] == pytest.approx(overall["tn_hf"] / overall["ir_hf"])
    assert np.mean([float(r["tn_hf"]) for r in per]) == pytest.approx(overall["tn_hf"], abs=1e-6)   # CSV: 6 decimals
    assert "HF TN / real IR" in open(os.path.join(out, "table2.md")).read()


def test_sample_decoding_is_seeded_and_noisier(evaluated, tmp_path):
    """The 'sample' reading of the paper: same numbers twice, and more high-frequency energy than mmse."""
    ds, model, out, summary = evaluated
    a = ev.evaluate(ds, DEPLOY, model, str(tmp_path / "a"), decoding="sample", progress=False, figures_per_class=0)
    b = ev.evaluate(ds, DEPLOY, model, str(tmp_path / "b"), decoding="sample", progress=False, figures_per_class=0)
    assert a["table"] == b["table"] and a["temperature"] == 1.0
    assert a["table"][-1]["tn_hf"] > summary["table"][-1]["tn_hf"]
    assert "sample (T 1) decoding" in open(str(tmp_path / "a" / "table2.md")).read()
