"""The paper's unstated choices, measured: train each arm for the same budget, one table.

    python -m tools.ablate --pairs PAIRS_DIR --out runs/ablate/NAME --iterations 3000 \\
        --arms default,deconv-fixed,size-240x320,q16,q64,lambda0,lambda1,mirror,decoding

The paper does not say whether its deconvolutions learn, its input size, Q, the
rebalancing lambda, its solver, whether it mirrored its pairs or started from ImageNet
weights. Every arm here changes ONE of those against the kit's default network
(prototxt/thermalnet_v1_1.prototxt) and trains on datasets built from the same pairs
with the same seed (so the same split), for the same budget (iterations, so that
machines of different speed give the same arms; --minutes for a wall-clock budget).
Each arm is scored on its held-out pairs at the snapshot with the lowest validation
loss and at the last one, and the table names which. Decoding arms reuse the default
arm's model (decoding is a choice at evaluation time).

Arms are derived from the default network by editing a copy of its prototxt, never by
hand, so the default and every arm differ exactly in what the arm names.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import sys
import time
from typing import Dict, List, Optional, Sequence

import numpy as np

from thermalnet import cli, decoders, findings, layout, metrics, spec

DEFAULT_ITERATIONS = 3000
DEFAULT_BATCH = 4
DEFAULT_BASE_LR = 1e-3
DEFAULT_DECODING = decoders.DEFAULT_DECODING
GRID_IMAGES = 4

# Every arm: what it changes (data = dataset build settings, net = network edits,
# decoding = evaluation only, weights = pretrained caffemodel) and the question it answers.
ARMS: Dict[str, Dict] = {
    "default": {"why": "the kit's default network and dataset settings"},
    "deconv-fixed": {"net": {"deconv": "fixed"},
                     "why": "both deconvolutions fixed bilinear (lr_mult 0), as in FCN"},
    "deconv-learned": {"net": {"deconv": "learned"},
                       "why": "both deconvolutions learned, bilinear initialisation, one filter per bin"},
    "deconv-learned-full": {"net": {"deconv": "learned-full"},
                            "why": "both deconvolutions learned and mixing all bins (group 1), bilinear init"},
    "size-240x320": {"data": {"size": [spec.PAPER_HEIGHT, spec.PAPER_WIDTH]},
                     "why": "input and output at 240x320 (paper scale) instead of 120x160"},
    "q16": {"data": {"num_bins": 16}, "why": "Q = 16 thermal bins"},
    "q64": {"data": {"num_bins": 64}, "why": "Q = 64 thermal bins"},
    "lambda0": {"data": {"rebalance_lambda": 0.0}, "why": "v(Y): lambda 0, pure inverse prior"},
    "lambda1": {"data": {"rebalance_lambda": 1.0}, "why": "v(Y): lambda 1, no rebalancing (plain cross-entropy)"},
    "mirror": {"data": {"mirror": True}, "why": "mirrored copy of every training pair in both LMDBs"},
    "skip-fire3": {"net": {"skip": "fire3/concat"},
                   "why": "BEYOND THE PAPER: FCN-style skip, stride-4 scores from fire3 added before the second "
                          "deconvolution (zero-initialised: starts as the default) - shows what stride 16 costs"},
    "imagenet": {"weights": True, "why": "body initialised from the ImageNet SqueezeNet caffemodel (--imagenet)"},
    "decoding": {"decoding": [d for d in decoders.ESTIMATES if d != DEFAULT_DECODING],
                 "why": "the default arm's model decoded otherwise"},
    # ---- hypotheses: what made the paper's outputs noisy (Sec. 5.1), which it does not say --------------------
    # Each is a reading of the paper's unstated set-up; ablation.json's gs_gain_percent and hf_ratio say whether it
    # gives Table 2's relations (thermalnet.findings). Decoding-only ones reuse the default arm's model.
    "h-sample": {"decoding": "sample", "reuse": "default",
                 "why": "HYPOTHESIS: the image is one draw per pixel from the predicted distribution (T 1), not an "
                        "estimate"},
    "h-sample-t0.5": {"decoding": "sample", "temperature": 0.5, "reuse": "default",
                      "why": "HYPOTHESIS: one draw per pixel from the distribution sharpened by 1/T, T 0.5"},
    "h-digits": {"decoding": "digits", "reuse": "default",
                 "why": "HYPOTHESIS: DIGITS 6.1.1's own picture of a Q-channel output (Image Segmentation view: the "
                        "argmax bin index as grey, stretched to 0..255)"},
    "h-argmax-q8": {"data": {"num_bins": 8}, "decoding": "argmax",
                    "why": "HYPOTHESIS: few bins (Q = 8) decoded by argmax: 32-level steps at every bin edge"},
    "h-deconv-k4s4": {"net": {"deconv": "learned", "last_kernel_equals_stride": True},
                      "why": "HYPOTHESIS: learned deconvolutions, the full-resolution one with kernel = stride = 4 (no "
                             "overlap: each score pixel painted as one 4x4 block, bilinear-filler start)"},
    "h-sigmoid": {"net": {"base": "v1_1_sigmoid"},
                  "why": "HYPOTHESIS: the sigmoid cross-entropy the paper names as its alternative (Sec. 3.1)"},
}
# Names that stand for several arms on the command line.
ARM_GROUPS = {"hypotheses": [a for a in ARMS if a.startswith("h-")]}


def _key(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:10]


def build_variant(pairs: str, data: Dict, root: str, progress: bool = True, split: str = "auto") -> str:
    """Dataset built from `pairs` with the arm's settings; cached by a hash of them (and the pairs path).

    split: dataset_builder's --split (auto: the split the pairs carry, else the paper's).
    """
    from dataset_builder.build import BuildConfig, build
    settings = {"pairs": os.path.abspath(pairs), "size": data.get("size", [spec.DEFAULT_HEIGHT, spec.DEFAULT_WIDTH]),
                "num_bins": data.get("num_bins", spec.NUM_BINS),
                "rebalance_lambda": data.get("rebalance_lambda", spec.REBALANCE_LAMBDA),
                "mirror": bool(data.get("mirror", False)), "seed": spec.SEED}
    if split != "auto":
        settings["split"] = split               # absent for auto: datasets cached before --split keep their key
    out = os.path.join(root, "dataset-%s" % _key(settings))
    if os.path.isfile(os.path.join(out, layout.DATASET_INFO_FILE)):
        return out
    h, w = settings["size"]
    cfg = BuildConfig(height=h, width=w, num_bins=settings["num_bins"], seed=settings["seed"],
                      rebalance_lambda=settings["rebalance_lambda"], mirror=settings["mirror"], progress=progress,
                      split=split)
    log = cli.DeferredLog()            # skipped pairs: printed on success, the first named in a failure
    build(out, (), [pairs], cfg, log=log)
    log.flush()
    return out


def _add_skip(net, source: str, num_bins: int) -> None:
    """FCN-style skip (beyond the paper): 1x1 scores of `source` (stride 4) added to the first
    deconvolution's output, cropped to it, feeding the second deconvolution.

    Offsets (SqueezeNet v1.1 coordinates, as in the prototxt headers): a stride-4 map pixel v
    sits at input 4v + 3 and upscore1 pixel u at 4u + 1, so no integer crop aligns them; offset
    0 puts the coarse path half a stride-4 cell (2 px) up/left of the skip scores. Through the
    second deconvolution a fused cell v lands at output pixel 4v + 3.5 - 0.5, so the final crop
    takes offset 0: the skip scores keep the default's -0.5 px residual, and the coarse path
    reaches output pixel x from where the default puts it at x - 2.
    """
    from google.protobuf import text_format
    layers = list(net.layer)
    deconvs = [l for l in layers if l.type == "Deconvolution"]
    if len(deconvs) != 2 or not any(source in l.top for l in layers):
        raise ValueError("skip arm: needs two deconvolutions and a %r blob" % source)
    first, second = deconvs
    extra = text_format.Parse('''
layer { name: "score_skip" type: "Convolution" bottom: "%s" top: "score_skip"
        param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
        convolution_param { num_output: %d kernel_size: 1 weight_filler { type: "constant" value: 0 }
                            bias_filler { type: "constant" value: 0 } } }
layer { name: "upscore1_crop" type: "Crop" bottom: "%s" bottom: "score_skip" top: "upscore1_crop"
        crop_param { axis: 2 offset: 0 } }
layer { name: "fuse_skip" type: "Eltwise" bottom: "upscore1_crop" bottom: "score_skip" top: "fuse_skip"
        eltwise_param { operation: SUM } }
''' % (source, num_bins, first.top[0]), type(net)())
    second.bottom[0] = "fuse_skip"
    at = [l.name for l in net.layer].index(second.name)
    new = layers[:at] + list(extra.layer) + layers[at:]
    del net.layer[:]
    net.layer.extend(new)
    for l in net.layer:
        if l.type == "Crop" and l.bottom[0] == second.top[0]:
            l.crop_param.ClearField("offset")
            l.crop_param.offset.append(0)


def _kernel_equals_stride(net, deconv) -> None:
    """The deconvolution's kernel set to its stride (no overlap), the Crop after it moved to match.

    A deconvolution maps x to s*x + (k-1)/2 - p (FCN's coordinate rule, the prototxt headers),
    so a kernel k' instead of k moves every output coordinate by (k' - k)/2: the crop offset
    moves by the same amount and the residual stays the file's own (-0.5 px in v1.1).
    """
    cp = deconv.convolution_param
    old, new = int(cp.kernel_size[0]), int(cp.stride[0])
    del cp.kernel_size[:]
    cp.kernel_size.append(new)
    for l in net.layer:
        if l.type == "Crop" and l.bottom[0] == deconv.top[0]:
            offset = int(l.crop_param.offset[0]) + (new - old) // 2
            if offset < 0:
                raise ValueError("kernel = stride in %s: the crop offset would be %d" % (deconv.name, offset))
            del l.crop_param.offset[:]
            l.crop_param.offset.append(offset)


def edit_net(net_path: str, out_path: str, num_bins: int, deconv: Optional[str] = None,
             skip: Optional[str] = None, last_kernel_equals_stride: bool = False) -> str:
    """Copy of a Thermalnet prototxt with Q outputs and the deconvolutions fixed/learned (None: as is)."""
    from thermalnet import nets
    net = nets.load_net(net_path)
    deconvs = [l for l in net.layer if l.type == "Deconvolution"]
    if not deconvs:
        raise ValueError("%s: no Deconvolution layers" % net_path)
    score = [l for l in net.layer if l.type == "Convolution" and deconvs[0].bottom[0] in l.top]
    if len(score) != 1:
        raise ValueError("%s: cannot find the score layer feeding %s" % (net_path, deconvs[0].name))
    score[0].convolution_param.num_output = num_bins
    for layer in deconvs:
        cp = layer.convolution_param
        grouped = cp.group > 1
        cp.num_output = num_bins
        if deconv is not None:
            grouped = deconv != "learned-full"
            lr = 0.0 if deconv == "fixed" else 1.0
            del layer.param[:]
            p = layer.param.add()
            p.lr_mult, p.decay_mult = lr, lr
        cp.group = num_bins if grouped else 1
        cp.weight_filler.type = "bilinear"
    if last_kernel_equals_stride:
        _kernel_equals_stride(net, deconvs[-1])
    if skip:
        _add_skip(net, skip, num_bins)
    nets.save_net(net, out_path, "%s, Q = %d, deconvolutions %s%s (tools/ablate.py)"
                  % (os.path.basename(net_path), num_bins, deconv or "as in the file",
                     ", last kernel = stride" if last_kernel_equals_stride else ""))
    return out_path


def plan_arms(names: Sequence[str], imagenet: Optional[str]) -> List[Dict]:
    """Expand arm names (decoding -> one arm per decoding) into runnable arms; unknown -> error."""
    arms = []
    names = [n for name in names for n in ARM_GROUPS.get(name, [name])]
    for name in names:
        if name not in ARMS:
            raise ValueError("unknown arm %r (known: %s; groups: %s)" % (name, ", ".join(ARMS), ", ".join(ARM_GROUPS)))
        a = ARMS[name]
        if isinstance(a.get("decoding"), list):
            for d in a["decoding"]:
                arms.append({"name": "decoding-%s" % d, "decoding": d, "reuse": "default",
                             "why": "the default arm's model, %s decoding" % d})
            continue
        if a.get("reuse"):
            arms.append({"name": name, "decoding": a["decoding"], "temperature": a.get("temperature"),
                         "reuse": a["reuse"], "why": a["why"]})
            continue
        arm = {"name": name, "data": a.get("data", {}), "net": a.get("net", {}), "why": a["why"],
               "decoding": a.get("decoding", DEFAULT_DECODING), "temperature": a.get("temperature")}
        if a.get("weights"):
            arm["weights"] = imagenet
            if not imagenet:
                arm["skip"] = ("not run: needs the ImageNet SqueezeNet v1.1 caffemodel (--imagenet); a stand-in "
                               "with random weights would prove the plumbing, not the effect")
        arms.append(arm)
    return arms


def _row_metrics(table: List[Dict]) -> Dict[str, Dict]:
    return {r["object_class"]: r for r in table}


ARM_FILE = "arm.json"     # what an arm's finished run trained: lets a rerun skip it


def _arm_record(dataset: str, net_text: str, iterations: Optional[int], batch: int, base_lr: float,
                weights: Optional[str]) -> Dict:
    return {"dataset": os.path.abspath(dataset), "net_sha256": hashlib.sha256(net_text.encode()).hexdigest(),
            "iterations": iterations, "batch": batch, "base_lr": base_lr, "weights": weights}


def _finished_run(adir: str, record: Dict) -> Optional[Dict]:
    """The summary of an earlier run of this arm when it trained exactly what is asked now.

    An ablation interrupted, or rerun with more arms, retrains only what changed: same
    dataset, network text, iteration budget, batch, learning rate and weights, finished.
    """
    from . import train
    path = os.path.join(adir, "train", train.SUMMARY_FILE)
    rec = os.path.join(adir, ARM_FILE)
    if not record["iterations"] or not (os.path.isfile(path) and os.path.isfile(rec)):
        return None
    with open(rec) as f:
        if json.load(f) != record:
            return None
    with open(path) as f:
        s = json.load(f)
    return s if s.get("status") == "done" and s.get("iterations") == record["iterations"] else None


def run_arm(arm: Dict, pairs: str, out: str, iterations: Optional[int], minutes: Optional[float], batch: int,
            base_lr: float, net_path: str, deploy_path: str, progress: bool = True, evaluate_limit=None,
            split: str = "auto") -> Dict:
    """Build (cached) -> edit net -> train for the budget -> evaluate best and last snapshots."""
    from . import evaluate, train
    adir = os.path.join(out, "arms", arm["name"])
    os.makedirs(adir, exist_ok=True)
    ds = build_variant(pairs, arm["data"], os.path.join(out, "datasets"), progress, split)
    info = layout.read_dataset_info(ds)
    q = int(info["num_bins"])
    if arm["net"].get("base"):
        from thermalnet import nets
        net_path, deploy_path = nets.network(arm["net"]["base"]).net, nets.network(arm["net"]["base"]).deploy
    edits = {"deconv": arm["net"].get("deconv"), "skip": arm["net"].get("skip"),
             "last_kernel_equals_stride": bool(arm["net"].get("last_kernel_equals_stride"))}
    net = edit_net(net_path, os.path.join(adir, "net.prototxt"), q, **edits)
    deploy = edit_net(deploy_path, os.path.join(adir, "deploy.prototxt"), q, **edits)
    n_train = int(info["counts"].get("train_entries", info["counts"]["train"]))
    per_epoch = int(np.ceil(n_train / float(batch)))
    epochs = (iterations / float(per_epoch)) if iterations else 10000.0
    kw = {"weights": arm["weights"]} if arm.get("weights") else {}
    t0 = time.time()
    with open(net) as f:
        record = _arm_record(ds, f.read(), iterations, batch, base_lr, arm.get("weights"))
    s = _finished_run(adir, record)
    reused = s is not None
    if reused:
        print("[ablate] arm %s: reusing its finished run (same network, dataset and budget)" % arm["name"],
              flush=True)
    else:
        s = train.train(ds, net, os.path.join(adir, "train"), epochs=epochs, batch_size=batch, base_lr=base_lr,
                        seed=spec.SEED, progress=progress, overwrite=True, max_minutes=minutes,
                        snapshot_epochs=max(epochs / 10.0, 1.0 / per_epoch), **kw)
        from thermalnet.atomic import write_text
        write_text(os.path.join(adir, ARM_FILE), json.dumps(record, indent=1))
    result = {"arm": arm["name"], "why": arm["why"], "dataset": ds, "synthetic": bool(info.get("synthetic")),
              "num_bins": q, "height": info["height"], "width": info["width"], "iterations": s["iterations"],
              "epochs": s["iterations"] / float(per_epoch),
              "train_seconds": s.get("wall_seconds") if reused else time.time() - t0,
              "images_per_second": s.get("images_per_second"), "decoding": arm["decoding"],
              "temperature": arm.get("temperature"), "deploy": deploy, "snapshots": {}}
    snaps = {"last": s["final_caffemodel"]}
    best = s.get("best") or {}
    if best.get("caffemodel"):
        snaps["best"] = best["caffemodel"]
        result["best_iteration"], result["best_val_loss"] = best.get("iteration"), best.get("val_loss")
    for which, model in snaps.items():
        ev = evaluate.evaluate(ds, deploy, model, os.path.join(adir, "eval-%s" % which), decoding=arm["decoding"],
                               temperature=arm.get("temperature"), progress=progress, figures_per_class=0,
                               limit=evaluate_limit)
        result["snapshots"][which] = snapshot_result(model, ev["table"])
    return with_relations(result)


def reuse_for_decoding(arm: Dict, base: Dict, out: str, progress: bool = True, evaluate_limit=None) -> Dict:
    from . import evaluate
    adir = os.path.join(out, "arms", arm["name"])
    result = dict(base, arm=arm["name"], why=arm["why"], decoding=arm["decoding"],
                  temperature=arm.get("temperature"), snapshots={})
    for which, snap in base["snapshots"].items():
        ev = evaluate.evaluate(base["dataset"], base["deploy"], snap["model"], os.path.join(adir, "eval-%s" % which),
                               decoding=arm["decoding"], temperature=arm.get("temperature"), progress=progress,
                               figures_per_class=0, limit=evaluate_limit)
        result["snapshots"][which] = snapshot_result(snap["model"], ev["table"])
    return with_relations(result)


def snapshot_result(model: str, table: List[Dict]) -> Dict:
    """One evaluated snapshot: its table, GS gain % and high-frequency ratio per class, the paper's relations."""
    rel = findings.relations(table)
    return {"model": model, "table": table,
            "gs_gain_percent": {c: v["gs_gain_percent"] for c, v in rel.items()},
            "hf_ratio": {c: v["hf_ratio"] for c, v in rel.items()},
            "reproduces": {k: v["status"] for k, v in findings.verdicts(table).items()}}


