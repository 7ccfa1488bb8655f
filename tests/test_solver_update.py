"""Caffe's Adam and AdaGrad updates against numpy, step by step.

tools/caffe/patches/0004-powx-sqrt-square.patch computes the solvers' square roots
and squares (caffe_powx with exponent 0.5 or 2) with sqrt and a product instead of
pow() (CAFFE_POWX_SQRT=0: pow); 0005-adam-fused-cpu-update.patch does Adam's CPU
update in one pass (CAFFE_FUSED_ADAM=0: Caffe's seven passes). These tests pin the update
arithmetic: weights after several solver steps on a tiny net equal the textbook
formulas (float rounding aside), with weight decay, for both Adam updates. Random
SYNTHETIC data.
"""
from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import require_kit_patch
from thermalnet.caffe_env import FUSED_ADAM_ENV, POWX_SQRT_ENV

NET = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 4 dim: 3 dim: 5 dim: 6 } } }
layer { name: "y" type: "Input" top: "y" input_param { shape { dim: 4 dim: 7 dim: 5 dim: 6 } } }
layer { name: "conv" type: "Convolution" bottom: "x" top: "z"
        convolution_param { num_output: 7 kernel_size: 1 bias_term: false weight_filler { type: "gaussian" std: 1 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "z" bottom: "y" top: "loss" }
"""
# 7 x 3 = 21 weights: five groups of four (the fused update's SSE loop) and its scalar tail.
WEIGHT_DECAY = 0.01


def _solver(caffe, tmp_path, kind):
    (tmp_path / "net.prototxt").write_text(NET)
    extra = 'momentum: 0.9\nmomentum2: 0.999\ndelta: 1e-8\n' if kind == "Adam" else 'delta: 1e-8\n'
    (tmp_path / "solver.prototxt").write_text(
        'net: "%s"\ntype: "%s"\nbase_lr: 0.01\nlr_policy: "fixed"\nweight_decay: %g\nmax_iter: 100\n'
        'display: 0\nsnapshot: 0\nsnapshot_prefix: "x"\nsolver_mode: CPU\nrandom_seed: 1\n%s'
        % (tmp_path / "net.prototxt", kind, WEIGHT_DECAY, extra))
    return caffe.get_solver(str(tmp_path / "solver.prototxt"))


@pytest.mark.parametrize("kind,fused,sqrt", [("Adam", "1", "1"), ("Adam", "0", "1"), ("Adam", "0", "0"),
                                             ("AdaGrad", "1", "1"), ("AdaGrad", "1", "0")],
                         ids=["Adam-fused", "Adam-sqrt", "Adam-pow", "AdaGrad-sqrt", "AdaGrad-pow"])
def test_adaptive_solver_updates_match_numpy(caffe, tmp_path, monkeypatch, kind, fused, sqrt):
    monkeypatch.setenv(FUSED_ADAM_ENV, fused)        # read by the patched solver and powx at each step
    monkeypatch.setenv(POWX_SQRT_ENV, sqrt)
    solver = _solver(caffe, tmp_path, kind)
    net = solver.net
    rng = np.random.RandomState(3)
    x = rng.randn(4, 3, 5, 6).astype(np.float32)
    y = rng.randn(4, 7, 5, 6).astype(np.float32)
    w = net.params["conv"][0].data.astype(np.float64).copy()
    m = np.zeros_like(w)
    v = np.zeros_like(w)
    lr, b1, b2, eps = 0.01, 0.9, 0.999, 1e-8
    for t in range(1, 6):
        net.blobs["x"].data[...] = x
        net.blobs["y"].data[...] = y
        # EuclideanLoss: 1/(2N) sum (z - y)^2, z = W x (1x1 convolution), N = 4
        z = np.einsum("oc,nchw->nohw", w[:, :, 0, 0], x.astype(np.float64))
        g = np.einsum("nohw,nchw->oc", (z - y) / 4.0, x.astype(np.float64))[:, :, None, None]
        g = g + WEIGHT_DECAY * w                      # Caffe's L2 regularisation, before the update
        if kind == "Adam":
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            w = w - lr * np.sqrt(1 - b2 ** t) / (1 - b1 ** t) * m / (np.sqrt(v) + eps)
        else:
            v = v + g * g
            w = w - lr * g / (np.sqrt(v) + eps)
        solver.step(1)
        np.testing.assert_allclose(net.params["conv"][0].data, w, rtol=2e-5, atol=2e-6, err_msg="step %d" % t)


def test_this_caffe_carries_the_solver_patches(caffe):
    """The kit's own build applies patches 0004 and 0005; a CAFFE_ROOT Caffe (BVLC, NVCaffe) need not."""
    require_kit_patch(POWX_SQRT_ENV, "caffe_powx's roots and squares")
    require_kit_patch(FUSED_ADAM_ENV, "Adam's CPU update in one pass")
