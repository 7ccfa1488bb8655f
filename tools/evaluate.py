"""Table 2 of the paper for a trained model: average RMS (eq. 2) per object class.

    python -m tools.evaluate --dataset DS --deploy prototxt/thermalnet_v1_1_deploy.prototxt \
        --model runs/NAME/snap_iter_N.caffemodel --out runs/NAME/eval

For every test image (the dataset's test/ folder, at the network's HxW): TN (the
network's output decoded to brightness), TN + GS (3x3 Gaussian, tools.postprocess),
TN + PP (Gatys style reconstruction with VGG-16: only with --vgg-weights, otherwise
reported "not run" and never approximated), and the trivial baselines of
tools.baselines on the same images. RMS is spec.rms on brightness 0..255.
Per-class figures are the mean of per-image RMS, as the paper's "average RMS".

Writes into --out: per_image.csv, table2.csv, table2.md, eval.json, bars.png and
triptychs/<class>_<id>.png (TV | IR | synthetic IR, paper Figs. 9-10).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from typing import Dict, List, Optional, Sequence

import numpy as np

from dataset_builder import spec
from tools import baselines as bl

# Table 2 of Kniaz et al. 2017: (TN, TN + PP, TN + GS) average RMS.
PAPER_TABLE2 = {
    "human": (9.1, 31.9, 7.5),
    "microwave_oven": (37.8, 60.4, 29.2),
    "computer": (16.7, 36.5, 13.5),
}
METHODS = ("tn", "tn_pp", "tn_gs")
METHOD_LABELS = {"tn": "TN", "tn_pp": "TN + PP", "tn_gs": "TN + GS"}
REFERENCE_ROWS = bl.BASELINES + ("quantised_gt",)
OVERALL = "overall"


# Default "mmse" (spec.decode): eq. 1's rebalancing divided out, then the mean, the
# minimum-RMS estimate; plain "expectation" is pulled towards the up-weighted rare bins.
DECODINGS = spec.DECODINGS
unweight = spec.unweight


def decode_batch(predictor, images, decoding: str, class_weights: Optional[np.ndarray]) -> List[np.ndarray]:
    """Brightness images for one batch with any of DECODINGS."""
    return predictor.predict_brightness(images, decoding, class_weights=class_weights)


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


def table_rows(per_image: List[Dict], classes: Sequence[str]) -> List[Dict]:
    """Per-class rows (paper classes first, then any other class present, then overall)."""
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
        for key in METHODS + REFERENCE_ROWS:
            row[key] = _mean([r.get(key) for r in sel])
        paper = PAPER_TABLE2.get(cls)
        for key, v in zip(METHODS, paper or (None, None, None)):
            row["paper_" + key] = v
        rows.append(row)
    return rows


TABLE_FIELDS = (("object_class", "n") + METHODS + tuple("paper_" + m for m in METHODS) + REFERENCE_ROWS)
PER_IMAGE_FIELDS = ("id", "object_class") + METHODS + REFERENCE_ROWS


def _write_csv(path: str, fields: Sequence[str], rows: List[Dict]) -> str:
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(fields)
        for r in rows:
            w.writerow(["" if r.get(k) is None else (("%.4f" % r[k]) if isinstance(r[k], float) else r[k])
                        for k in fields])
    os.replace(tmp, path)
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


def table_markdown(rows: List[Dict], pp_note: str = "") -> str:
    """Table 2 in the paper's layout, ours beside the paper's, then the baselines."""
    lines = ["| Object | n | TN | TN + PP | TN + GS | paper TN | paper TN + PP | paper TN + GS |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        name = class_label(r["object_class"])
        if r["object_class"] == OVERALL:
            name = "**%s**" % name
        lines.append("| %s | %d | %s | %s | %s | %s | %s | %s |" % (
            name, r["n"], _cell(r["tn"]), _cell(r["tn_pp"]) if r["tn_pp"] is not None else "not run",
            _cell(r["tn_gs"]), _cell(r["paper_tn"]), _cell(r["paper_tn_pp"]), _cell(r["paper_tn_gs"])))
    lines += ["", "Trivial baselines and the quantisation floor on the same test images (average RMS):", "",
              "| Object | n | TN (ours) | %s |" % " | ".join(bl.BASELINE_LABELS[k] for k in REFERENCE_ROWS),
              "|---|---:|---:|%s" % ("---:|" * len(REFERENCE_ROWS))]
    for r in rows:
        name = class_label(r["object_class"])
        if r["object_class"] == OVERALL:
            name = "**%s**" % name
        lines.append("| %s | %d | %s | %s |" % (name, r["n"], _cell(r["tn"]),
                                              " | ".join(_cell(r[k]) for k in REFERENCE_ROWS)))
    if pp_note:
        lines += ["", pp_note]
    return "\n".join(lines) + "\n"


def evaluate(dataset: str, deploy: str, model: str, out: str, backend: str = "pycaffe",
             vgg_weights: Optional[str] = None, decoding: str = "mmse", batch_size: int = 8,
             gpu: Optional[int] = None, figures_per_class: int = 2, gatys_iterations: Optional[int] = None,
             limit: Optional[int] = None, progress: bool = True) -> Dict:
    """Score a model on a dataset's test split; write the CSVs, Table 2, figures; return eval.json's dict."""
    from tqdm import tqdm
    from tools import plots, postprocess
    from tools.inference import Predictor

    info = bl.read_dataset_info(dataset)
    rows = bl.read_manifest(dataset, "test")
    if limit:
        rows = rows[:limit]
    if not rows:
        raise ValueError("%s: the manifest lists no test images" % os.path.join(dataset, spec.MANIFEST_FILE))
    mean_file = os.path.join(dataset, spec.TRAIN_DB, spec.MEAN_FILE)
    os.makedirs(out, exist_ok=True)
    t0 = time.time()
    predictor = Predictor(deploy, model, mean_file=mean_file, backend=backend, batch_size=batch_size, gpu=gpu)
    base = bl.Baselines(dataset)
    weights = spec.read_class_weights(dataset, int(info["num_bins"])) if decoding == "mmse" else None

    from tools import gatys
    pp_reason = gatys.unavailable_reason(vgg_weights)
    reconstructor = None
    if pp_reason is None:
        reconstructor = gatys.StyleReconstructor(vgg_weights, gpu=gpu)

    per_image: List[Dict] = []
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
        preds = decode_batch(predictor, [p[0] for p in pairs], decoding, weights)
        for (vis, ir), r, tn in zip(pairs, chunk, preds):
            cls = r.get("object_class") or "unlabelled"
            gs = postprocess.gaussian3x3(tn)
            res = {"id": r["id"], "object_class": cls, "tn": spec.rms(ir, tn), "tn_gs": spec.rms(ir, gs),
                   "tn_pp": None}
            if reconstructor is not None:
                kw = {"iterations": gatys_iterations} if gatys_iterations else {}
                pp, _ = reconstructor.run(tn, ir, **kw)
                res["tn_pp"] = spec.rms(ir, pp)
            for name in REFERENCE_ROWS:
                res[name] = spec.rms(ir, base.predict(name, vis, ir))
            per_image.append(res)
            if shown.get(cls, 0) < figures_per_class:
                shown[cls] = shown.get(cls, 0) + 1
                png = os.path.join(trip_dir, "%s_%s.png" % (cls, r["id"]))
                plots.plot_triptych(vis, ir, np.clip(tn, 0, 255), png,
                                    title="%s %s: TN RMS %.1f (SYNTHETIC data)" % (class_label(cls), r["id"],
                                                                                  res["tn"])
                                    if info.get("synthetic") else
                                    "%s %s: TN RMS %.1f" % (class_label(cls), r["id"], res["tn"]))
                fig_paths.append({"id": r["id"], "object_class": cls, "png": os.path.relpath(png, out),
                                  "tn": res["tn"]})
            bar.update(1)
    bar.close()

    table = table_rows(per_image, spec.OBJECT_CLASSES)
    pp_note = pp_reason or ("TN + PP: Gatys style reconstruction with VGG-16 (%s)" % vgg_weights)
    _write_csv(os.path.join(out, "per_image.csv"), PER_IMAGE_FIELDS, per_image)
    _write_csv(os.path.join(out, "table2.csv"), TABLE_FIELDS, table)
    md = ("Average RMS (eq. 2, brightness 0..255 at %dx%d), %s decoding, TN + GS: 3x3 Gaussian sigma %.1f.%s\n\n"
          % (info["height"], info["width"], decoding, postprocess.GAUSSIAN_SIGMA,
             " Data are SYNTHETIC." if info.get("synthetic") else "")) + table_markdown(table, pp_note)
    tmp = os.path.join(out, "table2.md.tmp")
    with open(tmp, "w") as f:
        f.write(md)
    os.replace(tmp, os.path.join(out, "table2.md"))
    groups = [class_label(r["object_class"]) for r in table]
    series = {"TN": [r["tn"] for r in table], "TN + GS": [r["tn_gs"] for r in table]}
    if reconstructor is not None:
        series["TN + PP"] = [r["tn_pp"] for r in table]
    for k in bl.BASELINES:
        series[bl.BASELINE_LABELS[k]] = [r[k] for r in table]
    plots.plot_bars(groups, series, os.path.join(out, "bars.png"),
                    title="Average RMS per object class%s" % (" (SYNTHETIC data)" if info.get("synthetic") else ""))
    summary = {
        "dataset": os.path.abspath(dataset), "synthetic": bool(info.get("synthetic")),
        "deploy": os.path.abspath(deploy), "model": os.path.abspath(model), "backend": backend,
        "decoding": decoding, "gaussian_sigma": postprocess.GAUSSIAN_SIGMA,
        "tn_pp": "run" if reconstructor is not None else "not run", "tn_pp_note": pp_note,
        "height": int(info["height"]), "width": int(info["width"]), "num_bins": int(info["num_bins"]),
        "n_test": len(per_image), "seconds": time.time() - t0,
        "table": table, "triptychs": fig_paths,
        "files": {"per_image": "per_image.csv", "table": "table2.csv", "markdown": "table2.md", "bars": "bars.png"},
    }
    tmp = os.path.join(out, "eval.json.tmp")
    with open(tmp, "w") as f:
        json.dump(summary, f, indent=1)
    os.replace(tmp, os.path.join(out, "eval.json"))
    return summary


def build_parser() -> argparse.ArgumentParser:
    from tools.inference import BACKENDS
    p = argparse.ArgumentParser(prog="python -m tools.evaluate",
                                description="Table 2 of the paper for a trained Thermalnet: average RMS per object "
                                            "class for TN, TN + PP, TN + GS, beside the paper's numbers and "
                                            "trivial baselines, on a dataset's test split.")
    p.add_argument("--dataset", required=True, help="dataset folder built by dataset_builder")
    p.add_argument("--deploy", required=True, help="deploy prototxt (e.g. prototxt/thermalnet_v1_1_deploy.prototxt)")
    p.add_argument("--model", required=True, help="trained .caffemodel")
    p.add_argument("--out", required=True, help="output folder (e.g. runs/NAME/eval)")
    p.add_argument("--backend", default="pycaffe", choices=BACKENDS, help="inference back-end (default pycaffe)")
    p.add_argument("--vgg-weights", help="VGG_ILSVRC_16_layers.caffemodel for TN + PP (without it: 'not run')")
    p.add_argument("--gatys-iterations", type=int, help="TN + PP optimisation steps per image")
    p.add_argument("--decoding", default="mmse", choices=DECODINGS,
                   help="probabilities -> brightness: mmse (default; mean of the softmax with the class "
                        "rebalancing of eq. 1 divided out), expectation, argmax, annealed (spec.decode)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--gpu", type=int, help="GPU id (a GPU build of Caffe); default CPU")
    p.add_argument("--figures-per-class", type=int, default=2, help="triptych figures per object class")
    p.add_argument("--limit", type=int, help="score only the first N test images")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        s = evaluate(args.dataset, args.deploy, args.model, args.out, backend=args.backend,
                     vgg_weights=args.vgg_weights, decoding=args.decoding, batch_size=args.batch_size, gpu=args.gpu,
                     figures_per_class=args.figures_per_class, gatys_iterations=args.gatys_iterations,
                     limit=args.limit)
    except (OSError, ValueError) as exc:
        print("error: %s" % exc, file=sys.stderr)
        return 1
    with open(os.path.join(args.out, "table2.md")) as f:
        print(f.read())
    print("wrote %s (%d test images)" % (args.out, s["n_test"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