def shown_snapshot(r: Dict) -> str:
    """The snapshot an arm's headline numbers come from: the best where kept, else the last."""
    return "best" if "best" in r["snapshots"] else "last"


def with_relations(r: Dict) -> Dict:
    """Copy the shown snapshot's gs_gain_percent / hf_ratio / reproduces to the arm's top level (ablation.json)."""
    snap = r["snapshots"][shown_snapshot(r)]
    if "gs_gain_percent" not in snap:                     # an ablation.json written before these existed
        snap.update(snapshot_result(snap["model"], snap["table"]))
    return dict(r, snapshot_shown=shown_snapshot(r), gs_gain_percent=snap["gs_gain_percent"],
                hf_ratio=snap["hf_ratio"], reproduces=snap["reproduces"])


# -- the table ---------------------------------------------------------------------------------------

METRICS = (("tn", "RMS", "%.1f"), ("tn_ssim", "SSIM", "%.3f"), ("tn_psnr", "PSNR", "%.1f"),
           ("tn_rms_offset_free", "RMS (offset removed)", "%.1f"))
BASELINE_KEYS = ("mean_ir", "fitted_luminance")


def table_rows(results: List[Dict]) -> List[Dict]:
    """One flat row per (arm, snapshot, class) with every metric present in the evaluation."""
    rows = []
    for r in results:
        if r.get("skip"):
            rows.append({"arm": r["arm"], "snapshot": "", "object_class": "", "note": r["skip"]})
            continue
        for which, snap in sorted(r["snapshots"].items()):
            for t in snap["table"]:
                row = {"arm": r["arm"], "snapshot": which, "object_class": t["object_class"],
                       "iterations": r["iterations"], "epochs": round(r["epochs"], 2),
                       "best_iteration": r.get("best_iteration") if which == "best" else r["iterations"]}
                for k, v in t.items():
                    if k not in ("object_class",) and isinstance(v, (int, float)) and v is not None:
                        row[k] = v
                rows.append(row)
    return rows


