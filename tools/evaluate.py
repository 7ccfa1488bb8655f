"""Table 2 of the paper for a trained model: average RMS (eq. 2) per object class.

    python -m tools.evaluate --dataset DS --deploy prototxt/thermalnet_v1_1_deploy.prototxt \
        --model runs/NAME/snap_iter_N.caffemodel --out runs/NAME/eval

For every test image (the dataset's test/ folder, at the network's HxW): TN (the
network's output decoded to brightness), TN + GS (3x3 Gaussian, thermalnet.postprocess),
TN + PP (Gatys style reconstruction with VGG-16: only with --vgg-weights, otherwise
reported "not run" and never approximated), and the trivial baselines of
thermalnet.baselines on the same images (mean training IR image, visible luminance fitted
to the IR on the training split, ...). Each is scored with thermalnet.metrics on brightness
0..255: eq. 2's RMS, the offset-free RMS (each image's mean difference removed), SSIM
and PSNR. Per-class figures are means of per-image values, as the paper's "average RMS".
dataset.json says whether the data are SYNTHETIC or real pairs; every table says which.

Writes into --out: per_image.csv, table2.csv (column `tn` is TN's RMS, `tn_ssim` its
SSIM, ...: evaluate.metric_key), table2.md, eval.json, bars.png and
triptychs/<class>_<id>.png (TV | IR | synthetic IR, paper Figs. 9-10).

Python API (used by ablations): evaluate(dataset, deploy, model, out, decoding=...) returns
eval.json's dict; its "metrics" is {class or "overall": {"n": n, row: {metric: value}}}.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from typing import Dict, List, Optional, Sequence

import numpy as np

from thermalnet import baselines as bl, cli, decoders, findings, layout, metrics, spec
from thermalnet.atomic import atomic_file, write_json, write_text

PAPER_TABLE2 = findings.PAPER_TABLE2      # Table 2 of Kniaz et al. 2017: (TN, TN + PP, TN + GS) average RMS
METHODS = ("tn", "tn_pp", "tn_gs")
METHOD_LABELS = {"tn": "TN", "tn_pp": "TN + PP", "tn_gs": "TN + GS"}
REFERENCE_ROWS = bl.BASELINES + ("quantised_gt",)
ROWS = METHODS + REFERENCE_ROWS          # everything scored on each test image
ROW_SHORT = {"tn": "TN", "tn_gs": "TN + GS", "tn_pp": "TN + PP", "mean_ir": "Mean training IR",
             "fitted_luminance": "Fitted luminance", "constant": "Constant", "luminance": "Luminance (unfitted)",
             "quantised_gt": "Quantised IR (floor)"}
OVERALL = "overall"
METRICS = metrics.METRICS
# bars.png leaves out the unfitted luminance: on the IR window's scale it is 3-4x worse than
# anything else and would squash the bars that matter (the tables still show it).
BAR_BASELINES = tuple(b for b in bl.BASELINES if b != "luminance")


def metric_key(row: str, metric: str) -> str:
    """Column name of one (method or baseline, metric): the bare name is eq. 2's RMS (Table 2's unit)."""
    if metric not in METRICS:
        raise ValueError("unknown metric %r (choose from %s)" % (metric, ", ".join(METRICS)))
    return row if metric == "rms" else "%s_%s" % (row, metric)


METRIC_KEYS = tuple(metric_key(r, m) for m in METRICS for r in ROWS)
# metrics.high_frequency of the real IR and of TN and its variants (Sec. 5.1's "high frequency components")
HF_ROWS = ("ir",) + METHODS
HF_KEYS = tuple("%s_hf" % r for r in HF_ROWS)


def data_label(info: Dict) -> str:
    """Which data a number comes from, as dataset.json says: 'SYNTHETIC data' or 'real pairs'."""
    return "SYNTHETIC data" if info.get("synthetic") else "real pairs"


def data_statement(info: Dict) -> str:
    """One line saying which data the numbers come from, from dataset.json (synthetic flag and note)."""
    return "Data: **%s** (dataset.json: %s)." % ("SYNTHETIC" if info.get("synthetic") else "real pairs",
                                                 info.get("note") or "no note")


# Default "mmse" (decoders.decode): eq. 1's rebalancing divided out, then the mean, the
# minimum-RMS estimate; plain "expectation" is pulled towards the up-weighted rare bins.
DECODINGS = decoders.DECODINGS
unweight = decoders.unweight


def decode_batch(predictor, images, decoding: str, class_weights: Optional[np.ndarray],
                 temperature: Optional[float] = None, rng=None) -> List[np.ndarray]:
    """Brightness images for one batch with any of DECODINGS."""
    return predictor.predict_brightness(images, decoding, temperature, class_weights=class_weights, rng=rng)


def class_label(name: str) -> str:
    """human -> Human, microwave_oven -> Microwave oven (the paper's row names)."""
    if name == OVERALL:
        return "Overall"
    return name.replace("_", " ").capitalize()


def _mean(values: Sequence[Optional[float]]) -> Optional[float]:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def _cell(v: Optional[float], digits: int = 1) -> str:
    return "—" if v is None else ("%.*f" % (digits, v))


def score_image(ir: np.ndarray, prediction: np.ndarray, row: str) -> Dict[str, float]:
    """Every metric of one prediction against the real IR, under its column names."""
    return {metric_key(row, m): v for m, v in metrics.all_metrics(ir, prediction).items()}


def table_rows(per_image: List[Dict], classes: Sequence[str]) -> List[Dict]:
    """Per-class rows (paper classes first, then any other class present, then overall): means of per-image values."""
    present = []
    for r in per_image:
        if r["object_class"] not in present:
            present.append(r["object_class"])
    order = list(spec.OBJECT_CLASSES) + sorted(c for c in present if c not in spec.OBJECT_CLASSES)
    order = [c for c in order if c in classes or c in present]
    rows = []
    for cls in order + [OVERALL]:
        sel = per_image if cls == OVERALL else [r for r in per_image if r["object_class"] == cls]
        row = {"object_class": cls, "n": len(sel)}
        for key in METRIC_KEYS + HF_KEYS:
            row[key] = _mean([r.get(key) for r in sel])
        paper = PAPER_TABLE2.get(cls)
        for key, v in zip(METHODS, paper or (None, None, None)):
            row["paper_" + key] = v
        rows.append(row)
    return rows


def nested_metrics(table: List[Dict]) -> Dict[str, Dict]:
    """table rows -> {class or 'overall': {'n': n, method or baseline: {metric: value}}} (the API's shape)."""
    out = {}
    for r in table:
        d = {"n": r["n"]}
        for row in ROWS:
            d[row] = {m: r.get(metric_key(row, m)) for m in METRICS}
        out[r["object_class"]] = d
    return out


RMS_KEYS = METHODS + REFERENCE_ROWS
TABLE_FIELDS = (("object_class", "n") + METHODS + tuple("paper_" + m for m in METHODS) + REFERENCE_ROWS
                + tuple(k for k in METRIC_KEYS if k not in RMS_KEYS) + HF_KEYS)
PER_IMAGE_FIELDS = ("id", "object_class") + METRIC_KEYS + HF_KEYS


def _write_csv(path: str, fields: Sequence[str], rows: List[Dict]) -> str:
    with atomic_file(path) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(fields)
            for r in rows:
                w.writerow(["" if r.get(k) is None else (("%.6f" % r[k]) if isinstance(r[k], float) else r[k])
                            for k in fields])
    return path


def read_table_csv(path: str) -> List[Dict]:
    """table2.csv / per_image.csv -> rows with floats (empty = None)."""
    if not os.path.isfile(path):
        raise FileNotFoundError("%s: no such evaluation CSV" % path)
    out = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            row = {}
            for k, v in r.items():
                if k in ("object_class", "id"):
                    row[k] = v
                elif k == "n":
                    row[k] = int(v)
                else:
                    row[k] = float(v) if v != "" else None
            out.append(row)
    return out


def _name(r: Dict) -> str:
    name = class_label(r["object_class"])
    return "**%s**" % name if r["object_class"] == OVERALL else name


def metric_caption(metric: str, data: str = "") -> str:
    better = "higher is better" if metrics.HIGHER_IS_BETTER[metric] else "lower is better"
    return "%s per class, mean over images (%s)%s:" % (metrics.METRIC_LABELS[metric], better,
                                                       " -- " + data if data else "")


def metric_table_lines(rows: List[Dict], metric: str, with_pp: bool = True) -> List[str]:
    """One markdown table: a metric per class for TN, its variants, every baseline and the floor."""
    cols = [c for c in ROWS if with_pp or c != "tn_pp"]
    lines = ["| Object | n | %s |" % " | ".join(ROW_SHORT[c] for c in cols), "|---|---:|%s" % ("---:|" * len(cols))]
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(metric_key(c, metric))
            cells.append(_cell(v, metrics.DIGITS[metric]) if v is not None else ("not run" if c == "tn_pp" else "—"))
        lines.append("| %s | %d | %s |" % (_name(r), r["n"], " | ".join(cells)))
    return lines


def metrics_markdown(rows: List[Dict], data: str = "", with_pp: bool = True) -> str:
    """Table 2's companion: one table per metric, TN and its variants beside every baseline."""
    lines = []
    for m in METRICS:
        lines += [metric_caption(m, data), ""] + metric_table_lines(rows, m, with_pp) + [""]
    return "\n".join(lines)


def table_markdown(rows: List[Dict], pp_note: str = "", data: str = "") -> str:
    """Table 2 in the paper's layout, ours beside the paper's, then every metric for TN and the baselines."""
    lines = ["| Object | n | TN | TN + PP | TN + GS | paper TN | paper TN + PP | paper TN + GS |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append("| %s | %d | %s | %s | %s | %s | %s | %s |" % (
            _name(r), r["n"], _cell(r["tn"]), _cell(r["tn_pp"]) if r["tn_pp"] is not None else "not run",
            _cell(r["tn_gs"]), _cell(r["paper_tn"]), _cell(r["paper_tn_pp"]), _cell(r["paper_tn_gs"])))
    if pp_note:
        lines += ["", pp_note]
    lines += ["", "Table 2's companion: every metric, TN beside the trivial baselines and the quantisation floor "
              "on the same test images%s." % (" (" + data + ")" if data else ""), ""]
    lines.append(metrics_markdown(rows, data))
    return "\n".join(lines) + "\n"


