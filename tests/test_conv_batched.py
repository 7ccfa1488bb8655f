"""Caffe's Convolution on both of its CPU paths: the batched one added by
tools/caffe/patches/0007-conv-batched-cpu-gemm.patch (several images' columns side by side,
one GEMM) and Caffe's per-image one (CAFFE_BATCHED_CONV=0). Forward, input gradient, weight
and bias gradients against numpy, with stride, padding, dilation, 1x1 kernels, odd batch
sizes, images grouped two by two (3,600 output pixels each) and images too large to group;
then Thermalnet's deploy net at the demo's size, both paths against each other.
Random SYNTHETIC blobs.
"""
from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import layer_pass, require_kit_patch
from thermalnet import nets
from thermalnet.caffe_env import BATCHED_CONV_ENV

CASES = [  # batch, channels, H, W, outputs, kernel, stride, pad, dilation, bias
    (4, 16, 30, 40, 64, 3, 1, 1, 1, True),      # a fire module's expand3x3 (63..1,131 pixels: grouped)
    (3, 8, 9, 7, 5, 1, 1, 0, 1, True),          # 1x1 (squeeze / expand1x1), odd batch
    (5, 3, 11, 13, 4, 3, 2, 0, 1, False),       # conv1-like: stride 2, no padding, no bias
    (2, 2, 8, 9, 3, (3, 2), (2, 3), (1, 2), 2, True),   # unequal kernel, stride, pad; dilation
    (5, 2, 60, 60, 3, 3, 1, 1, 1, True),        # 3,600 pixels an image: groups of 2, 2 and 1
    (2, 1, 100, 100, 2, 3, 1, 1, 1, False),     # 10,000 pixels: Caffe's per-image path
    (1, 4, 6, 6, 3, 3, 1, 1, 1, True),          # batch 1: Caffe's per-image path
]


def _pair(v):
    return v if isinstance(v, tuple) else (v, v)


def _net(caffe, tmp_path, n, c, h, w, m, k, s, p, d, bias):
    (kh, kw), (sh, sw), (ph, pw) = _pair(k), _pair(s), _pair(p)
    text = """force_backward: true
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: %d dim: %d dim: %d dim: %d } } }
layer { name: "conv" type: "Convolution" bottom: "x" top: "y" loss_weight: 1
        convolution_param { num_output: %d bias_term: %s kernel_h: %d kernel_w: %d stride_h: %d stride_w: %d
                            pad_h: %d pad_w: %d dilation: %d } }
""" % (n, c, h, w, m, "true" if bias else "false", kh, kw, sh, sw, ph, pw, d)
    path = tmp_path / "conv.prototxt"
    path.write_text(text)
    return caffe.Net(str(path), caffe.TRAIN)


def _windows(xpad, kh, kw, sh, sw, d, oh, ow):
    """(i, j, the input window each output pixel reads at kernel offset (i, j))."""
    for i in range(kh):
        for j in range(kw):
            yield i, j, xpad[:, :, i * d:i * d + (oh - 1) * sh + 1:sh, j * d:j * d + (ow - 1) * sw + 1:sw]


def _numpy_conv(x, wt, b, g, k, s, p, d):
    """Forward and all gradients in float64, one kernel offset at a time."""
    (kh, kw), (sh, sw), (ph, pw) = _pair(k), _pair(s), _pair(p)
    n, c, h, w = x.shape
    _, _, oh, ow = g.shape
    xpad = np.zeros((n, c, h + 2 * ph, w + 2 * pw))
    xpad[:, :, ph:ph + h, pw:pw + w] = x
    y = np.zeros(g.shape)
    dw = np.zeros(wt.shape)
    dxpad = np.zeros(xpad.shape)
    for i, j, win in _windows(xpad, kh, kw, sh, sw, d, oh, ow):
        y += np.einsum("mc,ncyx->nmyx", wt[:, :, i, j], win)
        dw[:, :, i, j] = np.einsum("nmyx,ncyx->mc", g, win)
        dxpad[:, :, i * d:i * d + (oh - 1) * sh + 1:sh, j * d:j * d + (ow - 1) * sw + 1:sw] += \
            np.einsum("mc,nmyx->ncyx", wt[:, :, i, j], g)
    if b is not None:
        y += b[None, :, None, None]
    return y, dxpad[:, :, ph:ph + h, pw:pw + w], dw, g.sum(axis=(0, 2, 3))


