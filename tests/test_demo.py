"""`make demo` end to end, quick: SYNTHETIC dataset -> train -> evaluate -> report.

Runs the real CLI (python -m tools.demo --quick) in a child process, as `make demo`
does, and checks that the report's numbers are the evaluation CSVs' numbers.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time

from tools import evaluate as ev

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quick_demo_end_to_end(tmp_path):
    out, data = tmp_path / "demo", tmp_path / "datasets"
    t0 = time.time()
    p = subprocess.run([sys.executable, "-m", "tools.demo", "--quick", "--out", str(out), "--data-root", str(data)],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    assert time.time() - t0 < 180
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


def test_demo_help():
    p = subprocess.run([sys.executable, "-m", "tools.demo", "--help"], cwd=REPO, capture_output=True, text=True)
    assert p.returncode == 0 and "--quick" in p.stdout and "--minutes" in p.stdout


def test_run_flir_on_real_flir_samples(flir_samples, tmp_path):
    """The documented pipeline on real FLIR radiometric JPEGs (../shared/samples/flir):
    only the files with an embedded visible photo make pairs; 1 short epoch."""
    from tools import run_flir
    classes = tmp_path / "classes.csv"
    classes.write_text("stem,object_class\nflir_one_mug,computer\n")
    out = tmp_path / "flir_run"
    r = run_flir.run_flir([flir_samples], str(out), classes_csv=str(classes), epochs=1, batch_size=2,
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
