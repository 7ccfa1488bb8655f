"""Gatys style reconstruction (TN+PP) through the real Caffe VGG-16 prototxt.

The VGG-16 weights cannot be downloaded here, so the net runs with RANDOM weights
(He-normal, written to a temporary caffemodel); that checks the losses, the gradient
injection into Caffe's backward and the optimiser, not the quality of the result.
"""
from __future__ import annotations

import numpy as np
import pytest

from thermalnet import gatys
from thermalnet.inference import random_caffemodel


def _fd_check(fn, x, n=12, eps=1e-6, seed=0):
    """Central differences of fn at n random coordinates vs its analytic gradient."""
    rng = np.random.RandomState(seed)
    _, g = fn(x)
    for _ in range(n):
        idx = tuple(rng.randint(0, s) for s in x.shape)
        xp, xm = x.copy(), x.copy()
        xp[idx] += eps
        xm[idx] -= eps
        num = (fn(xp)[0] - fn(xm)[0]) / (2 * eps)
        assert abs(num - g[idx]) <= 1e-6 * max(1.0, abs(num)), (idx, num, g[idx])


def test_style_and_content_loss_gradients_match_finite_differences():
    rng = np.random.RandomState(0)
    f = rng.rand(6, 20)
    target = gatys.gram(rng.rand(6, 35))            # the style image may have another size
    _fd_check(lambda x: gatys.style_loss(x, target), f)
    p = rng.rand(6, 20)
    _fd_check(lambda x: gatys.content_loss(x, p), f)


def test_gram_loss_equals_gatys_normalisation_at_equal_sizes():
    rng = np.random.RandomState(1)
    f, s = rng.rand(5, 30), rng.rand(5, 30)
    n, m = f.shape
    gatys_e = ((f @ f.T - s @ s.T) ** 2).sum() / (4.0 * n ** 2 * m ** 2)
    assert gatys.style_loss(f, gatys.gram(s))[0] == pytest.approx(gatys_e, rel=1e-12)