@pytest.mark.parametrize("case", CASES, ids=[str(i) for i in range(len(CASES))])
def test_convolution_both_paths_match_numpy(caffe, tmp_path, monkeypatch, case):
    n, c, h, w, m, k, s, p, d, bias = case
    rng = np.random.RandomState(7 + len(CASES) * n + c)
    results = {}
    for batched in ("1", "0"):
        monkeypatch.setenv(BATCHED_CONV_ENV, batched)      # read by the patched layer at every call
        net = _net(caffe, tmp_path, *case)
        if batched == "1":
            x = rng.randn(n, c, h, w).astype(np.float32)
            wt = rng.randn(*net.params["conv"][0].data.shape).astype(np.float32)
            b = rng.randn(m).astype(np.float32) if bias else None
            g = rng.randn(*net.blobs["y"].data.shape).astype(np.float32)
        results[batched] = layer_pass(net, "conv", x, wt, b, g)
    ref = _numpy_conv(x.astype(np.float64), wt.astype(np.float64), None if b is None else b.astype(np.float64),
                      g.astype(np.float64), k, s, p, d)
    for name, got, want in zip(("output", "input gradient", "weight gradient", "bias gradient"),
                               results["1"], ref):
        if got is not None:
            scale = max(1.0, float(np.abs(want).max()))
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-5 * scale, err_msg=name)
    for name, a, r in zip(("output", "input gradient", "weight gradient", "bias gradient"),
                          results["1"], results["0"]):
        if a is not None:
            scale = max(1.0, float(np.abs(r).max()))
            np.testing.assert_allclose(a, r, rtol=1e-4, atol=2e-5 * scale, err_msg=name)


def test_thermalnet_same_gradients_on_both_paths(caffe, tmp_path, monkeypatch):
    """The v1_1 deploy net at the demo's 120x160, batch 4 (every fire module grouped), weights
    copied between the two runs: the output and every convolution's gradients agree."""
    deploy = nets.deploy_for_size(nets.network("v1_1").deploy, 120, 160, str(tmp_path / "d.prototxt"), batch=4)
    text = "force_backward: true\n" + open(deploy).read()
    (tmp_path / "fb.prototxt").write_text(text)
    rng = np.random.RandomState(3)
    x = rng.randn(4, 3, 120, 160).astype(np.float32) * 50
    out = {}
    weights = None
    for batched in ("1", "0"):
        monkeypatch.setenv(BATCHED_CONV_ENV, batched)
        caffe.set_random_seed(11)
        net = caffe.Net(str(tmp_path / "fb.prototxt"), caffe.TEST)
        if weights is None:
            weights = {k: [prm.data.copy() for prm in v] for k, v in net.params.items()}
            g = rng.randn(*net.blobs["prob"].data.shape).astype(np.float32)
        for k, v in net.params.items():
            for prm, arr in zip(v, weights[k]):
                prm.data[...] = arr
        net.blobs["data"].data[...] = x
        net.forward()
        net.blobs["prob"].diff[...] = g
        for v in net.params.values():
            for prm in v:
                prm.diff[...] = 0
        net.backward()
        out[batched] = {"prob": net.blobs["prob"].data.copy(), "data diff": net.blobs["data"].diff.copy()}
        out[batched].update({k + " diff": [prm.diff.copy() for prm in v] for k, v in net.params.items()
                             if net.layers[list(net._layer_names).index(k)].type == "Convolution"})
    assert len(out["1"]) > 20       # prob, data diff and every convolution of the net
    for key, a in out["1"].items():
        for got, want in zip(a if isinstance(a, list) else [a], out["0"][key] if isinstance(a, list) else [out["0"][key]]):
            scale = float(np.abs(want).max())
            assert scale > 0, key
            np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4 * scale, err_msg=key)


def test_this_caffe_carries_the_batched_convolution(caffe):
    """The kit's own build applies patch 0007; a CAFFE_ROOT Caffe (BVLC, NVCaffe) need not."""
    require_kit_patch(BATCHED_CONV_ENV, "one GEMM for several images in Convolution")