BASELINE_ROWS = (("mean_ir", "mean training IR image"), ("fitted_luminance", "visible luminance fitted to IR"))


def _metric_cells(o: Dict, prefix: str, metric_cols) -> List[str]:
    cells = []
    for k, _, fmt in metric_cols:
        key = prefix + k[len("tn"):]
        cells.append((fmt % o[key]) if o.get(key) is not None else "—")
    return cells


def markdown(results: List[Dict], meta: Dict) -> str:
    """The ablation table: overall metrics per arm, snapshot and baseline, then RMS per class."""
    lines = ["# Ablation: %s" % meta["title"], "",
             "Data: %s. Budget: %s, batch %d, Adam %g, seed %d; every arm scored on the same %s held-out pairs. "
             "`best` = snapshot with the lowest validation loss (chosen on those same pairs, the kit's val_db: "
             "optimistic), `last` = end of the budget. Baselines are scored per dataset: an arm that changes the "
             "dataset (Q, mirror, size) has its own."
             % (meta["data"], meta["budget"], meta["batch"], meta["base_lr"], spec.SEED, meta["n_test"]),
             "", "Command: `%s`" % meta["command"], ""]
    if isinstance(meta.get("split"), dict) and meta["split"].get("source"):
        lines[-1:-1] = ["Split: %s." % meta["split"]["source"], ""]
    first = next((r for r in results if not r.get("skip")), None)
    if first is None:
        return "\n".join(lines + ["No arm ran."]) + "\n"
    overall = _row_metrics(first["snapshots"]["last"]["table"]).get("overall", {})
    metric_cols = [(k, label, fmt) for k, label, fmt in METRICS if k in overall]
    head = ["arm", "snapshot", "iteration", "epoch", "train min"] + [label for _, label, _ in metric_cols]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    shown_baselines: List[List[str]] = []
    for r in results:
        if r.get("skip"):
            lines.append("| %s | %s |" % (r["arm"], r["skip"]) + " |" * (len(head) - 2))
            continue
        per_epoch = r["iterations"] / r["epochs"] if r["epochs"] else None
        for which in ("best", "last"):
            if which not in r["snapshots"]:
                continue
            o = _row_metrics(r["snapshots"][which]["table"]).get("overall", {})
            it = r.get("best_iteration") if which == "best" else r["iterations"]
            ep = ("%.1f" % (it / per_epoch)) if (it is not None and per_epoch) else "—"
            minutes = ("%.1f" % (r["train_seconds"] / 60.0)) if which == "last" and r.get("train_seconds") else ""
            lines.append("| " + " | ".join([r["arm"], which, str(it), ep, minutes]
                                           + _metric_cells(o, "tn", metric_cols)) + " |")
        o = _row_metrics(r["snapshots"]["last"]["table"]).get("overall", {})
        base = [_metric_cells(o, key, metric_cols) for key, _ in BASELINE_ROWS if o.get(key) is not None]
        if base and (not shown_baselines or base != shown_baselines[-1]):    # a dataset with other baselines
            shown_baselines.append(base)
            for (key, label), cells in zip(BASELINE_ROWS, base):
                lines.append("| " + " | ".join(["*baseline: %s*" % label, "", "", "", ""] + cells) + " |")
    # per class, RMS (only classes the test pairs have)
    classes = [t["object_class"] for t in first["snapshots"]["last"]["table"] if t.get("tn") is not None]
    if len(classes) > 2:
        lines += ["", "RMS (eq. 2) per class, best snapshot where kept:", "",
                  "| arm | " + " | ".join(classes) + " |", "|---|" + "---|" * len(classes)]
        for r in results:
            if r.get("skip"):
                continue
            snap = r["snapshots"].get("best") or r["snapshots"]["last"]
            t = _row_metrics(snap["table"])
            lines.append("| %s | " % r["arm"] + " | ".join("%.1f" % t[c]["tn"] if c in t and t[c].get("tn") is not None
                                                          else "—" for c in classes) + " |")
        t = _row_metrics(first["snapshots"]["last"]["table"])
        for key, label in BASELINE_ROWS:
            lines.append("| *baseline: %s* | " % label + " | ".join(
                "%.1f" % t[c][key] if c in t and t[c].get(key) is not None else "—" for c in classes) + " |")
    return "\n".join(lines + [""] + relations_lines(results)) + "\n"