def test_unavailable_without_weights(tmp_path, capsys):
    assert not gatys.available(None)
    assert not gatys.available(str(tmp_path / "VGG_ILSVRC_16_layers.caffemodel"))
    empty = tmp_path / "empty.caffemodel"
    empty.write_bytes(b"")
    assert not gatys.available(str(empty))
    assert "not run" in gatys.unavailable_reason(None)
    with pytest.raises(FileNotFoundError, match="not run"):
        gatys.StyleReconstructor(None)
    rc = gatys.main(["--content", "a.png", "--style", "b.png", "--out", str(tmp_path / "o.png")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and err[0].startswith("error: TN+PP not run")


@pytest.fixture(scope="module")
def random_vgg(tmp_path_factory, caffe):
    path = str(tmp_path_factory.mktemp("vgg") / "random_vgg16.caffemodel")
    return random_caffemodel(gatys.VGG_PROTOTXT, path, seed=0)


@pytest.fixture(scope="module")
def images():
    rng = np.random.RandomState(3)
    yy, xx = np.mgrid[0:32, 0:32]
    content = np.clip(100 + 60 * np.sin(xx / 5.0) + rng.normal(0, 5, (32, 32)), 0, 255)
    style = np.clip(80 + 3 * yy + rng.normal(0, 20, (32, 32)), 0, 255)
    return content, style


def test_vgg_prototxt_shapes(random_vgg):
    rec = gatys.StyleReconstructor(random_vgg)
    feats = rec.features(np.zeros((32, 48)))
    n = {"conv1_1": 64, "conv2_1": 128, "conv3_1": 256, "conv4_1": 512, "conv4_2": 512, "conv5_1": 512}
    div = {"conv1_1": 1, "conv2_1": 2, "conv3_1": 4, "conv4_1": 8, "conv4_2": 8, "conv5_1": 16}
    for b, f in feats.items():
        assert f.shape == (n[b], (32 // div[b]) * (48 // div[b])), b
        assert f.min() >= 0                                  # rectified, as in Gatys et al.
    assert rec.order[0] == "conv5_1" and rec.order[-1] == "conv1_1"


LAYER_CASES = [("all", 1.0, 1e3, gatys.STYLE_LAYERS), ("content", 1.0, 0.0, gatys.STYLE_LAYERS)] + \
    [(b, 0.0, 1.0, (b,)) for b in gatys.STYLE_LAYERS]


@pytest.mark.parametrize("case", LAYER_CASES, ids=[c[0] for c in LAYER_CASES])
def test_caffe_gradient_matches_finite_differences(random_vgg, images, case):
    """d(loss)/d(image) from the injected Caffe backward vs central differences of the loss.

    Along the gradient's own direction d = g/|g| the derivative is |g|, the largest signal
    there is; random directions drown in float32 noise and ReLU kinks of a random VGG.
    A missing or mis-scaled layer contribution changes <true gradient, d> and fails here.
    """
    _, cw, sw, layers = case
    content, style = images
    rec = gatys.StyleReconstructor(random_vgg, content_weight=cw, style_weight=sw, style_layers=layers)
    targets = rec.targets(content, style)
    x = np.random.RandomState(5).uniform(40, 215, size=content.shape)
    _, grad, _ = rec.loss_and_grad(x, targets)
    assert grad.shape == x.shape and np.isfinite(grad).all()
    norm = np.linalg.norm(grad)
    assert norm > 0
    d, h = grad / norm, 0.1
    num = (rec.loss_and_grad(x + h * d, targets)[0] - rec.loss_and_grad(x - h * d, targets)[0]) / (2 * h)
    assert num == pytest.approx(norm, rel=2e-3)


@pytest.mark.parametrize("case", LAYER_CASES, ids=[c[0] for c in LAYER_CASES])
def test_caffe_gradient_matches_finite_differences_along_random_directions(random_vgg, images, case):
    """The same gradient along 6 random directions that do not come from it.

    A direction built from the gradient cannot see pixels the gradient leaves out (zeroed
    pixels pass the test above); random Gaussian directions do. Each one carries only about
    |g| / sqrt(N) of signal, so the step is small (h = 0.003: ReLU kinks, not float32
    rounding, dominate the error of larger steps) and the 6 derivatives are compared as one
    vector: measured error <= 0.01 of its norm here; 5 % of the pixels zeroed gives >= 0.18,
    the 4x4 corner zeroed >= 0.033.
    """
    _, cw, sw, layers = case
    content, style = images
    rec = gatys.StyleReconstructor(random_vgg, content_weight=cw, style_weight=sw, style_layers=layers)
    targets = rec.targets(content, style)
    x = np.random.RandomState(5).uniform(40, 215, size=content.shape)
    grad = rec.loss_and_grad(x, targets)[1]
    dirs = np.random.RandomState(7).normal(size=(6,) + x.shape)
    h = 0.003
    num = np.array([(rec.loss_and_grad(x + h * d, targets)[0] - rec.loss_and_grad(x - h * d, targets)[0]) / (2 * h)
                    for d in dirs])
    ana = np.einsum("kij,ij->k", dirs, grad)
    assert np.linalg.norm(num - ana) <= 0.025 * np.linalg.norm(ana), (num, ana)


def test_segmented_backward_equals_sum_of_full_backwards(random_vgg):
    """Injecting every layer's gradient in one segmented pass == one full backward per layer, summed."""
    rec = gatys.StyleReconstructor(random_vgg)
    rng = np.random.RandomState(6)
    x = rng.uniform(0, 255, size=(32, 40))
    feats = rec.features(x)
    grads = {b: rng.normal(size=f.shape) for b, f in feats.items()}
    got = rec.backward(grads)
    want = np.zeros_like(got)
    for b in rec.order:
        blob = rec.net.blobs[b]
        blob.diff[...] = grads[b].reshape(blob.diff.shape)
        rec.net._backward(rec.writer[b], 0)
        want += rec.net.blobs["data"].diff[0].astype(np.float64).sum(axis=0)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_loss_falls_and_output_is_an_image(random_vgg, images, optimizer):
    content, style = images
    rec = gatys.StyleReconstructor(random_vgg)
    for init in ("noise", "content"):
        out, hist = rec.run(content, style, iterations=6, lr=4.0, init=init, seed=1, optimizer=optimizer)
        assert out.shape == content.shape and out.min() >= 0 and out.max() <= 255
        assert len(hist) >= 6 and min(hist[1:]) < hist[0] and hist[-1] < hist[0], hist
        final = rec.loss_and_grad(out, rec.targets(content, style))[0]
        assert final < hist[0]
    with pytest.raises(ValueError, match="init"):
        rec.run(content, style, iterations=1, init="zeros")
    with pytest.raises(ValueError, match="optimizer"):
        rec.run(content, style, iterations=1, optimizer="sgd")


def test_cli_writes_a_grey_png(random_vgg, images, tmp_path):
    from thermalnet import imageio
    content, style = images
    c, s, o = (str(tmp_path / n) for n in ("tn.png", "ir.png", "out/pp.png"))
    imageio.write_png(c, np.rint(content).astype(np.uint8))
    imageio.write_png(s, np.rint(style).astype(np.uint8))
    rc = gatys.main(["--vgg-weights", random_vgg, "--content", c, "--style", s, "--out", o, "--iterations", "3"])
    assert rc == 0
    out = imageio.read_ir(o)
    assert out.units == "brightness" and out.values.shape == content.shape
