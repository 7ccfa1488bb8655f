"""Caffe's ReLU and max Pooling on the CPU against numpy, as rewritten branch-free by
tools/caffe/patches/0003-relu-maxpool-branch-free.patch: values, gradients, NaN
propagation, ties (the first largest value wins, as in Caffe's original loop), padding
and the ceil-rounded last window; both the new loops and the original ones
(CAFFE_BRANCH_FREE=0). Random SYNTHETIC blobs.
"""
from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import require_kit_patch
from thermalnet.caffe_env import BRANCH_FREE_ENV


@pytest.fixture(params=["1", "0"], ids=["branch-free", "original"])
def loops(request, monkeypatch):
    monkeypatch.setenv(BRANCH_FREE_ENV, request.param)      # read by the patched layers at each call
    return request.param


def _net(caffe, tmp_path, shape, body, name="net.prototxt"):
    text = ('layer { name: "x" type: "Input" top: "x" input_param { shape { %s } } }\n'
            % " ".join("dim: %d" % d for d in shape))
    text += 'layer { name: "pre" type: "Scale" bottom: "x" top: "pre" param { lr_mult: 1 } ' \
            'scale_param { filler { type: "constant" value: 1 } } }\n' + body
    path = tmp_path / name
    path.write_text(text)
    return caffe.Net(str(path), caffe.TRAIN)


@pytest.mark.parametrize("slope", [0.0, 0.1])
@pytest.mark.parametrize("in_place", [True, False])
def test_relu_forward_backward_match_numpy(caffe, tmp_path, slope, in_place, loops):
    shape = (2, 3, 37, 29)                  # not a multiple of the 1024-element blocks
    top = "pre" if in_place else "y"
    net = _net(caffe, tmp_path, shape, 'layer { name: "r" type: "ReLU" bottom: "pre" top: "%s" loss_weight: 1 '
               'relu_param { negative_slope: %r } }\n' % (top, slope))
    rng = np.random.RandomState(1)
    x = rng.randn(*shape).astype(np.float32)
    x.flat[::97] = 0.0
    x.flat[5] = np.nan
    net.blobs["x"].data[...] = x
    net.forward()
    y = net.blobs[top].data.copy()
    ref = np.where(x > 0, x, slope * x)
    assert np.isnan(y.flat[5]), "NaN must propagate through ReLU"
    mask = ~np.isnan(x)
    np.testing.assert_array_equal(y[mask], ref[mask].astype(np.float32))
    g = rng.randn(*shape).astype(np.float32)
    net.blobs[top].diff[...] = g
    net.backward()
    dx = net.blobs["pre"].diff
    np.testing.assert_array_equal(dx[mask], np.where(x > 0, g, slope * g)[mask].astype(np.float32))
    assert dx.flat[5] == 0.0        # dy * ((x > 0) + slope * (x <= 0)) is 0 at NaN, as in Caffe's loop


@pytest.mark.parametrize("kernel,stride,pad,hw,top_mask", [
    (3, 2, 0, (59, 79), False),     # pool1 at 120x160: every window inside, the last one ceil-rounded to the edge
    (3, 2, 1, (14, 19), False),     # padding: the first and last windows of a row reach outside the image
    (2, 2, 0, (7, 9), False),       # ceil rounding clips the last window of a row
    (3, 1, 0, (5, 6), False),
    (2, 3, 0, (8, 11), True),       # stride > kernel (skipped columns); mask as a second top
    (3, 2, 1, (9, 2), True),        # narrower than the kernel: every window of a row is clipped
])
def test_max_pooling_matches_numpy(caffe, tmp_path, kernel, stride, pad, hw, top_mask, loops):
    shape = (2, 3) + hw
    net = _net(caffe, tmp_path, shape, 'layer { name: "p" type: "Pooling" bottom: "pre" top: "y" %s loss_weight: 1 %s'
               'pooling_param { pool: MAX kernel_size: %d stride: %d pad: %d } }\n'
               % ('top: "m"' if top_mask else "", "loss_weight: 0 " if top_mask else "", kernel, stride, pad))
    rng = np.random.RandomState(kernel * 10 + stride + pad)
    x = rng.randint(-3, 4, size=shape).astype(np.float32)     # many ties
    net.blobs["x"].data[...] = x
    net.forward()
    y = net.blobs["y"].data.copy()
    h, w = hw
    ph, pw = y.shape[2:]
    ref = np.full(y.shape, -np.inf, np.float32)
    arg = np.full(y.shape, -1)
    for i in range(ph):
        for j in range(pw):
            h0, w0 = i * stride - pad, j * stride - pad
            h1, w1 = min(h0 + kernel, h), min(w0 + kernel, w)
            h0, w0 = max(h0, 0), max(w0, 0)
            for a in range(h0, h1):
                for b in range(w0, w1):      # row-major scan, strictly larger replaces: first max wins
                    better = x[:, :, a, b] > ref[:, :, i, j]
                    ref[:, :, i, j] = np.where(better, x[:, :, a, b], ref[:, :, i, j])
                    arg[:, :, i, j] = np.where(better, a * w + b, arg[:, :, i, j])
    np.testing.assert_array_equal(y, ref)
    if top_mask:
        np.testing.assert_array_equal(net.blobs["m"].data, arg)
    g = rng.randn(*y.shape).astype(np.float32)
    net.blobs["y"].diff[...] = g
    net.backward()
    dx_ref = np.zeros(shape, np.float64)
    for n in range(shape[0]):
        for c in range(shape[1]):
            np.add.at(dx_ref[n, c].reshape(-1), arg[n, c].reshape(-1), g[n, c].reshape(-1))
    np.testing.assert_allclose(net.blobs["pre"].diff, dx_ref, rtol=1e-6, atol=1e-6)


def test_this_caffe_carries_the_branch_free_loops(caffe):
    """The kit's own build applies patch 0003; a CAFFE_ROOT Caffe (BVLC, NVCaffe) need not."""
    require_kit_patch(BRANCH_FREE_ENV, "branch-free ReLU and max pooling")