def _fmt(v, fmt: str) -> str:
    return "—" if v is None else fmt % v


def relations_lines(results: List[Dict]) -> List[str]:
    """Per arm: the paper's relations (thermalnet.findings) -- GS gain per class, high-frequency ratio, verdicts."""
    ran = [with_relations(r) for r in results if not r.get("skip")]
    if not ran:
        return []
    classes = findings.scored_classes(ran[0]["snapshots"][shown_snapshot(ran[0])]["table"])
    lo, hi = findings.GS_GAIN_RANGE
    paper = " / ".join("%.1f" % findings.PAPER_GS_GAIN[c] for c in classes if c in findings.PAPER_GS_GAIN)
    lines = ["The paper's relations per arm (best snapshot where kept; thermalnet.findings). GS gain = how much "
             "the 3x3 Gaussian lowers TN's RMS, %% (paper%s); HF = TN's high-frequency RMS over the real IR's (%s). "
             "Table 2 is reproduced when every class gains %g..%g %% (REPRODUCED in the GS column) and Sec. 5.1 "
             "when HF > %g in every class." % (" " + paper if paper else ": no paper class in these pairs",
                                                metrics.HIGH_FREQUENCY_FILTER, lo, hi, findings.HF_RATIO_MIN), "",
             "| arm | decoding | " + " | ".join("GS gain %s" % c for c in classes) + " | HF overall | GS gain "
             "in range | HF > 1 | class order |",
             "|---|---|" + "---:|" * (len(classes) + 1) + "---|---|---|"]
    for r in ran:
        rep = r["reproduces"]
        lines.append("| %s | %s | " % (r["arm"], decoding_name(r)) + " | ".join(
            _fmt(r["gs_gain_percent"].get(c), "%.1f") for c in classes) + " | %s | %s | %s | %s |" % (
            _fmt(r["hf_ratio"].get("overall"), "%.2f"), rep.get("gs_gain", "—"), rep.get("hf", "—"),
            rep.get("class_order", "—")))
    good = [r["arm"] for r in ran if r["reproduces"].get("gs_gain") == findings.REPRODUCED
            and r["reproduces"].get("hf") == findings.REPRODUCED]
    lines += ["", "Arms that give both relations (GS gain in range and HF > 1 in every class): %s."
              % (", ".join(good) if good else "none")]
    return lines


