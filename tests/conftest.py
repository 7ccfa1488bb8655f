"""Shared fixtures: the real Caffe, and a tiny dataset in the kit's on-disk layout.

The tiny dataset is random (SYNTHETIC, for shape and plumbing tests only); the
synthetic-scene generator of dataset_builder makes the realistic demo data.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from thermalnet import layout, spec
from thermalnet.caffe_env import import_caffe

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLES = os.path.join(os.path.dirname(REPO), "shared", "samples", "flir")


@pytest.fixture(scope="session")
def caffe():
    mod = import_caffe()
    mod.set_mode_cpu()
    return mod


# The real FLIR files are an extra check where they are present: a test over FLIR files
# runs on the files tests/flir_writer.py writes in every clone, and on the real ones too
# when ../shared/samples/flir is beside the checkout (never a skip either way).
REAL_FLIR = os.path.isdir(SAMPLES)


def flir_cases(written, real=()):
    """pytest parameters ("written"|"real", file name): the written files always, the real
    samples only where they are present."""
    return [pytest.param(("written", n), id=n) for n in written] + \
        ([pytest.param(("real", n), id=n) for n in real] if REAL_FLIR else [])


@pytest.fixture(scope="session")
def flir_written(tmp_path_factory):
    """(folder, {name: what was written}) of the FLIR files written from known numbers."""
    from tests.flir_writer import write_samples

    folder = str(tmp_path_factory.mktemp("flir_written"))
    return folder, write_samples(folder)


@pytest.fixture(scope="session")
def flir_dirs(flir_written):
    """{"written": folder, "real": folder or None}: where flir_cases' files lie."""
    return {"written": flir_written[0], "real": SAMPLES if REAL_FLIR else None}


def flir_path(dirs, case):
    return os.path.join(dirs[case[0]], case[1])


def make_tiny_dataset(root, n_train=6, n_val=4, height=spec.DEFAULT_HEIGHT, width=spec.DEFAULT_WIDTH,
                      num_bins=spec.NUM_BINS, seed=0):
    """Random images and labels written as the builder writes them (LMDBs, weights, info)."""
    from thermalnet.lmdb_io import LmdbWriter, write_mean_binaryproto

    rng = np.random.RandomState(seed)
    os.makedirs(root, exist_ok=True)
    feats = {}
    for split, n in ((layout.TRAIN_DB, n_train), (layout.VAL_DB, n_val)):
        x = rng.randint(0, 256, size=(n, 3, height, width)).astype(np.uint8)
        y = rng.randint(0, num_bins, size=(n, 1, height, width)).astype(np.uint8)
        with LmdbWriter(os.path.join(root, split, layout.FEATURES)) as fw, \
                LmdbWriter(os.path.join(root, split, layout.LABELS)) as lw:
            for i in range(n):
                fw.put(x[i])
                lw.put(y[i])
        feats[split] = (x, y)
    write_mean_binaryproto(feats[layout.TRAIN_DB][0].mean(axis=0), os.path.join(root, layout.TRAIN_DB, layout.MEAN_FILE))
    prior = spec.class_prior(feats[layout.TRAIN_DB][1], num_bins)
    np.savetxt(os.path.join(root, layout.CLASS_PRIOR_FILE), prior, fmt="%.8f")
    np.savetxt(os.path.join(root, layout.CLASS_WEIGHTS_FILE), spec.rebalance_weights(prior), fmt="%.8f")
    with open(os.path.join(root, layout.DATASET_INFO_FILE), "w") as f:
        json.dump({"synthetic": True, "note": "SYNTHETIC random test fixture", "num_bins": num_bins,
                   "height": height, "width": width, "window_mode": "fixed", "window": [15.0, 45.0],
                   "counts": {"train": n_train, "test": n_val}}, f, indent=1)
    return root, feats


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """(path, {split: (features NxCxHxW, labels Nx1xHxW)}) of a random 120x160 dataset."""
    return make_tiny_dataset(str(tmp_path_factory.mktemp("tiny_dataset")))


def require_kit_patch(switch: str, what: str) -> None:
    """Fail when the kit's own Caffe lacks the patch behind a run-time switch
    (thermalnet.caffe_env.KIT_PATCH_ENVS): the tests before it then ran only Caffe's
    original code. A user's CAFFE_ROOT Caffe (BVLC, NVCaffe) need not carry it: there it
    is a loud skip."""
    import warnings

    from thermalnet.caffe_env import KIT_PATCH_ENVS, caffe_lib_patches
    patch = KIT_PATCH_ENVS[switch]
    if caffe_lib_patches()[switch]:
        return
    why = ("this Caffe lacks tools/caffe/patches/%s (%s): the tests above ran Caffe's original code only. "
           "Rerun `make setup` to rebuild the kit's Caffe" % (patch, what))
    if os.environ.get("CAFFE_ROOT"):
        warnings.warn(why)
        pytest.skip(why)
    pytest.fail(why)


def layer_pass(net, layer: str, x, wt, b, g, diff_blob: str = "x"):
    """One forward + backward through a test net with input blob `x`, output blob `y` and
    the weighted layer `layer` (weights wt, bias b or None), top diff g. Returns the output,
    the gradient in `diff_blob`, and the layer's weight and bias gradients (None without bias)."""
    net.blobs["x"].data[...] = x
    net.params[layer][0].data[...] = wt
    if b is not None:
        net.params[layer][1].data[...] = b
    net.forward()
    y = net.blobs["y"].data.copy()
    for prm in net.params[layer]:
        prm.diff[...] = 0
    net.blobs["y"].diff[...] = g
    net.backward()
    return y, net.blobs[diff_blob].diff.copy(), net.params[layer][0].diff.copy(), \
        (net.params[layer][1].diff.copy() if b is not None else None)


def caffe_tool_train(dataset_dir: str, out_dir: str, iters: int = 2):
    """`caffe train` (the tool DIGITS runs) of the v1_1 net on a dataset folder for `iters`
    iterations, batch 2: returns (CompletedProcess, path of the last snapshot)."""
    import subprocess
    from thermalnet import caffe_env, nets
    net = nets.materialize(nets.network("v1_1").net, dataset_dir, os.path.join(out_dir, "net.prototxt"),
                           batch_size=2, val_batch_size=2)
    schedule = nets.solver_schedule(2, 2, iters, n_val=2, val_batch=2)
    solver = nets.write_solver(os.path.join(out_dir, "solver.prototxt"), net, schedule, 1e-3,
                               snapshot_prefix=os.path.join(out_dir, "snap"))
    env = caffe_env.python_layer_env()
    env.update(GLOG_minloglevel="0", GLOG_logtostderr="1")
    out = subprocess.run([caffe_env.caffe_tool(), "train", "--solver", solver], cwd=out_dir, env=env,
                         capture_output=True, text=True, timeout=300)
    return out, os.path.join(out_dir, "snap_iter_%d.caffemodel" % iters)
