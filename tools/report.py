"""A run's report: report.md and a self-contained report.html, every number read from the run's files.

    python -m tools.report --run runs/NAME [--eval runs/NAME/eval]

Sources: RUN/train_summary.json (settings, time, throughput, pretrained weights, best
snapshot), RUN/train.csv and RUN/val.csv (loss curve), RUN/loss.png, EVAL/eval.json and
EVAL/table2.csv (Table 2, its companion tables of RMS, offset-free RMS, SSIM and PSNR,
baselines), EVAL/bars.png, EVAL/triptychs/*.png, and the paper-fidelity register
(tools.fidelity, checked on the same run's artifacts). Nothing is typed in by hand except
the paper's own Table 2, which tools.evaluate writes into table2.csv beside ours.
report.md links the PNGs relatively; report.html embeds them (base64) so it can be
mailed or opened anywhere.
"""
from __future__ import annotations

import argparse
import base64
import html
import math
import os
import sys
from typing import Dict, List, Optional

from thermalnet import baselines as bl, layout, metrics
from . import fidelity
from thermalnet.atomic import write_text
from thermalnet.caffe_log import read_csv
from .evaluate import (METHODS, OVERALL, class_label, fit_markdown, metric_caption, metric_table_lines,
                            read_table_csv)

REPORT_MD, REPORT_HTML = "report.md", "report.html"
BASELINES_NOTE = ("Mean training IR: per-pixel mean of the training labels decoded at bin centres; fitted luminance: "
                  "the visible image's luma through the straight line fitted to the IR by least squares on the "
                  "training split; constant: the mean training brightness; luminance (unfitted): the visible luma "
                  "used as brightness as it is; quantised IR: the real IR through the Q bins (what a perfect "
                  "classifier scores with argmax decoding). Offset-free RMS: the RMS after removing each image's "
                  "mean difference (cameras with automatic gain shift whole frames). SSIM: Wang et al. 2004, "
                  "Gaussian window sigma 1.5; PSNR: 10 log10(255^2 / MSE), averaged in dB.")
FIDELITY_NOTE = ("Each claim of the paper and each assumption of the kit, checked on this run's artifacts (the "
                 "train_val.prototxt it trained, its solver, train_summary.json, the dataset's LMDBs and "
                 "dataset.json, the evaluation): PASS / FAIL / ASSUMED / NOT RUN. "
                 "`python -m tools.fidelity RUN` prints the same table.")


def _load_json(path: str) -> Dict:
    return layout.read_json(path, missing="run tools.train / tools.evaluate first")