def decoding_name(r: Dict) -> str:
    return decoders.label(r["decoding"], r.get("temperature"))


def grid(results: List[Dict], out_png: str, n_images: int = GRID_IMAGES) -> Optional[str]:
    """One row per arm (its synthetic IR of the same test pairs), under the visible and real IR rows."""
    from thermalnet import baselines as bl, plots
    from thermalnet.inference import Predictor
    ran = [r for r in results if not r.get("skip")]
    models = [(r["snapshots"].get("best") or r["snapshots"]["last"])["model"] for r in ran]
    if not ran or not os.path.isdir(ran[0]["dataset"]) or not all(os.path.isfile(m) for m in models):
        return None                     # a saved ablation whose runs are gone: the tables are redrawn, not this
    plt = plots._plt()
    ds0 = ran[0]["dataset"]
    ids = [row["id"] for row in bl.read_manifest(ds0, "test")][:n_images]
    fig, axes = plt.subplots(len(ran) + 2, len(ids), figsize=(2.2 * len(ids), 1.8 * (len(ran) + 2)), squeeze=False)
    for j, iid in enumerate(ids):
        vis, ir = bl.load_test_pair(ds0, iid)
        axes[0][j].imshow(vis)
        axes[1][j].imshow(ir, cmap="inferno", vmin=0, vmax=255)
    axes[0][0].set_ylabel("visible", fontsize=8)
    axes[1][0].set_ylabel("real IR", fontsize=8)
    for i, r in enumerate(ran):
        snap = r["snapshots"].get("best") or r["snapshots"]["last"]
        info = layout.read_dataset_info(r["dataset"])
        pred = Predictor(r["deploy"], snap["model"], mean_file=os.path.join(r["dataset"], layout.TRAIN_DB,
                                                                             layout.MEAN_FILE))
        weights = layout.read_class_weights(r["dataset"], int(info["num_bins"])) if r["decoding"] == "mmse" else None
        for j, iid in enumerate(ids):
            vis, ir = bl.load_test_pair(r["dataset"], iid)
            tn = pred.predict_brightness([vis], r["decoding"], r.get("temperature"), class_weights=weights,
                                         rng=np.random.default_rng(decoders.SAMPLE_SEED))[0]
            axes[i + 2][j].imshow(np.clip(tn, 0, 255), cmap="inferno", vmin=0, vmax=255)
        axes[i + 2][0].set_ylabel(r["arm"], fontsize=8)
    for row in axes:
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
    synthetic = bool(layout.read_dataset_info(ds0).get("synthetic"))
    fig.suptitle("Ablation arms on the same test pairs (%s)" % ("SYNTHETIC data" if synthetic else "real pairs"),
                 fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))
    return plots._save(fig, out_png)


