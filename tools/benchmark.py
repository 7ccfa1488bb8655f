"""`make bench`: throughput ratios measured in ONE run on this machine, printed with targets.

All inference numbers use RANDOM weights (He-initialised; speed does not depend on
the weights) and all training numbers a SYNTHETIC random dataset, so nothing here
says anything about accuracy. Measured, in one process, one after the other:

  1. OpenCV DNN vs pycaffe inference (img/s, same deploy net and preprocessed
     batches), and the max |difference| of their probabilities;
  2. achieved GFLOP/s of each back-end (convolution + deconvolution multiply-adds x 2,
     counted from the net's blob shapes) against numpy sgemm GFLOP/s;
  3. the pycaffe training loop (solver.step on the materialised train net) against
     `caffe time` forward+backward of the same net and batch;
  4. the dataset builder's rate (dataset_builder.bench.run, when present) against the
     rate training consumes images.

Timings are wall-clock on a possibly shared machine: rerun before trusting a ratio
near its target. About 1.5 minutes on 2 cores (--quick: about 15 s).
Each pair is measured alternately and the best round of each is compared.

Targets (printed as met / NOT met; this is a report, not a test):
  OpenCV DNN >= 10x pycaffe with |diff| < 1e-4, and >= 40% of sgemm GFLOP/s;
  training loop within 5% of `caffe time`; dataset building >= 5x training consumption.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from typing import Dict, Optional

import numpy as np

from dataset_builder import spec
from dataset_builder.caffe_env import PROTOTXT_DIR

FB_RE = re.compile(r"Average Forward-Backward:\s*([0-9.eE+-]+)\s*ms")


def deploy_path(base: str) -> str:
    return os.path.join(PROTOTXT_DIR, "thermalnet_%s_deploy.prototxt" % base)


def train_path(base: str) -> str:
    return os.path.join(PROTOTXT_DIR, "thermalnet_%s.prototxt" % base)


# -- FLOPs --------------------------------------------------------------------------
def conv_flops(net) -> Dict[str, int]:
    """FLOPs per forward of each Convolution/Deconvolution layer: 2 x multiply-adds.

    Convolution: each top element costs (C_in/group) * kh * kw MACs = weight.size / C_out.
    Deconvolution: each bottom element is spread over (C_out/group) * kh * kw outputs,
    = weight.size / C_in MACs (Caffe stores deconv weights as C_in x C_out/group x kh x kw).
    """
    out = {}
    for name, layer in zip(net._layer_names, net.layers):
        if layer.type not in ("Convolution", "Deconvolution"):
            continue
        w = net.params[name][0].data
        per = w.size // w.shape[0]
        ref = net.top_names[name][0] if layer.type == "Convolution" else net.bottom_names[name][0]
        out[name] = 2 * int(net.blobs[ref].data.size) * int(per)
    return out


def net_flops(deploy: str, height: int, width: int, batch: int = 1) -> int:
    """Total conv+deconv FLOPs of one forward of a deploy net at (batch, 3, H, W)."""
    from dataset_builder.caffe_env import import_caffe
    caffe = import_caffe()
    caffe.set_mode_cpu()
    net = caffe.Net(deploy, caffe.TEST)
    name = list(net.inputs)[0] if list(net.inputs) else "data"
    net.blobs[name].reshape(batch, 3, height, width)
    net.reshape()
    return sum(conv_flops(net).values())


# -- measurements -----------------------------------------------------------------------
def sgemm_gflops(n: int = 1024, min_seconds: float = 1.0) -> float:
    """numpy float32 matrix product GFLOP/s (2 n^3 per product), best of a timed loop."""
    rng = np.random.RandomState(0)
    a = rng.rand(n, n).astype(np.float32)
    b = rng.rand(n, n).astype(np.float32)
    a @ b  # warm-up: thread pool start
    best, total, t_end = float("inf"), 0.0, time.perf_counter() + min_seconds
    while time.perf_counter() < t_end or total == 0:
        t0 = time.perf_counter()
        a @ b
        dt = time.perf_counter() - t0
        best, total = min(best, dt), total + dt
    return 2.0 * n ** 3 / best / 1e9


def _time_predict(pred, images) -> float:
    t0 = time.perf_counter()
    pred.predict_probs(images)
    return len(images) / (time.perf_counter() - t0)


def bench_inference(base: str, height: int, width: int, n_images: int, batch: int, repeats: int,
                    workdir: str) -> dict:
    """OpenCV DNN vs pycaffe on one deploy net with random weights."""
    from tools.inference import Predictor, random_caffemodel
    deploy = deploy_path(base)
    if not os.path.isfile(deploy):
        return {"skipped": "%s missing" % os.path.basename(deploy)}
    weights = random_caffemodel(deploy, os.path.join(workdir, "random_%s.caffemodel" % base), seed=spec.SEED)
    rng = np.random.RandomState(spec.SEED)
    images = [rng.randint(0, 256, size=(height, width, 3)).astype(np.uint8) for _ in range(n_images)]
    mean = rng.uniform(90, 130, size=(3, height, width)).astype(np.float32)
    res = {"net": os.path.basename(deploy), "weights": "RANDOM", "height": height, "width": width,
           "images": n_images, "batch": batch, "repeats": repeats}
    preds = {b: Predictor(deploy, weights, mean_file=mean, backend=b, batch_size=batch)
             for b in ("pycaffe", "opencv")}
    probs = {b: p.predict_probs(images) for b, p in preds.items()}
    res["max_abs_diff"] = float(max(np.abs(a - b).max() for a, b in zip(probs["pycaffe"], probs["opencv"])))
    flops = net_flops(deploy, height, width)
    res["gflop_per_image"] = flops / 1e9
    # Alternate the back-ends and keep each one's best round: on a shared machine the
    # best round is the one least disturbed by other work, for both alike.
    best = {b: 0.0 for b in preds}
    for _ in range(repeats):
        for b, p in preds.items():
            best[b] = max(best[b], _time_predict(p, images))
    for b, ips in best.items():
        res["%s_img_per_s" % b] = ips
        res["%s_gflops" % b] = ips * flops / 1e9
    res["opencv_speedup"] = res["opencv_img_per_s"] / res["pycaffe_img_per_s"]
    return res


def _solver_text(net_path: str) -> str:
    # Only the train stage (no val passes, no snapshots): the loop measured is forward,
    # backward and update, as tools/train.py runs it (solver.step(1) per iteration).
    return ('net: "%s"\ntrain_state { stage: "train" }\ntest_interval: 100000000\ntest_initialization: false\n'
            'type: "Adam"\nbase_lr: 0.0001\nlr_policy: "fixed"\nmomentum: 0.9\nmomentum2: 0.999\n'
            'weight_decay: 0.000001\nmax_iter: 100000000\ndisplay: 0\nsnapshot: 0\nsnapshot_prefix: "bench"\n'
            'solver_mode: CPU\nrandom_seed: %d\n' % (net_path, spec.SEED))


def synthetic_dataset(root: str, n_train: int, n_val: int, height: int, width: int) -> str:
    """A SYNTHETIC random dataset in the kit's layout: just enough for a Data layer and the loss."""
    from dataset_builder.lmdb_io import LmdbWriter, write_mean_binaryproto
    rng = np.random.RandomState(spec.SEED)
    labels_all = []
    for split, n in ((spec.TRAIN_DB, n_train), (spec.VAL_DB, n_val)):
        x = rng.randint(0, 256, size=(n, 3, height, width)).astype(np.uint8)
        y = rng.randint(0, spec.NUM_BINS, size=(n, 1, height, width)).astype(np.uint8)
        with LmdbWriter(os.path.join(root, split, spec.FEATURES)) as fw, \
                LmdbWriter(os.path.join(root, split, spec.LABELS)) as lw:
            for i in range(n):
                fw.put(x[i])
                lw.put(y[i])
        if split == spec.TRAIN_DB:
            write_mean_binaryproto(x.mean(axis=0), os.path.join(root, split, spec.MEAN_FILE))
            labels_all = y
    prior = spec.class_prior(labels_all)
    np.savetxt(os.path.join(root, spec.CLASS_PRIOR_FILE), prior, fmt="%.8f")
    np.savetxt(os.path.join(root, spec.CLASS_WEIGHTS_FILE), spec.rebalance_weights(prior), fmt="%.8f")
    with open(os.path.join(root, spec.DATASET_INFO_FILE), "w") as f:
        json.dump({"synthetic": True, "note": "SYNTHETIC random benchmark data", "num_bins": spec.NUM_BINS,
                   "height": height, "width": width, "window_mode": "fixed", "window": [15.0, 45.0],
                   "lambda": spec.REBALANCE_LAMBDA, "counts": {"train": n_train, "test": n_val, "skipped": 0},
                   "object_classes": list(spec.OBJECT_CLASSES)}, f, indent=1)
    return root


