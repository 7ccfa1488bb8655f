"""`make bench`: speed ratios measured in ONE run on this machine, printed with targets
and saved as JSON (default runs/bench/bench.json) with the machine and date.

All inference numbers use RANDOM weights (He-initialised; speed does not depend on the
weights) and all training numbers a SYNTHETIC random dataset: nothing here says anything
about accuracy. Measured in one process, one after the other:

  1. numpy sgemm GFLOP/s: the machine's reference;
  2. inference at 240x320 (the paper's size) and 640x480 (a typical visible photo):
     img/s of every back-end (pycaffe, OpenCV DNN, ONNX Runtime; and OpenCV running its
     own Softmax, the previous way), their GFLOP/s (convolution + deconvolution
     multiply-adds x 2) as a share of sgemm, max |prob - pycaffe prob|; the ONNX export
     verified against pycaffe; the best back-end's time for 10,000 images at 640x480;
  3. the training step before and after the speed-up, side by side: the old eq. 1 layer
     (tools/bench_old_loss.py) with Caffe's own code at every switch of the kit's
     patches (caffe_env.KIT_PATCH_ENVS all "0") against the current layer with
     every switch on (tools/caffe/patches), as the pycaffe solver loop (what tools.train
     runs) and as `caffe time` forward-backward, with the per-layer breakdown of both;
  4. the pycaffe training loop against `caffe time` of the same net and batch;
  5. the dataset builder: read_rgb (libspng / OpenCV) against PIL per 640x480 image, PNG and JPEG;
     SYNTHETIC generation;
     the build rate (pairs/s, pool start included) from the demo's cached SYNTHETIC pairs
     as PNG (what the generator writes), the same pairs with JPEG visible images (camera
     pairs), and as many FLIR radiometric JPEGs (the kit's samples copied); LMDB writing alone;
     each build rate against training consumption (the pycaffe loop's img/s).

Timings are wall-clock on a possibly shared machine: each pair is measured alternately,
several rounds, and the best round of each is compared (the least disturbed one). Training:
old and new one after the other in every round, the order swapped each round; the ratio
within each round is printed too (median, min-max): under load it is lower than the
best rounds' ratio. The load average before and after is saved with the numbers. About
3 minutes on 2 cores (--quick: under a minute).

Targets (printed as met / NOT met; a report, not a test): training step >= 2x the old
one; training loop >= 0.95 of `caffe time`; best inference back-end >= 50% of sgemm
GFLOP/s at each size with max |diff| < 1e-4; ONNX export within 1e-4 of pycaffe;
dataset building >= 5x training consumption (for each kind of input).

`python -m tools.benchmark --only dataset` runs part 5 alone.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

import numpy as np

from thermalnet import nets, spec
from thermalnet.atomic import write_json as _write_json
from thermalnet.caffe_env import KIT_PATCH_ENVS, REPO_ROOT, caffe_lib_patches

FB_RE = re.compile(r"Average Forward-Backward:\s*([0-9.eE+-]+)\s*ms")
LAYER_RE = re.compile(r"\]\s+(\S+)\s+(forward|backward):\s*([0-9.eE+-]+)\s*ms")
DEFAULT_JSON = os.path.join("runs", "bench", "bench.json")
INFER_SIZES = ((spec.PAPER_HEIGHT, spec.PAPER_WIDTH), (480, 640))
TYPICAL_SIZE = (480, 640)           # a visible photo: the size augmentation mostly sees
AUGMENT_COUNT = 10000
OLD_LOSS_MODULE = "tools.bench_old_loss"
LOSS_MODULE = nets.LOSS_MODULE
OLD_CAFFE_ENV = {var: "0" for var in KIT_PATCH_ENVS}   # Caffe's original code at every switch
NEW_CAFFE_ENV = {var: "1" for var in KIT_PATCH_ENVS}
BACKENDS = ("pycaffe", "opencv", "onnxruntime")
PARTS = ("inference", "training", "dataset")
DECODE_IMAGES = 40                  # images timed per reader (read_rgb vs PIL)
JPEG_QUALITY = 95                   # the visible images of the JPEG pairs (a camera's setting)
FLIR_WITH_PHOTO = ("flir_one_mug.jpg", "flir_ax8.jpg", "flir_b60_aqua_tower.jpg")
LMDB_PAIRS = 1000
GENERATE_PAIRS = 40                 # SYNTHETIC pairs rendered for the generator's rate


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
    from thermalnet.caffe_env import import_caffe
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


def bench_inference(base: str, sizes, n_images: int, batch: int, repeats: int, workdir: str) -> dict:
    """Every back-end on one deploy net with random weights, at each size; ONNX export checked."""
    from thermalnet import onnx_export
    from thermalnet.inference import Predictor, random_caffemodel
    deploy = nets.network(base).deploy
    if not os.path.isfile(deploy):
        return {"skipped": "%s missing" % os.path.basename(deploy)}
    weights = random_caffemodel(deploy, os.path.join(workdir, "random_%s.caffemodel" % base), seed=spec.SEED)
    onnx_path = os.path.join(workdir, "random_%s.onnx" % base)
    res = {"net": os.path.basename(deploy), "weights": "RANDOM", "images": n_images, "batch": batch,
           "repeats": repeats, "sizes": []}
    try:
        res["onnx_max_abs_diff"] = onnx_export.export(deploy, weights, onnx_path, log=lambda m: None)
    except Exception as exc:  # noqa: BLE001 -- reported, not raised: the other numbers still count
        res["onnx_error"] = str(exc).splitlines()[0]
    rng = np.random.RandomState(spec.SEED)
    for height, width in sizes:
        images = [rng.randint(0, 256, size=(height, width, 3)).astype(np.uint8) for _ in range(n_images)]
        mean = rng.uniform(90, 130, size=(3, height, width)).astype(np.float32)
        preds = {}
        for b in BACKENDS:
            if b == "onnxruntime" and "onnx_error" in res:
                continue
            model = onnx_path if b == "onnxruntime" else weights
            preds[b] = Predictor(None if b == "onnxruntime" else deploy, model, mean_file=mean, backend=b,
                                 batch_size=batch)
        # The previous OpenCV path: the whole net in OpenCV, its own Softmax included.
        preds["opencv_own_softmax"] = Predictor(deploy, weights, mean_file=mean, backend="opencv", batch_size=batch)
        preds["opencv_own_softmax"].backend.scores_layer = None
        probs = {b: p.predict_probs(images) for b, p in preds.items()}
        flops = net_flops(deploy, height, width)
        row = {"height": height, "width": width, "gflop_per_image": flops / 1e9, "backends": {}}
        best = {b: 0.0 for b in preds}
        for _ in range(repeats):          # alternate; each back-end's best round counts
            for b, p in preds.items():
                best[b] = max(best[b], _time_predict(p, images))
        for b, ips in best.items():
            diff = max(float(np.abs(x - y).max()) for x, y in zip(probs["pycaffe"], probs[b]))
            row["backends"][b] = {"img_per_s": ips, "gflops": ips * flops / 1e9, "max_abs_diff": diff}
        res["sizes"].append(row)
    return res


def parse_layer_times(text: str) -> Dict[str, float]:
    """`caffe time` output -> {layer: forward + backward ms}."""
    out: Dict[str, float] = {}
    for name, _, ms in LAYER_RE.findall(text):
        out[name] = out.get(name, 0.0) + float(ms)
    return out


def _copy_net_with_module(src: str, dst: str, module: str) -> None:
    with open(src) as f:
        text = f.read()
    if 'module: "%s"' % LOSS_MODULE not in text:
        raise ValueError("%s: no python_param module %s to swap for the reference layer" % (src, LOSS_MODULE))
    with open(dst, "w") as f:
        f.write(text.replace('module: "%s"' % LOSS_MODULE, 'module: "%s"' % module))


def bench_training(base: str, height: int, width: int, iterations: int, batch: int, workdir: str,
                   rounds: int = 3) -> dict:
    """Old vs new training step (pycaffe loop and `caffe time`) on SYNTHETIC data, and loop / caffe time."""
    net_src = nets.network(base).net
    if not os.path.isfile(net_src):
        return {"skipped": "%s missing" % os.path.basename(net_src)}
    from thermalnet.caffe_env import caffe_tool, import_caffe, python_layer_env
    caffe = import_caffe()
    caffe.set_mode_cpu()
    res = {"net": os.path.basename(net_src), "data": "SYNTHETIC random", "height": height, "width": width,
           "batch": batch, "iterations": iterations, "rounds": rounds,
           "caffe_patches": caffe_lib_patches()}
    # Two copies of the demo's small cached SYNTHETIC dataset: rc3's DataReader deadlocks two
    # nets on one LMDB + layer name.
    from . import demo
    cached = demo.synthetic_dataset(demo.QUICK_COUNT, height=height, width=width, progress=False)
    setups = {}
    for which in ("old", "new"):
        ds = os.path.join(workdir, "ds_" + which)
        shutil.copytree(cached, ds)
        net_path = os.path.join(workdir, "train_%s_%s.prototxt" % (base, which))
        nets.materialize(net_src, ds, net_path, batch_size=batch)
        if which == "old":
            _copy_net_with_module(net_path, net_path, OLD_LOSS_MODULE)
        solver_path = os.path.join(workdir, "solver_%s.prototxt" % which)
        with open(solver_path, "w") as f:
            f.write(_solver_text(net_path))
        env = python_layer_env()
        env["PYTHONPATH"] = os.pathsep.join([REPO_ROOT, env.get("PYTHONPATH", "")])
        env.update(THERMALNET_DATASET=ds, GLOG_logtostderr="1", GLOG_minloglevel="0")
        env.update(OLD_CAFFE_ENV if which == "old" else NEW_CAFFE_ENV)
        setups[which] = {"ds": ds, "net": net_path, "solver": solver_path, "env": env}

    old_env = {k: os.environ.get(k) for k in ("THERMALNET_DATASET",) + tuple(OLD_CAFFE_ENV)}
    old_cwd = os.getcwd()
    loop = {"old": [], "new": []}
    fb = {"old": [], "new": []}
    tool = {"old": [], "new": []}
    layers = {"old": {}, "new": {}}
    try:
        solvers = {}
        for which, s in setups.items():
            os.environ["THERMALNET_DATASET"] = s["ds"]
            os.environ.update(OLD_CAFFE_ENV if which == "old" else NEW_CAFFE_ENV)
            os.chdir(s["ds"])
            solvers[which] = caffe.get_solver(s["solver"])
            solvers[which].step(2)                              # warm-up: prefetch, allocation
        for r in range(rounds):
            # Old and new side by side, first one then the other, the order swapped every
            # round: a shared machine's load drifts, and each round's ratio compares two
            # measurements taken moments apart (the targets use the median of those ratios).
            order = ("old", "new") if r % 2 == 0 else ("new", "old")
            for which in order:
                s = setups[which]
                os.environ.update(OLD_CAFFE_ENV if which == "old" else NEW_CAFFE_ENV)  # read at each step
                os.environ["THERMALNET_DATASET"] = s["ds"]
                t0 = time.perf_counter()
                for _ in range(iterations):
                    solvers[which].step(1)
                loop[which].append(iterations * batch / (time.perf_counter() - t0))
                # The same net's forward + backward alone, in this process: the difference
                # to the loop is the solver's update (Adam, weight decay, clearing diffs),
                # which `caffe time` does not run either.
                net = solvers[which].net
                t0 = time.perf_counter()
                for _ in range(iterations):
                    net.forward()
                    net.backward()
                fb[which].append(iterations * batch / (time.perf_counter() - t0))
            for which in order:
                s = setups[which]
                cmd = [caffe_tool(), "time", "-model", s["net"], "-phase", "TRAIN", "-stage", "train",
                       "-iterations", str(iterations)]
                proc = subprocess.run(cmd, cwd=s["ds"], env=s["env"], capture_output=True, text=True)
                text = proc.stderr + proc.stdout
                m = FB_RE.search(text)
                if proc.returncode != 0 or not m:
                    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
                    res["caffe_time_error"] = "caffe time (%s) exited %d: %s" % (which, proc.returncode,
                                                                                 " | ".join(tail))
                    break
                ms = float(m.group(1))
                if not tool[which] or ms < min(tool[which]):
                    layers[which] = parse_layer_times(text)
                tool[which].append(ms)
        solvers.clear()
    finally:
        os.chdir(old_cwd)
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    for which in ("old", "new"):
        res[which] = {"pycaffe_img_per_s": max(loop[which]), "pycaffe_rounds": loop[which],
                      "pycaffe_forward_backward_img_per_s": max(fb[which])}
        if tool[which]:
            res[which].update(caffe_time_fb_ms=min(tool[which]), caffe_time_rounds_ms=tool[which],
                              caffe_time_img_per_s=batch / (min(tool[which]) / 1000.0), layers_ms=layers[which])
    res["pycaffe_img_per_s"] = res["new"]["pycaffe_img_per_s"]
    # The ratios of the best rounds (the least disturbed measurement of each), and as a
    # diagnostic the ratio within every round: on a loaded machine it is lower, since
    # the new step's memory-bound layers lose more to other work than the old step does.
    res["ratio_rounds"] = {"loop": [n / o for n, o in zip(loop["new"], loop["old"])],
                           "loop_vs_forward_backward": [a / b for a, b in zip(loop["new"], fb["new"])]}
    res["step_speedup_loop"] = res["new"]["pycaffe_img_per_s"] / res["old"]["pycaffe_img_per_s"]
    if tool["new"] and len(tool["old"]) == len(tool["new"]):
        res["ratio_rounds"]["caffe_time"] = [o / n for o, n in zip(tool["old"], tool["new"])]
        res["ratio_rounds"]["loop_vs_caffe_time"] = [lp * ms / (1000.0 * batch)
                                                     for lp, ms in zip(loop["new"], tool["new"])]
        res["step_speedup_caffe_time"] = res["old"]["caffe_time_fb_ms"] / res["new"]["caffe_time_fb_ms"]
        res["caffe_time_img_per_s"] = res["new"]["caffe_time_img_per_s"]
        res["loop_vs_caffe_time"] = res["new"]["pycaffe_img_per_s"] / res["new"]["caffe_time_img_per_s"]
    res["loop_vs_forward_backward"] = res["new"]["pycaffe_img_per_s"] / res["new"]["pycaffe_forward_backward_img_per_s"]
    return res


def _median(values: List[float]) -> float:
    return float(np.median(values))


def _solver_text(net_path: str) -> str:
    # Only the train stage (no val passes, no snapshots): the loop measured is forward,
    # backward and update, as tools/train.py runs it (solver.step(1) per iteration).
    return ('net: "%s"\ntrain_state { stage: "train" }\ntest_interval: 100000000\ntest_initialization: false\n'
            'type: "Adam"\nbase_lr: 0.0001\nlr_policy: "fixed"\nmomentum: 0.9\nmomentum2: 0.999\n'
            'weight_decay: 0.000001\nmax_iter: 100000000\ndisplay: 0\nsnapshot: 0\nsnapshot_prefix: "bench"\n'
            'solver_mode: CPU\nrandom_seed: %d\n' % (net_path, spec.SEED))


def find_flir_samples() -> Optional[str]:
    """The FLIR sample folder: $THERMALNET_FLIR_SAMPLES, else ../shared/samples/flir beside the repo."""
    for cand in (os.environ.get("THERMALNET_FLIR_SAMPLES"),
                 os.path.join(os.path.dirname(REPO_ROOT), "shared", "samples", "flir")):
        if cand and all(os.path.isfile(os.path.join(cand, f)) for f in FLIR_WITH_PHOTO):
            return cand
    return None


def _per_image_ms(readers: Dict[str, object], files: List[str], rounds: int = 3) -> Dict[str, float]:
    """ms per image of each reader: rounds alternate between the readers, the best round counts."""
    best = {name: float("inf") for name in readers}
    for _ in range(rounds):
        for name, read in readers.items():
            t0 = time.perf_counter()
            for f in files:
                read(f)
            best[name] = min(best[name], (time.perf_counter() - t0) / len(files))
    return {name: 1000.0 * b for name, b in best.items()}


def jpeg_pairs(src: str, dst: str, count: int) -> str:
    """The first `count` pairs of a visible/ + ir/ folder with the visible images re-encoded
    as JPEG (JPEG_QUALITY); the IR files linked, README.txt (SYNTHETIC) and classes.csv copied."""
    import cv2
    from thermalnet.imageio import read_rgb
    names = sorted(os.listdir(os.path.join(src, "visible")))[:count]
    os.makedirs(os.path.join(dst, "visible"))
    os.makedirs(os.path.join(dst, "ir"))
    irs = {os.path.splitext(f)[0]: f for f in os.listdir(os.path.join(src, "ir"))}
    for name in names:
        stem = os.path.splitext(name)[0]
        bgr = cv2.cvtColor(read_rgb(os.path.join(src, "visible", name)), cv2.COLOR_RGB2BGR)
        cv2.imwrite(os.path.join(dst, "visible", stem + ".jpg"), bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        os.symlink(os.path.abspath(os.path.join(src, "ir", irs[stem])), os.path.join(dst, "ir", irs[stem]))
    for extra in ("README.txt", "classes.csv"):
        if os.path.isfile(os.path.join(src, extra)):
            shutil.copyfile(os.path.join(src, extra), os.path.join(dst, extra))
    return dst


def _build_rate(out: str, count: int, **inputs) -> dict:
    """One build of `count` inputs (pool start and LMDB writing included): pairs/s."""
    from dataset_builder.build import BuildConfig, build
    t0 = time.perf_counter()
    info = build(out, cfg=BuildConfig(progress=False), log=lambda m: None, **inputs)
    dt = time.perf_counter() - t0
    shutil.rmtree(out, ignore_errors=True)
    return {"pairs": count, "kept": info["counts"]["train"] + info["counts"]["test"], "seconds": dt,
            "pairs_per_s": count / dt}


def _lmdb_rate(work: str, n: int) -> float:
    from thermalnet.lmdb_io import LmdbWriter
    rng = np.random.RandomState(spec.SEED)
    x = rng.randint(0, 256, (16, 3, spec.DEFAULT_HEIGHT, spec.DEFAULT_WIDTH)).astype(np.uint8)
    y = rng.randint(0, spec.NUM_BINS, (16, 1, spec.DEFAULT_HEIGHT, spec.DEFAULT_WIDTH)).astype(np.uint8)
    t0 = time.perf_counter()
    with LmdbWriter(os.path.join(work, "f")) as fw, LmdbWriter(os.path.join(work, "l")) as lw:
        for i in range(n):
            fw.put(x[i % 16])
            lw.put(y[i % 16])
    return n / (time.perf_counter() - t0)


def bench_dataset(quick: bool, workdir: str, log=print) -> dict:
    """Dataset building from the kit's three kinds of input; the image reader now and before
    (PIL); LMDB writing alone. The pairs are the demo's cached SYNTHETIC ones
    (tools.demo.synthetic_pairs: the paper's 1100, --quick the demo's 60), made once."""
    from thermalnet.imageio import pil_rgb, read_rgb
    from . import demo
    count = demo.QUICK_COUNT if quick else demo.DEMO_COUNT
    pairs = demo.synthetic_pairs(count, progress=False)
    res = {"note": "SYNTHETIC pairs (the demo's), the same with JPEG visible images, copies of the FLIR "
                   "sample files; wall-clock on a possibly shared machine", "cpus": os.cpu_count(),
           "height": spec.DEFAULT_HEIGHT, "width": spec.DEFAULT_WIDTH, "inputs": {}, "decode_ms": {}}
    log("[bench] re-encoding the %d visible images as JPEG ..." % count)
    jpeg = jpeg_pairs(pairs, os.path.join(workdir, "jpeg_pairs"), count)    # as many pairs: same fixed costs
    for kind, folder in (("PNG", pairs), ("JPEG", jpeg)):
        names = sorted(os.listdir(os.path.join(folder, "visible")))[:8 if quick else DECODE_IMAGES]
        files = [os.path.join(folder, "visible", f) for f in names]
        shape = read_rgb(files[0]).shape
        ms = _per_image_ms({"pil": pil_rgb, "read_rgb": read_rgb}, files)
        res["decode_ms"][kind] = {"images": len(files), "height": shape[0], "width": shape[1], "pil": ms["pil"],
                                  "read_rgb": ms["read_rgb"], "speedup": ms["pil"] / ms["read_rgb"]}
    from dataset_builder.synthetic import generate
    n_gen = 8 if quick else GENERATE_PAIRS
    t0 = time.perf_counter()
    generate(os.path.join(workdir, "generated"), count=n_gen, seed=spec.SEED, progress=False)
    res["synthetic_pairs"], res["synthetic_pairs_per_s"] = n_gen, n_gen / (time.perf_counter() - t0)
    log("[bench] building from %d SYNTHETIC PNG pairs ..." % count)
    res["inputs"]["PNG pairs"] = _build_rate(os.path.join(workdir, "ds_png"), count, pair_roots=[pairs])
    n_jpeg = len(os.listdir(os.path.join(jpeg, "visible")))
    log("[bench] building from %d JPEG pairs ..." % n_jpeg)
    res["inputs"]["JPEG pairs"] = _build_rate(os.path.join(workdir, "ds_jpeg"), n_jpeg, pair_roots=[jpeg])
    samples = find_flir_samples()
    if samples is None:
        res["flir_skipped"] = "FLIR samples not found (set THERMALNET_FLIR_SAMPLES)"
    else:
        src = os.path.join(workdir, "flir")
        os.makedirs(src)
        copies = max(1, count // len(FLIR_WITH_PHOTO))     # as many inputs as the pairs: the same fixed costs
        for k in range(copies):
            for name in FLIR_WITH_PHOTO:
                shutil.copyfile(os.path.join(samples, name), os.path.join(src, "%03d_%s" % (k, name)))
        n_flir = copies * len(FLIR_WITH_PHOTO)
        log("[bench] building from %d FLIR files ..." % n_flir)
        res["inputs"]["FLIR files"] = _build_rate(os.path.join(workdir, "ds_flir"), n_flir, flir_inputs=[src])
    res["lmdb_pairs"] = 200 if quick else LMDB_PAIRS
    res["lmdb_write_pairs_per_s"] = _lmdb_rate(os.path.join(workdir, "lmdb"), res["lmdb_pairs"])
    return res


# -- report -------------------------------------------------------------------------
def targets(results: dict) -> list:
    """(name, measured, target text, met) for each target whose inputs were measured."""
    out = []
    inf, tr, ds = results.get("inference", {}), results.get("training", {}), results.get("dataset", {})
    sgemm = results.get("sgemm_gflops")
    if "step_speedup_loop" in tr:
        r = tr["step_speedup_loop"]
        out.append(("training step new / old (pycaffe loop img/s)", r, ">= 2x", r >= 2.0))
    if "step_speedup_caffe_time" in tr:
        r = tr["step_speedup_caffe_time"]
        out.append(("training step new / old (caffe time)", r, ">= 2x", r >= 2.0))
    if "loop_vs_caffe_time" in tr:
        r = tr["loop_vs_caffe_time"]
        out.append(("pycaffe training loop / caffe time (img/s)", r, ">= 0.95", r >= 0.95))
    for row in inf.get("sizes", []):
        size = "%dx%d" % (row["height"], row["width"])
        usable = {b: v for b, v in row["backends"].items() if b in BACKENDS and v["max_abs_diff"] < 1e-4}
        if usable and sgemm:
            b, v = max(usable.items(), key=lambda kv: kv[1]["gflops"])
            out.append(("best back-end (%s) share of sgemm, %s" % (b, size), v["gflops"] / sgemm, ">= 0.50",
                        v["gflops"] / sgemm >= 0.5))
        worst = max(v["max_abs_diff"] for b, v in row["backends"].items() if b in BACKENDS)
        out.append(("max |back-end - pycaffe| of probs, %s" % size, worst, "< 1e-4", worst < 1e-4))
    if "onnx_max_abs_diff" in inf:
        d = inf["onnx_max_abs_diff"]
        out.append(("ONNX export: max |ONNX Runtime - pycaffe|", d, "< 1e-4", d < 1e-4))
    for kind, v in ds.get("inputs", {}).items():
        if "pycaffe_img_per_s" in tr:
            r = v["pairs_per_s"] / tr["pycaffe_img_per_s"]
            out.append(("dataset build rate (%s) / training consumption" % kind, r, ">= 5x", r >= 5.0))
    return out


def augment_estimate(results: dict) -> Optional[dict]:
    """The best back-end at TYPICAL_SIZE: seconds for AUGMENT_COUNT images (inference only)."""
    for row in results.get("inference", {}).get("sizes", []):
        if (row["height"], row["width"]) == TYPICAL_SIZE:
            ok = {b: v for b, v in row["backends"].items() if b in BACKENDS and v["max_abs_diff"] < 1e-4}
            if ok:
                b, v = max(ok.items(), key=lambda kv: kv[1]["img_per_s"])
                return {"backend": b, "images": AUGMENT_COUNT, "height": TYPICAL_SIZE[0], "width": TYPICAL_SIZE[1],
                        "seconds": AUGMENT_COUNT / v["img_per_s"]}
    return None


def machine_info() -> dict:
    import cv2
    info = {"cpu_model": _cpu_model(), "cpus": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "numpy": np.__version__, "opencv": cv2.__version__,
            "opencv_threads": cv2.getNumThreads()}
    try:
        import onnxruntime
        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        info["onnxruntime"] = None
    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        if os.environ.get(var):
            info[var] = os.environ[var]
    try:
        info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                                        text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        info["commit"] = None
    return info


def _cpu_model() -> str:
    from .train import cpu_model     # one reader of the CPU's name for run summaries and benchmarks
    return cpu_model()


def run(quick: bool = False, infer_base: str = spec.PAPER_BASE, train_base: str = spec.DEFAULT_BASE,
        log=print, parts=PARTS) -> dict:
    """The measurements of `parts` (PARTS) in one process; returns the results dict (what --json writes)."""
    results = {"quick": quick, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "machine": machine_info(), "load_average_before": list(os.getloadavg()),
               "note": "RANDOM weights and SYNTHETIC data: speed only, no accuracy"}
    with tempfile.TemporaryDirectory(prefix="thermalnet-bench-") as work:
        if "inference" in parts:
            log("[bench] numpy sgemm ...")
            results["sgemm_gflops"] = sgemm_gflops(512 if quick else 1024, 0.5 if quick else 1.5)
            log("[bench] inference %s at %s ..." % (infer_base, ", ".join("%dx%d" % s for s in INFER_SIZES)))
            results["inference"] = bench_inference(infer_base, INFER_SIZES[:1] if quick else INFER_SIZES,
                                                   n_images=2 if quick else 8, batch=1 if quick else 4,
                                                   repeats=1 if quick else 3, workdir=work)
            # sgemm again right after, best of both: its peak is the fair reference
            results["sgemm_gflops"] = max(results["sgemm_gflops"], sgemm_gflops(512 if quick else 1024, 0.5))
        if "training" in parts:
            log("[bench] training step old vs new, %s at %dx%d ..." % (train_base, spec.DEFAULT_HEIGHT,
                                                                         spec.DEFAULT_WIDTH))
            results["training"] = bench_training(train_base, spec.DEFAULT_HEIGHT, spec.DEFAULT_WIDTH,
                                                 iterations=2 if quick else 16, batch=4, workdir=work,
                                                 rounds=1 if quick else 7)
        if "dataset" in parts:
            log("[bench] dataset building ...")
            results["dataset"] = bench_dataset(quick, work, log=log)
    results["load_average_after"] = list(os.getloadavg())
    results["augment_estimate"] = augment_estimate(results)
    results["targets"] = [{"name": n, "measured": v, "target": t, "met": bool(m)} for n, v, t, m in targets(results)]
    return results


def format_report(results: dict) -> str:
    m = results["machine"]
    lines = ["Thermalnet kit benchmark (%s; %s)" % ("quick" if results["quick"] else "full", results["note"]),
             "  machine: %s, %s CPUs; %s; numpy %s, OpenCV %s (%s threads), ONNX Runtime %s; commit %s"
             % (m["cpu_model"], m["cpus"], results["date"], m["numpy"], m["opencv"], m["opencv_threads"],
                m.get("onnxruntime"), m.get("commit")),
             "  load average before / after: %s / %s (other work on the machine slows every number)"
             % ("%.1f" % results["load_average_before"][0], "%.1f" % results["load_average_after"][0]),
             ]
    inf = results.get("inference", {"skipped": "not asked for"})
    if "sgemm_gflops" in results:
        lines.append("  numpy sgemm: %.1f GFLOP/s" % results["sgemm_gflops"])
    if "skipped" in inf:
        lines.append("  inference: not run (%s)" % inf["skipped"])
    else:
        lines.append("  inference %s (RANDOM weights), batch %d; ONNX export: %s"
                     % (inf["net"], inf["batch"], ("max |diff| %.2e" % inf["onnx_max_abs_diff"])
                        if "onnx_max_abs_diff" in inf else "FAILED (%s)" % inf.get("onnx_error")))
        for row in inf["sizes"]:
            lines.append("    %dx%d, %.2f GFLOP/image:" % (row["height"], row["width"], row["gflop_per_image"]))
            for b, v in row["backends"].items():
                lines.append("      %-20s %7.2f img/s  %6.1f GFLOP/s = %5.1f%% of sgemm  max|diff| %.1e"
                             % (b, v["img_per_s"], v["gflops"], 100 * v["gflops"] / results["sgemm_gflops"],
                                v["max_abs_diff"]))
    est = results.get("augment_estimate")
    if est:
        lines.append("    %d images at %dx%d with %s: %.1f minutes (inference only)"
                     % (est["images"], est["height"], est["width"], est["backend"], est["seconds"] / 60))
    tr = results.get("training", {"skipped": "not asked for"})
    if "skipped" in tr:
        lines.append("  training: not run (%s)" % tr["skipped"])
    else:
        missing = [v for v, ok in tr["caffe_patches"].items() if not ok]
        lines.append("  training step %s %dx%d batch %d (SYNTHETIC); Caffe patches %s: %s"
                     % (tr["net"], tr["height"], tr["width"], tr["batch"], "/".join(sorted(KIT_PATCH_ENVS.values())),
                        "present" if not missing else "MISSING (%s has no effect: rerun make setup)"
                        % ", ".join(missing)))
        patches = sorted(KIT_PATCH_ENVS.values())
        for which, label in (("old", "old (float64 one-hot loss, Caffe's own code)"),
                             ("new", "new (float32 loss, patches %s-%s)" % (patches[0], patches[-1]))):
            t = tr[which]
            ct = ("caffe time %.1f ms = %.2f img/s" % (t["caffe_time_fb_ms"], t["caffe_time_img_per_s"])
                  if "caffe_time_fb_ms" in t else "caffe time failed (%s)" % tr.get("caffe_time_error"))
            lines.append("    %-48s pycaffe loop %.2f img/s (forward+backward alone %.2f), %s (best rounds)"
                         % (label, t["pycaffe_img_per_s"], t.get("pycaffe_forward_backward_img_per_s", float("nan")),
                            ct))
        rr = tr.get("ratio_rounds", {})
        spread = ["%s %.3f (%.2f-%.2f)" % (name, _median(rr[key]), min(rr[key]), max(rr[key]))
                  for name, key in (("loop new/old", "loop"), ("caffe time old/new", "caffe_time"),
                                    ("loop/caffe time", "loop_vs_caffe_time")) if rr.get(key)]
        if spread:
            lines.append("    within-round ratios (diagnostic; lower under load), median (min-max) of %d rounds: %s"
                         % (len(rr["loop"]), "; ".join(spread)))
        if "loop_vs_forward_backward" in tr:
            lines.append("    new: solver step / forward+backward in one process = %.3f (the rest is the solver's "
                         "update, which caffe time leaves out)" % tr["loop_vs_forward_backward"])
        if tr["old"].get("layers_ms") and tr["new"].get("layers_ms"):
            lines.append("    caffe time per layer, forward + backward ms (old -> new), largest first:")
            old_l, new_l = tr["old"]["layers_ms"], tr["new"]["layers_ms"]
            for name in sorted(new_l, key=lambda n: -max(new_l[n], old_l.get(n, 0)))[:10]:
                lines.append("      %-28s %7.1f -> %7.1f" % (name, old_l.get(name, float("nan")), new_l[name]))
    lines += format_dataset(results.get("dataset", {"skipped": "not asked for"}))
    lines.append("Targets:")
    for t in results["targets"]:
        lines.append("  %-55s %10.4g  (target %s)  %s" % (t["name"], t["measured"], t["target"],
                                                         "met" if t["met"] else "NOT met"))
    if not results["targets"]:
        lines.append("  none measured")
    return "\n".join(lines)


def format_dataset(ds: dict) -> List[str]:
    """The dataset part of the report."""
    if "skipped" in ds:
        return ["  dataset building: not run (%s)" % ds["skipped"]]
    lines = ["  dataset building at %dx%d (%s CPUs; %s):" % (ds["height"], ds["width"], ds["cpus"], ds["note"])]
    for kind, d in ds["decode_ms"].items():
        lines.append("    read %-4s %dx%d: PIL %.2f ms, read_rgb %.2f ms per image = %.2fx"
                     % (kind, d["width"], d["height"], d["pil"], d["read_rgb"], d["speedup"]))
    for kind, v in ds["inputs"].items():
        lines.append("    build from %-10s %7.1f pairs/s (%d inputs, %d kept, %.1f s with the pool's start)"
                     % (kind + ":", v["pairs_per_s"], v["pairs"], v["kept"], v["seconds"]))
    if "flir_skipped" in ds:
        lines.append("    FLIR: %s" % ds["flir_skipped"])
    if "synthetic_pairs_per_s" in ds:
        lines.append("    SYNTHETIC generation: %.1f pairs/s (%d pairs, all cores)"
                     % (ds["synthetic_pairs_per_s"], ds["synthetic_pairs"]))
    lines.append("    LMDB writing alone: %.1f pairs/s (%d pairs, one process)"
                 % (ds["lmdb_write_pairs_per_s"], ds["lmdb_pairs"]))
    return lines


def write_json(results: dict, path: str) -> None:
    _write_json(path, results)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools.benchmark", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer images and iterations, 240x320 only")
    p.add_argument("--json", help="where to save the results (default: %s; with --only: bench-PART.json "
                                   "beside it)" % DEFAULT_JSON)
    p.add_argument("--infer-base", default=spec.PAPER_BASE, help="deploy net for the inference comparison")
    p.add_argument("--train-base", default=spec.DEFAULT_BASE, help="train net for the training comparison")
    p.add_argument("--only", choices=PARTS, action="append",
                   help="measure only this part (repeatable; the dataset ratios need training too)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    def body():
        results = run(quick=args.quick, infer_base=args.infer_base, train_base=args.train_base,
                      log=lambda m: print(m, file=sys.stderr), parts=tuple(args.only or PARTS))
        print(format_report(results))
        path = args.json or (DEFAULT_JSON if not args.only else
                             DEFAULT_JSON.replace(".json", "-%s.json" % "-".join(sorted(set(args.only)))))
        write_json(results, path)
        print("saved %s" % path)
    from thermalnet import cli
    return cli.run(body)


if __name__ == "__main__":
    sys.exit(main())
