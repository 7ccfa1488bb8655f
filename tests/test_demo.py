"""`make demo` end to end, quick: SYNTHETIC dataset -> train -> evaluate -> report.

Runs the real CLI (python -m tools.demo --quick) in a child process, as `make demo`
does, and checks that the report's numbers are the evaluation CSVs' numbers.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from tools import demo, evaluate as ev

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quick_demo_end_to_end(tmp_path):
    out, data = tmp_path / "demo", tmp_path / "datasets"
    p = subprocess.run([sys.executable, "-m", "tools.demo", "--quick", "--out", str(out), "--data-root", str(data)],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "[demo] report: %s" % (out / "report.md") in p.stdout
    # The dataset is cached by its settings: one folder, SYNTHETIC, reused by a second call.
    (cached,) = os.listdir(data)
    assert cached.startswith("synthetic-60-120x160-")
    md = (out / "report.md").read_text()
    assert "The data are SYNTHETIC" in md
    table = ev.read_table_csv(str(out / "eval" / "table2.csv"))
    for t in table:
        row = "| %s | %d | %s |" % (ev.class_label(t["object_class"]), t["n"], "%.1f" % t["tn"])
        assert row in md, row
    overall = table[-1]
    m = re.search(r"TN overall RMS ([0-9.]+) vs best baseline ([0-9.]+)", p.stdout)
    assert m and float(m.group(1)) == round(overall["tn"], 2)
    for f in ("report.html", "loss.png", "train.csv", "val.csv", "eval/per_image.csv", "eval/bars.png"):
        assert (out / f).is_file(), f
    # The evaluated model is the best snapshot, named in the summary and the output.
    s = json.load(open(out / "train_summary.json"))
    assert s["evaluated_snapshot"]["which"] == "best" == demo.DEMO_SNAPSHOT
    assert s["evaluated_snapshot"]["caffemodel"] == s["best"]["caffemodel"] == str(out / "best.caffemodel")
    assert s["weights"] == []
    assert "[pipeline] evaluating the best model: best.caffemodel (iteration %d" % s["best"]["iteration"] in p.stdout
    assert json.load(open(out / "eval" / "eval.json"))["model"] == str(out / "best.caffemodel")


def test_weights_and_snapshot_pass_through_demo_and_run_flir(monkeypatch, tmp_path):
    """--weights and --snapshot reach tools.train and the evaluation from both launchers."""
    from tools import evaluate, report, run_flir, train
    seen = {}

    def fake_train(dataset, net, out, **kw):
        seen["weights"] = kw.get("weights")
        os.makedirs(out, exist_ok=True)
        s = {"out": out, "iterations": 4, "iters_per_epoch": 2, "final_caffemodel": os.path.join(out, "last.caffemodel"),
             "best": {"iteration": 2, "val_loss": 1.5, "caffemodel": os.path.join(out, "best.caffemodel")},
             "last_val_loss": 2.0}
        with open(os.path.join(out, train.SUMMARY_FILE), "w") as f:
            json.dump(s, f)
        return s

    def fake_evaluate(dataset, deploy, model, out, **kw):
        seen["model"] = model
        os.makedirs(out, exist_ok=True)
        open(os.path.join(out, "table2.md"), "w").close()

    monkeypatch.setattr(train, "train", fake_train)
    monkeypatch.setattr(evaluate, "evaluate", fake_evaluate)
    monkeypatch.setattr(report, "write_report", lambda out, eval_dir: {"md": "r.md", "html": "r.html"})
    for which, model in (("best", "best.caffemodel"), ("last", "last.caffemodel")):
        r = demo.run_pipeline("DS", str(tmp_path / which), weights="a.caffemodel,b.caffemodel", snapshot=which,
                              progress=False)
        assert seen == {"weights": "a.caffemodel,b.caffemodel", "model": str(tmp_path / which / model)}
        assert r["summary"]["evaluated_snapshot"]["which"] == which
        on_disk = json.load(open(tmp_path / which / "train_summary.json"))
        assert on_disk["evaluated_snapshot"]["caffemodel"] == str(tmp_path / which / model)
    calls = []
    result = {"verdict": {"tn": 1.0, "best_baseline_rms": 2.0, "best_baseline": "mean", "beats_baselines": True},
              "train_seconds": 0.0, "md": "r.md", "html": "r.html"}
    monkeypatch.setattr(demo, "run_pipeline", lambda *a, **kw: calls.append(kw) or dict(result))
    monkeypatch.setattr(run_flir, "build_flir_dataset", lambda *a, **kw: "DS")
    monkeypatch.setattr("thermalnet.layout.read_dataset_info", lambda ds, missing_ok=False: {"height": 120, "width": 160})
    monkeypatch.setattr(demo, "synthetic_dataset", lambda *a, **kw: "DS")
    monkeypatch.setattr("thermalnet.nets.check_weights", lambda *a, **kw: None)   # checked first; no file here
    flir = tmp_path / "flir"
    flir.mkdir()
    assert run_flir.main(["--flir", str(flir), "--out", str(tmp_path / "f"), "--weights", "sq.caffemodel",
                          "--snapshot", "last"]) == 0
    assert demo.main(["--quick", "--out", str(tmp_path / "d"), "--weights", "sq.caffemodel", "--snapshot", "last"]) == 0
    assert demo.main(["--quick", "--out", str(tmp_path / "e")]) == 0
    assert [(c["weights"], c["snapshot"]) for c in calls] == [("sq.caffemodel", "last"), ("sq.caffemodel", "last"),
                                                              (demo.DEMO_WEIGHTS, demo.DEMO_SNAPSHOT)]


def test_demo_help():
    p = subprocess.run([sys.executable, "-m", "tools.demo", "--help"], cwd=REPO, capture_output=True, text=True)
    assert p.returncode == 0 and "--quick" in p.stdout and "--minutes" in p.stdout


def test_run_flir_on_flir_files(flir_written, tmp_path):
    """The documented pipeline on FLIR radiometric JPEGs (written from known numbers by
    tests/flir_writer.py): only the files with an embedded visible photo make pairs; 1 short
    epoch."""
    from tools import run_flir
    classes = tmp_path / "classes.csv"
    classes.write_text("stem,object_class\nwritten_portrait,computer\n")
    out = tmp_path / "flir_run"
    r = run_flir.run_flir([flir_written[0]], str(out), classes_csv=str(classes), epochs=1, batch_size=2,
                          progress=False)
    table = ev.read_table_csv(str(out / "eval" / "table2.csv"))
    per = ev.read_table_csv(str(out / "eval" / "per_image.csv"))
    assert per and table[-1]["object_class"] == "overall" and table[-1]["n"] == len(per)
    md = (out / "report.md").read_text()
    assert "SYNTHETIC" not in md.split("##")[0]          # real data: no synthetic statement
    assert "| Overall | %d | %.1f |" % (len(per), table[-1]["tn"]) in md
    assert r["summary"]["synthetic"] is False
    # A missing input is an error (exit status 1).
    assert run_flir.main(["--flir", str(tmp_path / "nope"), "--out", str(out)]) == 1