def _pct(v: Optional[float]) -> str:
    return "—" if v is None else "%.1f %%" % v


def relations_markdown(table: List[Dict]) -> str:
    """The paper's relations in this run (thermalnet.findings): GS gain, TN + PP / TN, high-frequency ratio."""
    rel = findings.relations(table)
    lines = ["The paper's relations within this run (absolute RMS depends on the data; these do not): GS gain = "
             "how much TN + GS lowers TN's RMS; HF = %s, TN's over the real IR's (> 1: components the real IR "
             "lacks, Sec. 5.1)." % metrics.HIGH_FREQUENCY_FILTER, "",
             "| Object | GS gain | paper GS gain | TN + PP / TN | paper TN + PP / TN | HF TN / real IR |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in table:
        c = r["object_class"]
        x = rel[c]
        pp = findings.PAPER_PP_RATIO.get(c)
        lines.append("| %s | %s | %s | %s | %s | %s |" % (
            _name(r), _pct(x["gs_gain_percent"]), _pct(findings.PAPER_GS_GAIN.get(c)),
            "not run" if x["pp_ratio"] is None else "%.2f" % x["pp_ratio"], "—" if pp is None else "%.2f" % pp,
            "—" if x["hf_ratio"] is None else "%.2f" % x["hf_ratio"]))
    return "\n".join(lines) + "\n"


def fit_markdown(fit: Dict) -> str:
    return ("Fitted luminance: IR = %.4f * luma + %.2f (least squares over %d pixels of %d training images, "
            "R^2 %.3f), clipped to 0..255." % (fit["a"], fit["b"], fit["pixels"], fit["images"], fit["r2"]))


def evaluate(dataset: str, deploy: str, model: str, out: str, backend: str = "pycaffe",
             vgg_weights: Optional[str] = None, decoding: str = decoders.DEFAULT_DECODING,
             temperature: Optional[float] = None, batch_size: int = 8,
             gpu: Optional[int] = None, figures_per_class: int = 2, gatys_iterations: Optional[int] = None,
             limit: Optional[int] = None, progress: bool = True,
             baselines: Optional["bl.Baselines"] = None) -> Dict:
    """Score a model on a dataset's test split; write the CSVs, Table 2, figures; return eval.json's dict.

    The dict's "metrics" holds {class or "overall": {"n": n, row: {metric: value}}} for every
    row of ROWS (TN, TN + PP, TN + GS, the baselines, the quantisation floor) and metric of
    METRICS (rms = eq. 2, rms_offset_free, ssim, psnr); "baseline_fit" the fitted-luminance
    line; "data" which data the numbers come from (dataset.json). Pass `baselines` (a
    thermalnet.baselines.Baselines of the same dataset) to reuse its training statistics across calls.
    """
    from tqdm import tqdm
    from thermalnet import plots, postprocess
    from thermalnet.inference import Predictor

    info = layout.read_dataset_info(dataset)
    data = data_label(info)
    rows = bl.read_manifest(dataset, "test")
    if limit:
        rows = rows[:limit]
    if not rows:
        raise ValueError("%s: the manifest lists no test images" % os.path.join(dataset, layout.MANIFEST_FILE))
    mean_file = os.path.join(dataset, layout.TRAIN_DB, layout.MEAN_FILE)
    t0 = time.time()
    if not (backend == "onnxruntime" and model.lower().endswith(".onnx")):
        from thermalnet.inference import check_bins
        check_bins(deploy, int(info["num_bins"]), dataset)
    # Every input is read before the output folder is made: a bad one leaves nothing behind.
    predictor = Predictor(deploy, model, mean_file=mean_file, backend=backend, batch_size=batch_size, gpu=gpu)
    base = baselines if baselines is not None else bl.Baselines(dataset)
    weights = layout.read_class_weights(dataset, int(info["num_bins"])) if decoding == "mmse" else None
    os.makedirs(out, exist_ok=True)

    from thermalnet import gatys
    pp_reason = gatys.unavailable_reason(vgg_weights)
    reconstructor = None
    if pp_reason is None:
        reconstructor = gatys.StyleReconstructor(vgg_weights, gpu=gpu)

    per_image: List[Dict] = []
    rng = np.random.default_rng(decoders.SAMPLE_SEED)      # the "sample" decoding's draws, seeded per evaluation
    shown: Dict[str, int] = {}
    fig_paths: List[Dict] = []
    trip_dir = os.path.join(out, "triptychs")
    bar = tqdm(total=len(rows), desc="evaluate", unit="img", disable=not progress)
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        pairs = [bl.load_test_pair(dataset, r["id"]) for r in chunk]
        for (vis, ir), r in zip(pairs, chunk):
            if ir.shape != (int(info["height"]), int(info["width"])) or vis.shape[:2] != ir.shape:
                raise ValueError("%s: test image %s is %s / IR %s, the dataset says %dx%d"
                                 % (dataset, r["id"], vis.shape[:2], ir.shape, info["height"], info["width"]))
        preds = decode_batch(predictor, [p[0] for p in pairs], decoding, weights, temperature, rng)
        for (vis, ir), r, tn in zip(pairs, chunk, preds):
            cls = r.get("object_class") or "unlabelled"
            res = {"id": r["id"], "object_class": cls}
            gs = postprocess.gaussian3x3(tn)
            res.update(score_image(ir, tn, "tn"))
            res.update(score_image(ir, gs, "tn_gs"))
            res.update({metric_key("tn_pp", m): None for m in METRICS})
            res.update(ir_hf=metrics.high_frequency(ir), tn_hf=metrics.high_frequency(tn),
                       tn_gs_hf=metrics.high_frequency(gs), tn_pp_hf=None)
            if reconstructor is not None:
                kw = {"iterations": gatys_iterations} if gatys_iterations else {}
                pp, _ = reconstructor.run(tn, ir, **kw)
                res.update(score_image(ir, pp, "tn_pp"))
                res["tn_pp_hf"] = metrics.high_frequency(pp)
            for name in REFERENCE_ROWS:
                res.update(score_image(ir, base.predict(name, vis, ir), name))
            per_image.append(res)
            if shown.get(cls, 0) < figures_per_class:
                shown[cls] = shown.get(cls, 0) + 1
                png = os.path.join(trip_dir, "%s_%s.png" % (cls, r["id"]))
                plots.plot_triptych(vis, ir, np.clip(tn, 0, 255), png,
                                    title="%s %s: TN RMS %.1f, SSIM %.2f, PSNR %.1f dB (%s)"
                                    % (class_label(cls), r["id"], res["tn"], res["tn_ssim"], res["tn_psnr"], data))
                fig_paths.append({"id": r["id"], "object_class": cls, "png": os.path.relpath(png, out),
                                  "tn": res["tn"], "tn_ssim": res["tn_ssim"], "tn_psnr": res["tn_psnr"]})
            bar.update(1)
    bar.close()

    table = table_rows(per_image, spec.OBJECT_CLASSES)
    pp_note = pp_reason or ("TN + PP: Gatys style reconstruction with VGG-16 (%s)" % vgg_weights)
    _write_csv(os.path.join(out, "per_image.csv"), PER_IMAGE_FIELDS, per_image)
    _write_csv(os.path.join(out, "table2.csv"), TABLE_FIELDS, table)
    md = ("%s\n\nTable 2 (%s): average RMS (eq. 2, brightness 0..255 at %dx%d), %s decoding, TN + GS: 3x3 "
          "Gaussian sigma %.1f.\n\n" % (data_statement(info), data, info["height"], info["width"],
                                        decoders.label(decoding, temperature), postprocess.GAUSSIAN_SIGMA)
          + table_markdown(table, pp_note, data) + fit_markdown(base.fit) + "\n\n" + relations_markdown(table))
    write_text(os.path.join(out, "table2.md"), md)
    groups = [class_label(r["object_class"]) for r in table]
    series = {"TN": [r["tn"] for r in table], "TN + GS": [r["tn_gs"] for r in table]}
    if reconstructor is not None:
        series["TN + PP"] = [r["tn_pp"] for r in table]
    for k in BAR_BASELINES:
        series[ROW_SHORT[k]] = [r[k] for r in table]
    plots.plot_bars(groups, series, os.path.join(out, "bars.png"),
                    title="Average RMS (eq. 2) per object class (%s)" % data)
    summary = {
        "dataset": os.path.abspath(dataset), "synthetic": bool(info.get("synthetic")),
        "data": {"label": data, "synthetic": bool(info.get("synthetic")), "note": info.get("note"),
                 "source": os.path.join(os.path.abspath(dataset), layout.DATASET_INFO_FILE)},
        "deploy": os.path.abspath(deploy), "model": os.path.abspath(model), "backend": backend,
        "decoding": decoding, "gaussian_sigma": postprocess.GAUSSIAN_SIGMA,
        "temperature": temperature if temperature is not None else decoders.DEFAULT_TEMPERATURE.get(decoding),
        "high_frequency_filter": metrics.HIGH_FREQUENCY_FILTER, "relations": findings.relations(table),
        "tn_pp": "run" if reconstructor is not None else "not run", "tn_pp_note": pp_note,
        "height": int(info["height"]), "width": int(info["width"]), "num_bins": int(info["num_bins"]),
        "n_test": len(per_image), "seconds": time.time() - t0,
        "metric_names": {m: metrics.METRIC_LABELS[m] for m in METRICS}, "ssim_options": metrics.SSIM_OPTIONS,
        "baseline_fit": {"fitted_luminance": base.fit},
        "table": table, "metrics": nested_metrics(table), "triptychs": fig_paths,
        "files": {"per_image": "per_image.csv", "table": "table2.csv", "markdown": "table2.md", "bars": "bars.png"},
    }
    write_json(os.path.join(out, "eval.json"), summary)
    return summary


def build_parser() -> argparse.ArgumentParser:
    from thermalnet.inference import BACKENDS
    p = argparse.ArgumentParser(prog="python -m tools.evaluate",
                                description="Table 2 of the paper for a trained Thermalnet: average RMS per object "
                                            "class for TN, TN + PP, TN + GS, beside the paper's numbers, and its "
                                            "companion tables (RMS, offset-free RMS, SSIM, PSNR) with the trivial "
                                            "baselines (mean training IR, visible luminance fitted to the IR on the "
                                            "training split, ...) on a dataset's test split; dataset.json says "
                                            "whether the data are SYNTHETIC or real pairs.")
    p.add_argument("--dataset", required=True, help="dataset folder built by dataset_builder")
    p.add_argument("--deploy", required=True, help="deploy prototxt (e.g. prototxt/thermalnet_v1_1_deploy.prototxt)")
    p.add_argument("--model", required=True, help="trained .caffemodel")
    p.add_argument("--out", required=True, help="output folder (e.g. runs/NAME/eval)")
    cli.add_backend(p, BACKENDS, help="inference back-end (default pycaffe)")
    cli.add_vgg_weights(p)
    p.add_argument("--gatys-iterations", type=int, help="TN + PP optimisation steps per image")
    cli.add_decoding(p, decoders.DEFAULT_DECODING,
                   help="probabilities -> brightness: mmse (default; mean of the softmax with the class "
                        "rebalancing of eq. 1 divided out), expectation, argmax, annealed; sample (one draw per "
                        "pixel) and digits (DIGITS' segmentation view) model readings of the paper (decoders.decode)")
    cli.add_temperature(p)
    cli.add_batch_size(p, 8)
    cli.add_gpu(p)
    p.add_argument("--figures-per-class", type=int, default=2, help="triptych figures per object class")
    p.add_argument("--limit", type=int, help="score only the first N test images")
    cli.add_quiet(p)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    def body():
        s = evaluate(args.dataset, args.deploy, args.model, args.out, backend=args.backend,
                     vgg_weights=args.vgg_weights, decoding=args.decoding, temperature=args.temperature,
                     batch_size=args.batch_size, gpu=args.gpu,
                     figures_per_class=args.figures_per_class, gatys_iterations=args.gatys_iterations,
                     limit=args.limit, progress=not args.quiet)
        with open(os.path.join(args.out, "table2.md")) as f:
            print(f.read())
        print("wrote %s (%d test images)" % (args.out, s["n_test"]))
    return cli.run(body, outputs=[args.out])


if __name__ == "__main__":
    sys.exit(main())
