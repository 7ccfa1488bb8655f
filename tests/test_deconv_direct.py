"""Caffe's Deconvolution with group == channels (Thermalnet's upscore layers) against numpy,
on both of its CPU paths: the direct depthwise one added by
tools/caffe/patches/0002-deconv-depthwise-direct.patch and Caffe's generic GEMM + col2im
one (CAFFE_DECONV_DIRECT=0). Forward, input gradient and weight gradient, with stride,
padding, dilation, bias and odd sizes; random SYNTHETIC blobs.
"""
from __future__ import annotations


import numpy as np
import pytest

from tests.conftest import layer_pass, require_kit_patch
from thermalnet.caffe_env import DECONV_ENV

CASES = [  # channels, H, W, kernel, stride, pad, dilation, learned weights, bias
    (32, 8, 10, 8, 4, 0, 1, False, False),       # Thermalnet's upscore layers
    (3, 5, 7, 4, 2, 1, 1, True, True),
    (4, 6, 5, 3, 1, 1, 2, True, False),
    (2, 4, 4, 8, 4, 3, 1, True, True),
    (5, 7, 3, 5, 3, 2, 1, False, False),
]


def _net(caffe, tmp_path, c, h, w, k, s, p, d, learned, bias):
    # A learnable 1x1 convolution in front gives the deconvolution a bottom that needs a
    # gradient (as conv10 does in Thermalnet) without force_backward, which would also
    # switch on the fixed weights' gradient; loss_weight makes Caffe run the backward pass.
    text = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: %d dim: %d dim: %d } } }
layer { name: "pre" type: "Convolution" bottom: "x" top: "pre"
        convolution_param { num_output: %d kernel_size: 1 bias_term: false weight_filler { type: "constant" value: 0 } } }
layer { name: "up" type: "Deconvolution" bottom: "pre" top: "y" loss_weight: 1 param { lr_mult: %d } %s
        convolution_param { num_output: %d group: %d bias_term: %s kernel_size: %d stride: %d pad: %d dilation: %d } }
""" % (c, h, w, c, 1 if learned else 0, "param { lr_mult: 1 }" if bias else "", c, c,
       "true" if bias else "false", k, s, p, d)
    path = tmp_path / "deconv.prototxt"
    path.write_text(text)
    return caffe.Net(str(path), caffe.TRAIN)


def _numpy_deconv(x, wt, s, p, d, oh, ow):
    """Scatter each input pixel's kernel footprint (float64)."""
    n, c, h, w = x.shape
    kh, kw = wt.shape[2:]
    full = np.zeros((n, c, (h - 1) * s + (kh - 1) * d + 1, (w - 1) * s + (kw - 1) * d + 1))
    for ky in range(kh):
        for kx in range(kw):
            full[:, :, ky * d:ky * d + (h - 1) * s + 1:s, kx * d:kx * d + (w - 1) * s + 1:s] += \
                x * wt[:, 0, ky, kx][None, :, None, None]
    return full[:, :, p:p + oh, p:p + ow]


def _run(net, x, wt, b, g):
    """Forward and backward with the input set through the identity 1x1 `pre` layer."""
    c = x.shape[1]
    net.params["pre"][0].data[...] = np.eye(c, dtype=np.float32).reshape(c, c, 1, 1)
    return layer_pass(net, "up", x, wt, b, g, diff_blob="pre")


@pytest.mark.parametrize("case", CASES)
def test_depthwise_deconvolution_both_paths_match_numpy(caffe, tmp_path, monkeypatch, case):
    c, h, w, k, s, p, d, learned, bias = case
    rng = np.random.RandomState(sum(case[:7]))
    results = {}
    for direct in ("1", "0"):
        monkeypatch.setenv(DECONV_ENV, direct)      # read by the patched layer at every call
        net = _net(caffe, tmp_path, *case)
        if direct == "1":
            x = rng.randn(2, c, h, w).astype(np.float32)
            wt = rng.randn(*net.params["up"][0].data.shape).astype(np.float32)
            b = rng.randn(c).astype(np.float32) if bias else None
            g = rng.randn(*net.blobs["y"].data.shape).astype(np.float32)
        results[direct] = _run(net, x, wt, b, g)
    y, dx, dw, db = results["1"]
    ref = _numpy_deconv(x.astype(np.float64), wt.astype(np.float64), s, p, d, y.shape[2], y.shape[3])
    if bias:
        ref = ref + b[None, :, None, None]
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
    # Gradients: the adjoint of the scatter, read back from the padded top diff.
    n, _, oh, ow = g.shape
    gpad = np.zeros((n, c, (h - 1) * s + (k - 1) * d + 1, (w - 1) * s + (k - 1) * d + 1))
    gpad[:, :, p:p + oh, p:p + ow] = g
    dx_ref = np.zeros(x.shape)
    dw_ref = np.zeros(wt.shape)
    for ky in range(k):
        for kx in range(k):
            win = gpad[:, :, ky * d:ky * d + (h - 1) * s + 1:s, kx * d:kx * d + (w - 1) * s + 1:s]
            dx_ref += win * wt[:, 0, ky, kx][None, :, None, None]
            dw_ref[:, 0, ky, kx] = (win * x).sum(axis=(0, 2, 3))
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-4, atol=1e-4)
    if learned:
        np.testing.assert_allclose(dw, dw_ref, rtol=1e-4, atol=1e-3)
    if bias:
        np.testing.assert_allclose(db, g.sum(axis=(0, 2, 3)), rtol=1e-4, atol=1e-3)
    # The generic path: same values to float rounding.
    for a, r in zip(results["1"], results["0"]):
        if a is not None:
            np.testing.assert_allclose(a, r, rtol=1e-4, atol=1e-4)


def test_this_caffe_carries_the_direct_deconvolution(caffe):
    """The kit's own build applies patch 0002; a CAFFE_ROOT Caffe (BVLC, NVCaffe) need not."""
    require_kit_patch(DECONV_ENV, "the direct depthwise deconvolution")