def _f(v: Optional[float], digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    return "%.*f" % (digits, v)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return "%.0f s" % seconds
    if seconds < 5400:
        return "%.1f minutes" % (seconds / 60.0)
    return "%.1f hours" % (seconds / 3600.0)


def gather(run: str, eval_dir: Optional[str] = None) -> Dict:
    """Everything the report shows, from the run's files."""
    eval_dir = eval_dir or os.path.join(run, "eval")
    summary = _load_json(os.path.join(run, "train_summary.json"))
    ev = _load_json(os.path.join(eval_dir, "eval.json"))
    table = read_table_csv(os.path.join(eval_dir, "table2.csv"))
    train_rows = read_csv(os.path.join(run, "train.csv")) if os.path.isfile(os.path.join(run, "train.csv")) else []
    val_rows = read_csv(os.path.join(run, "val.csv")) if os.path.isfile(os.path.join(run, "val.csv")) else []
    dataset_info = layout.read_dataset_info(summary.get("dataset", ""), missing_ok=True)
    try:
        register, register_error = fidelity.check(run, eval_dir=eval_dir), None
    except (OSError, ValueError) as exc:
        register, register_error = [], str(exc)
    return {"run": run, "eval_dir": eval_dir, "summary": summary, "eval": ev, "table": table,
            "train": train_rows, "val": val_rows, "dataset": dataset_info, "fidelity": register,
            "fidelity_error": register_error}


def data_label(g: Dict) -> str:
    """'SYNTHETIC data' or 'real pairs', from eval.json (itself from the dataset's dataset.json)."""
    d = g["eval"].get("data") or {}
    if d.get("label"):
        return d["label"]
    synthetic = g["eval"].get("synthetic", g["summary"].get("synthetic"))
    return "SYNTHETIC data" if synthetic else "real pairs"


def _overall(table: List[Dict]) -> Dict:
    for r in table:
        if r["object_class"] == OVERALL:
            return r
    raise ValueError("table2.csv has no overall row")


VERDICT_METRICS = (("RMS", "", False), ("SSIM", "_ssim", True))   # (name, column suffix, higher is better)


def verdict(table: List[Dict]) -> Dict:
    """TN's overall RMS against the best trivial baseline, and every class x baseline x metric TN loses.

    "losses" lists each (class, metric, baseline) where TN is not better (RMS and SSIM),
    so "TN beats every baseline in every class" is a checked statement, not a reading of
    the overall row.
    """
    o = _overall(table)
    best = min(bl.BASELINES, key=lambda k: o[k] if o[k] is not None else float("inf"))
    losses = []
    for r in table:
        for name, suffix, higher in VERDICT_METRICS:
            tn = r.get("tn" + suffix)
            for b in bl.BASELINES:
                other = r.get(b + suffix)
                if tn is None or other is None:
                    continue
                if (tn <= other) if higher else (tn >= other):
                    losses.append("%s %s: TN %.3g vs %s %.3g" % (r["object_class"], name, tn, b, other))
    return {"tn": o["tn"], "tn_gs": o["tn_gs"], "best_baseline": best, "best_baseline_rms": o[best],
            "beats_baselines": o["tn"] is not None and o[best] is not None and o["tn"] < o[best],
            "losses": losses, "checked_metrics": [m[0] for m in VERDICT_METRICS]}


def _data_statement(g: Dict) -> str:
    s = g["summary"]
    minutes = s.get("wall_seconds") or s.get("train_seconds") or 0.0
    cores = s.get("cpu_cores") or "?"
    where = "on GPU %s" % s["gpu"] if s.get("gpu") is not None else "on %s CPU cores" % cores
    if s.get("synthetic"):
        return ("**The data are SYNTHETIC** (generated by dataset_builder.synthetic), the training is short "
                "(%s %s); the paper trained 1000 epochs on a Titan X on real FLIR ONE pairs. "
                "Compare the numbers below with the trivial baselines, not with the paper's."
                % (_duration(minutes), where))
    return ("Data: %s (not synthetic). Training: %s %s; the paper trained 1000 epochs on a Titan X."
            % (g["dataset"].get("note") or s.get("dataset"), _duration(minutes), where))


def settings_rows(g: Dict) -> List[tuple]:
    s, ev = g["summary"], g["eval"]
    ipe = s.get("iters_per_epoch") or 1
    iters = s.get("iterations") or 0
    rows = [
        ("Network", os.path.basename(s.get("net", ""))),
        ("Input size (H x W)", "%d x %d" % (s.get("height", 0), s.get("width", 0))),
        ("Thermal bins Q", str(s.get("num_bins"))),
        ("Training / test images", "%s / %s" % (s.get("n_train"), ev.get("n_test"))),
        ("Batch size", str(s.get("batch_size"))),
        ("Iterations (epochs)", "%d (%.1f)" % (iters, iters / float(ipe))),
        ("Training time", "%s (%.0f s in solver steps)" % (_duration(s.get("wall_seconds") or 0),
                                                            s.get("train_seconds") or 0)),
        ("Training throughput", "%s img/s" % _f(s.get("images_per_second"), 1)),
        ("Machine", "%s, %s CPU cores%s" % (s.get("processor") or s.get("machine"), s.get("cpu_cores"),
                                            (", GPU %s" % s["gpu"]) if s.get("gpu") is not None else "")),
        ("Training back-end", s.get("backend", "")),
        ("Final train / validation loss", "%s / %s" % (_f(s.get("last_train_loss"), 4), _f(s.get("last_val_loss"), 4))),
        ("Pretrained weights", ", ".join(os.path.basename(str(w)) for w in _as_list(s.get("weights")))
         or "none (random initialisation from the prototxt fillers)"),
        ("Best validation snapshot", "iteration %s, validation loss %s" % (s["best"].get("iteration"),
                                                                          _f(s["best"].get("val_loss"), 4))
         if isinstance(s.get("best"), dict) else "not recorded"),
        ("Evaluated snapshot", _evaluated(s, ev)),
        ("Decoding", ev.get("decoding", "")),
        ("TN + GS", "3x3 Gaussian, sigma %s" % ev.get("gaussian_sigma")),
        ("TN + PP", ev.get("tn_pp_note", ev.get("tn_pp", ""))),
        ("Fitted luminance baseline", fit_markdown(ev["baseline_fit"]["fitted_luminance"])
         if (ev.get("baseline_fit") or {}).get("fitted_luminance") else "—"),
        ("SSIM settings", ", ".join("%s=%s" % kv for kv in sorted((ev.get("ssim_options") or {}).items())) or "—"),
        ("Model", os.path.basename(ev.get("model", ""))),
    ]
    if g["dataset"].get("window") is not None:
        lo, hi = g["dataset"]["window"]
        rows.insert(3, ("Brightness window", "%.1f .. %.1f degC -> 0..255 (%s window)"
                        % (lo, hi, g["dataset"].get("window_mode", ""))))
    return rows


def _as_list(v) -> List:
    if not v:
        return []
    return list(v) if isinstance(v, (list, tuple)) else [v]


def _evaluated(s: Dict, ev: Dict) -> str:
    e = s.get("evaluated_snapshot")
    if isinstance(e, dict):
        return "%s (%s, iteration %s)" % (os.path.basename(str(e.get("caffemodel", ""))), e.get("which"),
                                          e.get("iteration"))
    return os.path.basename(ev.get("model", ""))


def _table2_md(table: List[Dict]) -> List[str]:
    out = ["| Object | n | TN | TN + PP | TN + GS | paper TN | paper TN + PP | paper TN + GS |",
           "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in table:
        name = class_label(r["object_class"])
        out.append("| %s | %d | %s | %s | %s | %s | %s | %s |" % (
            name, r["n"], _f(r["tn"]), _f(r["tn_pp"]) if r["tn_pp"] is not None else "not run", _f(r["tn_gs"]),
            _f(r["paper_tn"]), _f(r["paper_tn_pp"]), _f(r["paper_tn_gs"])))
    return out


def _trip_scores(t: Dict) -> str:
    out = "TN RMS %s" % _f(t["tn"])
    if t.get("tn_ssim") is not None:
        out += ", SSIM %s, PSNR %s dB" % (_f(t["tn_ssim"], 3), _f(t.get("tn_psnr"), 1))
    return out


def _with_pp(g: Dict) -> bool:
    return g["eval"].get("tn_pp") == "run"


def _companion_md(g: Dict) -> List[str]:
    """Table 2's companion (tools.evaluate's tables): RMS, offset-free RMS, SSIM, PSNR for TN and every baseline."""
    out = []
    for m in metrics.METRICS:
        out += [metric_caption(m, data_label(g)), ""] + metric_table_lines(g["table"], m, _with_pp(g)) + [""]
    return out


def _fidelity_md(g: Dict) -> List[str]:
    if g["fidelity_error"]:
        return ["The register could not be checked: %s" % g["fidelity_error"], ""]
    return fidelity.markdown(g["fidelity"]).splitlines() + [""]


def _rel(path: str, start: str) -> str:
    return os.path.relpath(path, start).replace(os.sep, "/")


def render_markdown(g: Dict, out_dir: str) -> str:
    ev, table = g["eval"], g["table"]
    v = verdict(table)
    lines = ["# Thermalnet reproduction: run report", "", _data_statement(g), ""]
    lines += ["## Result", "",
              "Overall average RMS on %d test images: TN **%s**, TN + GS %s; best trivial baseline (%s) %s. "
              "%s" % (ev.get("n_test"), _f(v["tn"]), _f(v["tn_gs"]), bl.BASELINE_LABELS[v["best_baseline"]],
                      _f(v["best_baseline_rms"]),
                      "The network beats every trivial baseline." if v["beats_baselines"] else
                      "The network does NOT beat the best trivial baseline."), ""]
    lines += ["## Table 2: average RMS (eq. 2, brightness 0..255 at %dx%d), %s" % (ev.get("height"), ev.get("width"),
                                                                              data_label(g)), ""]
    lines += _table2_md(table)
    lines += ["", "TN: Thermalnet (%s decoding%s), TN + PP: + Gatys style reconstruction, TN + GS: + 3x3 Gaussian "
              "(sigma %s). Paper columns: Kniaz et al. 2017, Table 2 (real FLIR ONE data)." %
              (ev.get("decoding"), ": the mean of the softmax after dividing out eq. 1's class weights v(q)"
               if ev.get("decoding") == "mmse" else "", ev.get("gaussian_sigma")), ""]
    if ev.get("tn_pp") != "run":
        lines += [ev.get("tn_pp_note", "TN + PP not run."), ""]
    lines += ["## Table 2's companion: every metric, TN beside the trivial baselines (%s)" % data_label(g), ""]
    lines += _companion_md(g)
    lines += [BASELINES_NOTE, ""]
    if (ev.get("baseline_fit") or {}).get("fitted_luminance"):
        lines += [fit_markdown(ev["baseline_fit"]["fitted_luminance"]), ""]
    lines += ["## Training", ""]
    loss_png = os.path.join(g["run"], "loss.png")
    if os.path.isfile(loss_png):
        lines += ["![loss curve](%s)" % _rel(loss_png, out_dir), ""]
    if g["val"]:
        first, last = g["val"][0], g["val"][-1]
        lines += ["Validation loss (test split, the paper's Fig. 8): %s at iteration %d -> %s at iteration %d "
                  "(%d evaluations)." % (_f(first["loss"], 4), first["iteration"], _f(last["loss"], 4),
                                         last["iteration"], len(g["val"])), ""]
    lines += ["| Setting | Value |", "|---|---|"] + ["| %s | %s |" % (k, v_) for k, v_ in settings_rows(g)] + [""]
    lines += ["## Examples (paper Figs. 9-10): TV | IR | synthetic IR", ""]
    for t in ev.get("triptychs", []):
        png = os.path.join(g["eval_dir"], t["png"])
        lines += ["%s %s (%s):" % (class_label(t["object_class"]), t["id"], _trip_scores(t)), "",
                  "![%s](%s)" % (t["id"], _rel(png, out_dir)), ""]
    bars = os.path.join(g["eval_dir"], "bars.png")
    if os.path.isfile(bars):
        lines += ["## RMS per class", "", "![bars](%s)" % _rel(bars, out_dir), ""]
    lines += ["## Paper-fidelity register (tools.fidelity)", "", FIDELITY_NOTE, ""] + _fidelity_md(g)
    lines += ["Files: per-image metrics `%s`, Table 2 `%s`, training log `%s`." % (
        _rel(os.path.join(g["eval_dir"], "per_image.csv"), out_dir),
        _rel(os.path.join(g["eval_dir"], "table2.csv"), out_dir), _rel(os.path.join(g["run"], "train.log"), out_dir)),
        ""]
    return "\n".join(lines)


def _img_tag(path: str, alt: str) -> str:
    if not os.path.isfile(path):
        return ""
    with open(path, "rb") as f:
        data = base64.b64encode(f.read()).decode("ascii")
    return '<img alt="%s" src="data:image/png;base64,%s" style="max-width:100%%">' % (html.escape(alt), data)


def _html_table(header: List[str], rows: List[List[str]]) -> str:
    h = "".join("<th>%s</th>" % html.escape(c) for c in header)
    body = "".join("<tr>%s</tr>" % "".join("<td>%s</td>" % html.escape(c.replace("**", "")) for c in r)
                   for r in rows)
    return "<table><thead><tr>%s</tr></thead><tbody>%s</tbody></table>" % (h, body)


def _md_table_to_rows(lines: List[str]):
    cells = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in lines]
    return cells[0], cells[2:]


def render_html(g: Dict) -> str:
    ev, table = g["eval"], g["table"]
    v = verdict(table)
    stmt = html.escape(_data_statement(g)).replace("**", "")
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>Thermalnet run report</title>",
             "<style>body{font-family:sans-serif;max-width:1000px;margin:auto;padding:1em}"
             "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #999;padding:3px 8px;"
             "text-align:right}td:first-child,th:first-child{text-align:left}"
             ".note{background:#fff3cd;padding:.6em;border:1px solid #e0c36b}</style></head><body>",
             "<h1>Thermalnet reproduction: run report</h1>", "<p class='note'>%s</p>" % stmt,
             "<h2>Result</h2><p>Overall average RMS on %s test images: TN <b>%s</b>, TN + GS %s; best trivial baseline "
             "(%s) %s. %s</p>" % (ev.get("n_test"), _f(v["tn"]), _f(v["tn_gs"]),
                                   html.escape(bl.BASELINE_LABELS[v["best_baseline"]]), _f(v["best_baseline_rms"]),
                                   "The network beats every trivial baseline." if v["beats_baselines"] else
                                   "The network does NOT beat the best trivial baseline."),
             "<h2>Table 2: average RMS (eq. 2, brightness 0..255 at %sx%s), %s</h2>" % (
                 ev.get("height"), ev.get("width"), html.escape(data_label(g))),
             _html_table(*_md_table_to_rows(_table2_md(table))),
             "<p>%s</p>" % html.escape(ev.get("tn_pp_note", "")),
             "<h2>Table 2's companion: every metric, TN beside the trivial baselines (%s)</h2>"
             % html.escape(data_label(g))]
    for m in metrics.METRICS:
        parts += ["<p>%s</p>" % html.escape(metric_caption(m, data_label(g))),
                  _html_table(*_md_table_to_rows(metric_table_lines(table, m, _with_pp(g))))]
    parts += ["<p>%s</p>" % html.escape(BASELINES_NOTE)]
    if (ev.get("baseline_fit") or {}).get("fitted_luminance"):
        parts.append("<p>%s</p>" % html.escape(fit_markdown(ev["baseline_fit"]["fitted_luminance"])))
    parts += [
             "<h2>Training</h2>", _img_tag(os.path.join(g["run"], "loss.png"), "loss curve"),
             _html_table(["Setting", "Value"], [[k, v_] for k, v_ in settings_rows(g)]),
             "<h2>Examples (paper Figs. 9-10): TV | IR | synthetic IR</h2>"]
    for t in ev.get("triptychs", []):
        parts.append("<p>%s %s (%s)</p>%s" % (html.escape(class_label(t["object_class"])),
                                              html.escape(t["id"]), html.escape(_trip_scores(t)),
                                                     _img_tag(os.path.join(g["eval_dir"], t["png"]), t["id"])))
    parts += ["<h2>RMS per class</h2>", _img_tag(os.path.join(g["eval_dir"], "bars.png"), "bars"),
              "<h2>Paper-fidelity register (tools.fidelity)</h2>", "<p>%s</p>" % html.escape(FIDELITY_NOTE)]
    if g["fidelity_error"]:
        parts.append("<p>The register could not be checked: %s</p>" % html.escape(g["fidelity_error"]))
    else:
        register, found = fidelity.table_cells(g["fidelity"])
        parts.append("<p>%s</p>" % html.escape(fidelity.summary_line(g["fidelity"])))
        parts.append(_html_table(list(fidelity.REGISTER_COLUMNS), register))
        if found:
            parts += ["<p>%s</p>" % html.escape(fidelity.FINDINGS_CAPTION),
                      _html_table(list(fidelity.FINDING_COLUMNS), found)]
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(run: str, eval_dir: Optional[str] = None, out_dir: Optional[str] = None) -> Dict:
    """Write report.md and report.html; return their paths and the verdict."""
    g = gather(run, eval_dir)
    out_dir = out_dir or run
    os.makedirs(out_dir, exist_ok=True)
    paths = {"md": os.path.join(out_dir, REPORT_MD), "html": os.path.join(out_dir, REPORT_HTML)}
    for key, text in (("md", render_markdown(g, out_dir)), ("html", render_html(g))):
        write_text(paths[key], text)
    return dict(paths, verdict=verdict(g["table"]))