def ablate(pairs: str, out: str, arms: Sequence[str], iterations: Optional[int] = DEFAULT_ITERATIONS,
           minutes: Optional[float] = None, batch: int = DEFAULT_BATCH, base_lr: float = DEFAULT_BASE_LR,
           imagenet: Optional[str] = None, title: str = "", progress: bool = True, command: str = "",
           evaluate_limit: Optional[int] = None, split: str = "auto") -> Dict:
    """Run every arm; write ablation.md/.csv/.json and grid.png into `out`; return the JSON's dict."""
    from thermalnet.atomic import write_text
    from thermalnet import nets
    if not iterations and not minutes:
        raise ValueError("give a budget: iterations or minutes")
    plan = plan_arms(arms, imagenet)
    default = nets.network(spec.DEFAULT_BASE)
    os.makedirs(out, exist_ok=True)
    results: List[Dict] = []
    by_name: Dict[str, Dict] = {}
    for arm in plan:
        print("[ablate] arm %s: %s" % (arm["name"], arm["why"]), flush=True)
        if arm.get("skip"):
            results.append({"arm": arm["name"], "why": arm["why"], "skip": arm["skip"]})
            continue
        if arm.get("reuse"):
            base = by_name.get(arm["reuse"])
            if base is None:
                results.append({"arm": arm["name"], "why": arm["why"],
                                "skip": "not run: needs the %s arm in the same run" % arm["reuse"]})
                continue
            r = reuse_for_decoding(arm, base, out, progress, evaluate_limit)
        else:
            r = run_arm(arm, pairs, out, iterations, minutes, batch, base_lr, default.net, default.deploy,
                        progress, evaluate_limit, split)
        by_name[arm["name"]] = r
        results.append(r)
        write_text(os.path.join(out, "ablation.json"), json.dumps({"results": results}, indent=1))
    first = next((r for r in results if not r.get("skip")), None)
    n_test = 0
    if first is not None:
        n_test = int(layout.read_dataset_info(first["dataset"])["counts"]["test"])
    synthetic = bool(first and first["synthetic"])
    meta = {"title": title or os.path.basename(os.path.abspath(pairs)),
            "data": ("SYNTHETIC pairs from dataset_builder.synthetic (%s)" if synthetic else "real pairs (%s)")
            % os.path.basename(os.path.abspath(pairs)),
            "budget": ("%d iterations" % iterations) if iterations else ("%g minutes" % minutes),
            "batch": batch, "base_lr": base_lr, "n_test": evaluate_limit or n_test, "command": command,
            "split": layout.read_dataset_info(first["dataset"]).get("split") if first is not None else None}
    doc = write_outputs(out, results, meta)
    print(doc["markdown"])
    return doc