def bench_training(base: str, height: int, width: int, iterations: int, batch: int, workdir: str,
                   rounds: int = 2) -> dict:
    """pycaffe solver.step img/s vs `caffe time` on the same materialised train net (SYNTHETIC data)."""
    try:
        from tools import nets
    except ImportError as exc:
        return {"skipped": "tools.nets not importable (%s)" % exc}
    net_src = train_path(base)
    if not os.path.isfile(net_src):
        return {"skipped": "%s missing" % os.path.basename(net_src)}
    from dataset_builder.caffe_env import caffe_tool, import_caffe, python_layer_env
    ds = synthetic_dataset(os.path.join(workdir, "synthetic_ds"), n_train=16, n_val=4, height=height, width=width)
    net_path = os.path.join(workdir, "train_%s.prototxt" % base)
    nets.materialize(net_src, ds, net_path, batch_size=batch)
    solver_path = os.path.join(workdir, "solver.prototxt")
    with open(solver_path, "w") as f:
        f.write(_solver_text(net_path))
    res = {"net": os.path.basename(net_src), "data": "SYNTHETIC random", "height": height, "width": width,
           "batch": batch, "iterations": iterations, "rounds": rounds}

    env = python_layer_env()
    env.update(THERMALNET_DATASET=ds, GLOG_logtostderr="1", GLOG_minloglevel="0")
    cmd = [caffe_tool(), "time", "-model", net_path, "-phase", "TRAIN", "-stage", "train",
           "-iterations", str(iterations)]
    old_cwd, old_env = os.getcwd(), os.environ.get("THERMALNET_DATASET")
    os.environ["THERMALNET_DATASET"] = ds
    os.chdir(ds)
    loop, tool = [], []
    try:
        caffe = import_caffe()
        caffe.set_mode_cpu()
        solver = caffe.get_solver(solver_path)
        solver.step(2)                                      # warm-up: prefetch, allocation
        # Alternate the two (best round of each counts), as for inference above.
        for _ in range(rounds):
            t0 = time.perf_counter()
            for _ in range(iterations):
                solver.step(1)
            loop.append(iterations * batch / (time.perf_counter() - t0))
            proc = subprocess.run(cmd, cwd=ds, env=env, capture_output=True, text=True)
            m = FB_RE.search(proc.stderr + proc.stdout)
            if proc.returncode != 0 or not m:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
                res["caffe_time_error"] = "caffe time exited %d: %s" % (proc.returncode, " | ".join(tail))
                break
            tool.append(float(m.group(1)))
        del solver
    finally:
        os.chdir(old_cwd)
        if old_env is None:
            os.environ.pop("THERMALNET_DATASET", None)
        else:
            os.environ["THERMALNET_DATASET"] = old_env
    res["pycaffe_img_per_s"] = max(loop)
    if tool:
        res["caffe_time_fb_ms"] = min(tool)
        res["caffe_time_img_per_s"] = batch / (min(tool) / 1000.0)
        res["loop_vs_caffe_time"] = res["pycaffe_img_per_s"] / res["caffe_time_img_per_s"]
    return res


