"""The paper's findings as checks (thermalnet.findings, the register's `result` rows, the decodings
that model readings of the paper, the high-frequency measure).

Oracles are worked out by hand from Table 2 and from the Gaussian's formula, never from the
code under test; each relation is broken on purpose and the status must change.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import make_tiny_dataset
from thermalnet import decoders, findings, metrics, nets, spec
from tools import fidelity

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---- the paper's numbers --------------------------------------------------------------------------

def test_paper_relations_worked_out_by_hand():
    # Table 2: human 9.1 / 31.9 / 7.5, microwave oven 37.8 / 60.4 / 29.2, computer 16.7 / 36.5 / 13.5
    assert findings.PAPER_GS_GAIN["human"] == pytest.approx(1.6 / 9.1 * 100)          # 17.58 %
    assert findings.PAPER_GS_GAIN["microwave_oven"] == pytest.approx(8.6 / 37.8 * 100)  # 22.75 %
    assert findings.PAPER_GS_GAIN["computer"] == pytest.approx(3.2 / 16.7 * 100)      # 19.16 %
    assert findings.PAPER_PP_RATIO["human"] == pytest.approx(3.5055, abs=1e-4)
    assert findings.PAPER_PP_RATIO["microwave_oven"] == pytest.approx(1.5979, abs=1e-4)
    assert findings.PAPER_CLASS_ORDER == ("human", "computer", "microwave_oven")
    lo, hi = findings.GS_GAIN_RANGE
    assert all(lo <= g <= hi for g in findings.PAPER_GS_GAIN.values())    # the paper passes its own tolerance


def _table(gains=(20.0, 20.0, 20.0), hf=(1.5, 1.5, 1.5), tn=(10.0, 40.0, 20.0), pp=None):
    rows = []
    for cls, g, h, t in zip(("human", "microwave_oven", "computer"), gains, hf, tn):
        rows.append({"object_class": cls, "n": 3, "tn": t, "tn_gs": t * (1 - g / 100.0), "tn_hf": 6.0 * h,
                     "ir_hf": 6.0, "tn_pp": None if pp is None else t * pp, "tn_pp_hf": None})
    rows.append({"object_class": "overall", "n": 9, "tn": 20.0, "tn_gs": 16.0, "tn_hf": 9.0, "ir_hf": 6.0})
    return rows


def test_verdicts_follow_the_numbers():
    v = findings.verdicts(_table())
    assert v["gs_gain"]["status"] == v["hf"]["status"] == v["class_order"]["status"] == findings.REPRODUCED
    assert v["gs_gain"]["values"]["human"] == pytest.approx(20.0)
    assert v["pp"]["status"] == findings.NOT_RUN                      # no TN + PP in the table
    # a TN + GS worse than TN in one class; a gain too small; HF below the real IR's; classes reordered
    assert findings.verdicts(_table(gains=(20, -3, 20)))["gs_gain"]["status"] == findings.NOT_REPRODUCED
    assert findings.verdicts(_table(gains=(20, 9.9, 20)))["gs_gain"]["status"] == findings.NOT_REPRODUCED
    assert findings.verdicts(_table(gains=(20, 30.1, 20)))["gs_gain"]["status"] == findings.NOT_REPRODUCED
    assert findings.verdicts(_table(hf=(1.5, 0.9, 1.5)))["hf"]["status"] == findings.NOT_REPRODUCED
    assert findings.verdicts(_table(tn=(30.0, 40.0, 20.0)))["class_order"]["status"] == findings.NOT_REPRODUCED
    assert findings.verdicts(_table(pp=2.0))["pp"]["status"] == findings.REPRODUCED
    assert findings.verdicts(_table(pp=0.95))["pp"]["status"] == findings.NOT_REPRODUCED


def test_computer_row_and_tolerance_edges_worked_by_hand():
    # computer: TN + PP / TN = 36.5 / 16.7 = 2.1856 (Table 2 as printed; 37.5 would give 2.2455)
    assert findings.PAPER_PP_RATIO["computer"] == pytest.approx(2.1856, abs=1e-4)
    # The GS-gain tolerance is 10..30 % with both ends inside; just within each end passes.
    judge = lambda gains: findings.verdicts(_table(gains=gains))["gs_gain"]["status"]   # noqa: E731
    assert judge((10.0, 30.0, 20.0)) == findings.REPRODUCED
    assert judge((10.5, 29.5, 20.0)) == findings.REPRODUCED
    # "above" is strict: a ratio of exactly 1 (TN as sharp as the IR; TN + PP as good as TN) is not shown.
    assert findings.verdicts(_table(hf=(1.5, 1.0, 1.5)))["hf"]["status"] == findings.NOT_REPRODUCED
    assert findings.verdicts(_table(pp=1.0))["pp"]["status"] == findings.NOT_REPRODUCED


def test_pp_smoothness_verdict_by_hand():
    # TN + PP's high-frequency measure against the real IR's (6.0): 12 / 6 = 2 shows the paper's
    # "failed to imitate the smoothness"; 6 / 6 = 1 and 3 / 6 = 0.5 do not.
    for pp_hf, status in ((12.0, findings.REPRODUCED), (6.0, findings.NOT_REPRODUCED),
                          (3.0, findings.NOT_REPRODUCED)):
        rows = _table(pp=2.0)
        for r in rows:
            r["tn_pp_hf"] = pp_hf
        v = findings.verdicts(rows)
        assert v["pp_hf"]["status"] == status, pp_hf
        assert v["pp_hf"]["values"]["human"] == pytest.approx(pp_hf / 6.0)
    assert findings.verdicts(_table(pp=2.0))["pp_hf"]["status"] == findings.NOT_RUN     # no TN + PP HF measured


def test_gain_and_ratio_guards_by_hand():
    # A missing number on either side, or a TN (denominator) that is not positive, gives no value.
    for tn, gs in ((None, 5.0), (5.0, None), (None, None), (0.0, 1.0), (-0.5, -0.4)):
        assert findings.gs_gain_percent(tn, gs) is None, (tn, gs)
        assert findings.ratio(gs, tn) is None, (gs, tn)
    # Small positive RMS values are fine: 0.5 -> 0.4 is 20 %; 0.4 / 0.5 = 0.8.
    assert findings.gs_gain_percent(0.5, 0.4) == pytest.approx(20.0)
    assert findings.ratio(0.4, 0.5) == pytest.approx(0.8)


def test_pairs_without_the_paper_classes_are_judged_on_all_images():
    rows = [{"object_class": "unlabelled", "n": 5, "tn": 40.0, "tn_gs": 30.0, "tn_hf": 2.0, "ir_hf": 4.0},
            {"object_class": "overall", "n": 5, "tn": 40.0, "tn_gs": 30.0, "tn_hf": 2.0, "ir_hf": 4.0}]
    v = findings.verdicts(rows)
    assert v["gs_gain"]["classes"] == ["overall"] and v["gs_gain"]["status"] == findings.REPRODUCED   # 25 %
    assert v["hf"]["status"] == findings.NOT_REPRODUCED                                              # 0.5
    assert v["class_order"]["status"] == findings.NOT_RUN


# ---- the high-frequency measure ------------------------------------------------------------------------

def test_high_frequency_of_a_checkerboard_by_hand():
    # 3x3 Gaussian, sigma 0.8: taps exp(-x^2 / 1.28) / (1 + 2 exp(-1/1.28)) per axis = 0.23899, 0.52201.
    # On a +-a checkerboard each axis multiplies by (w1 - 2 w0), so the residual is a (1 - (w1 - 2 w0)^2)
    # everywhere (reflect-101 borders continue the pattern).
    e = math.exp(-1 / 1.28)
    w0, w1 = e / (1 + 2 * e), 1 / (1 + 2 * e)
    a = 10.0
    board = a * np.where((np.indices((12, 16)).sum(axis=0) % 2) == 0, 1.0, -1.0) + 100.0
    assert metrics.high_frequency(board) == pytest.approx(a * (1 - (w1 - 2 * w0) ** 2), rel=1e-6)
    assert metrics.high_frequency(np.full((12, 16), 77.0)) == pytest.approx(0.0, abs=1e-9)
    ramp = np.tile(np.arange(16.0) * 3, (12, 1))                          # a linear ramp: no detail inside
    assert metrics.high_frequency(ramp[:, 1:-1]) < 0.2 * 3


# ---- decodings that model readings of the paper -------------------------------------------------------

def test_sample_draws_from_the_distribution_and_repeats():
    q, n = 4, 200
    probs = np.zeros((q, n, n))
    probs[1], probs[3] = 0.25, 0.75
    out = decoders.decode(probs, "sample")
    centers = spec.bin_centers(q)
    assert set(np.unique(out)) == {centers[1], centers[3]}
    assert np.mean(out == centers[3]) == pytest.approx(0.75, abs=0.01)          # 40,000 draws
    assert np.array_equal(out, decoders.decode(probs, "sample"))               # seeded
    # T 0.5: 0.25^2 / (0.25^2 + 0.75^2) = 0.1 for bin 1
    cold = decoders.decode(probs, "sample", temperature=0.5)
    assert np.mean(cold == centers[1]) == pytest.approx(0.1, abs=0.01)
    assert not np.array_equal(decoders.decode(probs, "sample", rng=np.random.default_rng(1)), out)


def test_digits_view_is_the_argmax_index_stretched():
    q = 32
    probs = np.full((q, 1, 3), 0.01)
    probs[0, 0, 0] = probs[31, 0, 1] = probs[16, 0, 2] = 0.9
    assert decoders.decode(probs, "digits").tolist() == [[0.0, 255.0, 16 * 255.0 / 31]]


def test_annealed_default_temperature_is_zhangs():
    probs = np.zeros((3, 1, 1))
    probs[:, 0, 0] = (0.2, 0.3, 0.5)
    c = spec.bin_centers(3)
    w = np.array([0.2, 0.3, 0.5]) ** (1 / 0.38)
    assert decoders.decode(probs, "annealed")[0, 0] == pytest.approx(float((w / w.sum()) @ c))


# ---- the register's result rows -----------------------------------------------------------------------

@pytest.fixture()
def run_with_eval(tmp_path):
    """A run folder as tools.train + tools.evaluate leave it, its numbers written by hand."""
    ds = make_tiny_dataset(str(tmp_path / "ds"), n_train=2, n_val=1, height=48, width=64)[0]
    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    shutil.copy(nets.network(nets.DEFAULT_NETWORK).net, run / "train_val.prototxt")
    summary = {"dataset": ds, "iterations": 40, "iters_per_epoch": 4, "epochs": 10, "batch_size": 2,
               "last_train_loss": 1.5}
    (run / "train_summary.json").write_text(json.dumps(summary))
    (run / "train.csv").write_text("iteration,seconds,loss,lr\n0,0.1,3.0,0.001\n40,1.0,1.5,0.001\n")
    (run / "val.csv").write_text("iteration,seconds,loss,lr\n0,0.1,3.2,0.001\n20,0.5,2.0,0.001\n40,1.0,2.2,0.001\n")

    def write_eval(table, tn_pp="not run"):
        ev = {"table": table, "decoding": "sample", "tn_pp": tn_pp, "tn_pp_note": "TN+PP not run: no VGG-16",
              "synthetic": True, "data": {"label": "SYNTHETIC data"}}
        (run / "eval" / "eval.json").write_text(json.dumps(ev))
    write_eval(_table())
    return str(run), write_eval


def _results(rows):
    return {r["key"]: r for r in rows if r["kind"] == "result"}


def test_result_rows_carry_paper_and_run_values(run_with_eval):
    run, write_eval = run_with_eval
    res = _results(fidelity.check(run, caffe_check=False))
    assert len(res) >= 5
    for r in res.values():
        assert r["paper_value"] and r["run_value"] and r["tolerance"] and r["comparable"], r["key"]
        assert r["status"] in findings.STATUSES
    assert res["gs_gain"]["status"] == findings.REPRODUCED
    assert "human 17.6 %" in res["gs_gain"]["paper_value"] and "human 20.0 %" in res["gs_gain"]["run_value"]
    assert res["high_frequency"]["status"] == findings.REPRODUCED and "1.50" in res["high_frequency"]["run_value"]
    assert res["class_order"]["status"] == findings.REPRODUCED
    assert res["pp_worse"]["status"] == res["pp_smoothness"]["status"] == findings.NOT_RUN
    assert "no VGG-16" in res["pp_worse"]["evidence"]
    assert res["table2_absolute"]["status"] == res["final_loss"]["status"] == findings.NOT_COMPARABLE
    assert res["table2_absolute"]["comparable"] == fidelity.ABSOLUTE
    assert res["gs_gain"]["comparable"] == fidelity.RELATION
    assert res["final_loss"]["run_value"].startswith("1.500 (50 % of the first logged loss, 3.000)")
    assert "lowest 2.000 (iteration 20)" in res["val_curve"]["run_value"]
    # a TN + GS worse than TN, and an output smoother than the real IR: the statuses change
    write_eval(_table(gains=(20, -5, 20), hf=(0.8, 0.8, 0.8)))
    res = _results(fidelity.check(run, caffe_check=False))
    assert res["gs_gain"]["status"] == res["high_frequency"]["status"] == findings.NOT_REPRODUCED
    assert "microwave oven -5.0 %" in res["gs_gain"]["run_value"]
    # TN + PP run and worse than TN in every class
    write_eval(_table(pp=2.5), tn_pp="run")
    assert _results(fidelity.check(run, caffe_check=False))["pp_worse"]["status"] == findings.REPRODUCED


def test_cli_json_and_markdown_carry_the_findings(run_with_eval, tmp_path):
    run, _ = run_with_eval
    out = subprocess.run([sys.executable, "-m", "tools.fidelity", run, "--json", str(tmp_path / "f.json")],
                         cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    rows = json.load(open(tmp_path / "f.json"))
    found = [r for r in rows if r["kind"] == "result"]
    assert len(found) >= 5 and all({"paper_value", "run_value", "status", "tolerance"} <= set(r) for r in found)
    assert "findings: 3 REPRODUCED" in out.stdout
    assert "| TN + GS lowers TN's RMS in every class (3x3 Gaussian gain) | Table 2 |" in out.stdout