def write_outputs(out: str, results: List[Dict], meta: Dict) -> Dict:
    """ablation.md, .csv, grid.png and ablation.json (with meta) from the arms' results."""
    from thermalnet.atomic import write_text
    results = [r if r.get("skip") else with_relations(r) for r in results]
    md = markdown(results, meta)
    rows = table_rows(results)
    fields: List[str] = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    write_text(os.path.join(out, "ablation.csv"), buf.getvalue())
    write_text(os.path.join(out, "ablation.md"), md)
    png = grid(results, os.path.join(out, "grid.png"))
    if png is None and os.path.isfile(os.path.join(out, "grid.png")):
        png = os.path.join(out, "grid.png")                 # drawn when the models existed
    doc = {"meta": meta, "results": results, "grid": png}
    write_text(os.path.join(out, "ablation.json"), json.dumps(doc, indent=1))
    return dict(doc, markdown=md)


def rerender(out: str) -> Dict:
    """Write the table, CSV and grid again from a finished ablation.json (no training, no evaluation)."""
    path = os.path.join(out, "ablation.json")
    if not os.path.isfile(path):
        raise ValueError("%s: no ablation.json to render" % out)
    doc = layout.read_json(path)
    if not isinstance(doc, dict) or "meta" not in doc:
        raise ValueError("%s: the ablation did not finish (no meta); rerun it: finished arms are reused" % path)
    return write_outputs(out, doc["results"], doc["meta"])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools.ablate",
                                description="Train each ablation arm for the same budget on datasets built from the "
                                            "same pairs (same seed and split); write ablation.md/.csv/.json and "
                                            "grid.png (one row of synthetic IR per arm).")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--pairs", help="folder of aligned pairs (any layout dataset_builder reads)")
    src.add_argument("--report-only", action="store_true",
                     help="only write the table, CSV and grid again from OUT/ablation.json")
    src.add_argument("--synthetic", type=int, metavar="COUNT",
                     help="SYNTHETIC pairs from dataset_builder.synthetic (cached like the demo's)")
    p.add_argument("--out", required=True, help="output folder, e.g. runs/ablate/NAME")
    p.add_argument("--arms", default="default", help="comma-separated: %s" % ", ".join(ARMS))
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--iterations", type=int, help="training iterations per arm (default %d)"
                        % DEFAULT_ITERATIONS)
    budget.add_argument("--minutes", type=float, help="wall-clock minutes per arm instead of iterations")
    cli.add_batch_size(p, DEFAULT_BATCH)
    p.add_argument("--base-lr", type=float, default=DEFAULT_BASE_LR, help="Adam learning rate (default %g)"
                   % DEFAULT_BASE_LR)
    p.add_argument("--imagenet", help="ImageNet SqueezeNet v1.1 caffemodel for the imagenet arm")
    p.add_argument("--limit", type=int, help="evaluate only the first N test pairs (quick checks)")
    from dataset_builder import splits
    p.add_argument("--split", choices=splits.SPLIT_MODES, default="auto",
                   help="how the pairs are split (dataset_builder build --split; default auto: the split the "
                        "pairs carry, else the paper's; random: whole sequences of frames)")
    cli.add_quiet(p)
    return p


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    return cli.run(lambda: _main(a, argv), outputs=[a.out])


def _main(a, argv) -> None:
    arms = [x.strip() for x in a.arms.split(",") if x.strip()]
    pairs = a.pairs
    if a.report_only:
        print(rerender(a.out)["markdown"])
        return
    if a.imagenet:
        # Checked before any dataset is built or arm trained (Caffe would abort on a foreign file).
        from thermalnet import nets
        nets.check_weights(a.imagenet, nets.network(spec.DEFAULT_BASE).net)
    if a.synthetic:
        from dataset_builder.synthetic import generate
        pairs = os.path.join(a.out, "pairs-synthetic-%d" % a.synthetic)
        if not os.path.isdir(pairs):
            generate(pairs, a.synthetic, spec.SEED, progress=not a.quiet)
    if not os.path.isdir(pairs):
        raise ValueError("%s: no such pairs folder" % pairs)
    iterations = None if a.minutes else (a.iterations or DEFAULT_ITERATIONS)
    ablate(pairs, a.out, arms, iterations, a.minutes, a.batch_size, a.base_lr, a.imagenet,
           progress=not a.quiet, command="python -m tools.ablate " + " ".join(argv or sys.argv[1:]),
           evaluate_limit=a.limit, split=a.split)


if __name__ == "__main__":
    sys.exit(main())