def bench_dataset(quick: bool) -> dict:
    """The dataset builder's own benchmark, if it provides one."""
    try:
        from dataset_builder import bench
    except ImportError:
        return {"skipped": "dataset_builder.bench not present"}
    try:
        out = bench.run(quick=quick)
    except TypeError:
        out = bench.run()
    if isinstance(out, (int, float)):
        return {"img_per_s": float(out)}
    rate = next((out[k] for k in ("img_per_s", "images_per_s", "rate") if k in out), None)
    res = dict(out)
    if rate is None:
        res["skipped"] = "dataset_builder.bench.run() returned no img_per_s"
    else:
        res["img_per_s"] = float(rate)
    return res


# -- report -------------------------------------------------------------------------
def targets(results: dict) -> list:
    """(name, measured, target text, met) for each target whose inputs were measured."""
    out = []
    inf, tr, ds = results.get("inference", {}), results.get("training", {}), results.get("dataset", {})
    if "opencv_speedup" in inf:
        out.append(("OpenCV DNN / pycaffe throughput", inf["opencv_speedup"], ">= 10x",
                    inf["opencv_speedup"] >= 10.0))
        out.append(("max |OpenCV - pycaffe| of probs", inf["max_abs_diff"], "< 1e-4", inf["max_abs_diff"] < 1e-4))
        frac = inf["opencv_gflops"] / results["sgemm_gflops"]
        out.append(("OpenCV DNN GFLOP/s / numpy sgemm GFLOP/s", frac, ">= 0.40", frac >= 0.40))
    if "loop_vs_caffe_time" in tr:
        r = tr["loop_vs_caffe_time"]
        out.append(("pycaffe training loop / caffe time (img/s)", r, ">= 0.95", r >= 0.95))
    if "img_per_s" in ds and "pycaffe_img_per_s" in tr:
        r = ds["img_per_s"] / tr["pycaffe_img_per_s"]
        out.append(("dataset build rate / training consumption", r, ">= 5x", r >= 5.0))
    return out