README_COLUMNS = ("tn", "tn_gs", "tn_pp", "mean_ir", "fitted_luminance", "constant")


def readme_tables(run: str, eval_dir: Optional[str] = None) -> str:
    """The README's results tables, regenerated from a run's files (so no figure in the docs is typed in).

    RMS per class beside the paper, then every metric for the overall row; the heading names the
    data (SYNTHETIC or real), the machine, the training and the date the evaluation was written.
    """
    import time as _time
    eval_dir = eval_dir or os.path.join(run, "eval")
    s = _load_json(os.path.join(run, "train_summary.json"))
    ev = _load_json(os.path.join(eval_dir, "eval.json"))
    table = read_table_csv(os.path.join(eval_dir, "table2.csv"))
    g = {"eval": ev, "summary": s}
    when = _time.strftime("%Y-%m-%d", _time.gmtime(os.path.getmtime(os.path.join(eval_dir, "eval.json"))))
    ipe = float(s.get("iters_per_epoch") or 1)
    cols = [c for c in README_COLUMNS if c != "tn_pp" or ev.get("tn_pp") == "run"]
    from .evaluate import ROW_SHORT, metric_key
    lines = ["Run `%s`, evaluated %s: %s; %s, %d iterations (%.1f epochs) in %s on %s, %s CPU cores%s; %d test "
             "images at %sx%s, %s decoding." % (
                 os.path.basename(os.path.abspath(run)), when, data_label(g), os.path.basename(s.get("net", "")), s.get("iterations") or 0,
                 (s.get("iterations") or 0) / ipe, _duration(s.get("wall_seconds") or 0),
                 s.get("processor") or s.get("machine"), s.get("cpu_cores"),
                 (", GPU %s" % s["gpu"]) if s.get("gpu") is not None else "", ev.get("n_test", 0),
                 ev.get("height"), ev.get("width"), ev.get("decoding")), "",
             "| Object | n | %s | paper TN / TN + PP / TN + GS |" % " | ".join(ROW_SHORT[c] for c in cols),
             "|---|---:|%s---|" % ("---:|" * len(cols))]
    for r in table:
        paper = " / ".join(_f(r.get("paper_" + m)) for m in METHODS) if r.get("paper_tn") is not None else "—"
        lines.append("| %s | %d | %s | %s |" % (class_label(r["object_class"]), r["n"],
                                               " | ".join(_f(r.get(c)) if r.get(c) is not None else "not run"
                                                          for c in cols), paper))
    overall = _overall(table)
    lines += ["", "Average RMS of eq. 2 (brightness 0..255). Every metric, overall (%s):" % data_label(g), "",
              "| Metric | %s |" % " | ".join(ROW_SHORT[c] for c in cols), "|---|%s" % ("---:|" * len(cols))]
    for m in metrics.METRICS:
        lines.append("| %s | %s |" % (metrics.METRIC_SHORT[m], " | ".join(
            _f(overall.get(metric_key(c, m)), metrics.DIGITS[m]) if overall.get(metric_key(c, m)) is not None
            else "not run" for c in cols)))
    v = verdict(table)
    lines += ["", "Per class (%s against each of %s): %s" % (
        " and ".join(v["checked_metrics"]), ", ".join(bl.BASELINE_LABELS[b] for b in bl.BASELINES),
        "TN is better in every class." if not v["losses"] else "TN is NOT better in: %s." % "; ".join(v["losses"]))]
    if ev.get("tn_pp") != "run":
        lines += ["", ev.get("tn_pp_note") or "TN + PP not run."]
    shown = run if not os.path.isabs(run) else os.path.basename(run)
    lines += ["", "Regenerate: `python -m tools.report --run %s --readme`." % shown]
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools.report",
                                description="Write RUN/report.md and a self-contained RUN/report.html from a "
                                            "trained and evaluated run (numbers read from its files).")
    p.add_argument("--run", required=True, help="run folder (train_summary.json, train.csv, loss.png)")
    p.add_argument("--eval", help="evaluation folder (default RUN/eval)")
    p.add_argument("--out", help="where to write the report (default RUN)")
    p.add_argument("--readme", action="store_true", help="print the README's results tables for this run instead "
                                                        "(every figure read from the run's files)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    def body():
        try:
            if args.readme:
                print(readme_tables(args.run, args.eval), end="")
                return
            r = write_report(args.run, args.eval, args.out)
        except KeyError as exc:
            raise ValueError("%s: a run file lacks the entry %s (run tools.train / tools.evaluate again)"
                             % (args.run, exc)) from None
        print("wrote %s and %s" % (r["md"], r["html"]))
    from thermalnet import cli
    return cli.run(body, outputs=[args.out])


if __name__ == "__main__":
    sys.exit(main())