def run(quick: bool = False, infer_base: str = spec.PAPER_BASE, train_base: str = spec.DEFAULT_BASE,
        log=print) -> dict:
    """All measurements in one process; returns the results dict (also what --json writes)."""
    import cv2
    results = {"quick": quick, "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                           "opencv": cv2.__version__, "opencv_threads": cv2.getNumThreads(),
                                           "numpy": np.__version__},
               "note": "RANDOM weights and SYNTHETIC data: speed only, no accuracy"}
    with tempfile.TemporaryDirectory(prefix="thermalnet-bench-") as work:
        log("[bench] numpy sgemm ...")
        results["sgemm_gflops"] = sgemm_gflops(512 if quick else 1024, 0.5 if quick else 1.5)
        log("[bench] inference %s at %dx%d ..." % (infer_base, spec.PAPER_HEIGHT, spec.PAPER_WIDTH))
        results["inference"] = bench_inference(infer_base, spec.PAPER_HEIGHT, spec.PAPER_WIDTH,
                                               n_images=2 if quick else 8, batch=1 if quick else 4,
                                               repeats=1 if quick else 4, workdir=work)
        # sgemm again right after, best of both: its peak is the fair reference
        results["sgemm_gflops"] = max(results["sgemm_gflops"], sgemm_gflops(512 if quick else 1024, 0.5))
        log("[bench] training loop %s at %dx%d ..." % (train_base, spec.DEFAULT_HEIGHT, spec.DEFAULT_WIDTH))
        results["training"] = bench_training(train_base, spec.DEFAULT_HEIGHT, spec.DEFAULT_WIDTH,
                                             iterations=2 if quick else 8, batch=8, workdir=work,
                                             rounds=1 if quick else 2)
        log("[bench] dataset build rate ...")
        results["dataset"] = bench_dataset(quick)
    results["targets"] = [{"name": n, "measured": v, "target": t, "met": bool(m)} for n, v, t, m in targets(results)]
    return results


def format_report(results: dict) -> str:
    lines = ["Thermalnet kit benchmark (%s; %s)" % ("quick" if results["quick"] else "full", results["note"]),
             "  machine: %(cpus)s CPUs, OpenCV %(opencv)s (%(opencv_threads)s threads), numpy %(numpy)s"
             % results["machine"],
             "  numpy sgemm: %.1f GFLOP/s" % results["sgemm_gflops"]]
    inf = results["inference"]
    if "skipped" in inf:
        lines.append("  inference: not run (%s)" % inf["skipped"])
    else:
        lines.append("  inference %s %dx%d, %.2f GFLOP/image: pycaffe %.2f img/s (%.1f GFLOP/s), "
                     "OpenCV DNN %.2f img/s (%.1f GFLOP/s), max|diff| %.2e"
                     % (inf["net"], inf["height"], inf["width"], inf["gflop_per_image"], inf["pycaffe_img_per_s"],
                        inf["pycaffe_gflops"], inf["opencv_img_per_s"], inf["opencv_gflops"], inf["max_abs_diff"]))
    tr = results["training"]
    if "skipped" in tr:
        lines.append("  training: not run (%s)" % tr["skipped"])
    else:
        lines.append("  training %s %dx%d batch %d: pycaffe loop %.2f img/s" % (
            tr["net"], tr["height"], tr["width"], tr["batch"], tr["pycaffe_img_per_s"]))
        if "caffe_time_img_per_s" in tr:
            lines.append("    caffe time: %.1f ms forward-backward = %.2f img/s"
                         % (tr["caffe_time_fb_ms"], tr["caffe_time_img_per_s"]))
        else:
            lines.append("    caffe time: failed (%s)" % tr.get("caffe_time_error"))
    ds = results["dataset"]
    lines.append("  dataset build: %s" % ("not run (%s)" % ds["skipped"] if "skipped" in ds
                                          else "%.2f img/s" % ds["img_per_s"]))
    lines.append("Targets:")
    for t in results["targets"]:
        lines.append("  %-45s %10.4g  (target %s)  %s" % (t["name"], t["measured"], t["target"],
                                                         "met" if t["met"] else "NOT met"))
    if not results["targets"]:
        lines.append("  none measured")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.benchmark", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer images and iterations (about 15 s)")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--infer-base", default=spec.PAPER_BASE, help="deploy net for the inference comparison")
    p.add_argument("--train-base", default=spec.DEFAULT_BASE, help="train net for the training-loop comparison")
    args = p.parse_args(argv)
    results = run(quick=args.quick, infer_base=args.infer_base, train_base=args.train_base,
                  log=lambda m: print(m, file=sys.stderr))
    print(format_report(results))
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(results, f, indent=1)
        os.replace(tmp, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
