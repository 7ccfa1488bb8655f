"""Eq. 1 as a Caffe Python layer: value and gradient against numpy, finite differences,
Caffe's own SoftmaxWithLoss / SigmoidCrossEntropyLoss, and clear set-up errors.

Scores and labels are random (SYNTHETIC) small blobs; the layer runs inside real
caffe.Net objects built from one-layer prototxt, as Caffe calls it in training.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from thermalnet import layout, spec

SHAPE = (2, 5, 3, 4)        # N, Q, H, W: small enough for finite differences


def _net_text(shape, loss_layer, loss_weight=1.0, param=None, loss_param=""):
    n, q, h, w = shape
    if param is not None:
        py = "python_param { module: \"digits_python_layers\" layer: \"%s\" param_str: '%s' }" \
             % (loss_layer, json.dumps(param))
    else:
        py = ""
    return """force_backward: true
layer { name: "scores" type: "Input" top: "scores" input_param { shape { dim: %d dim: %d dim: %d dim: %d } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: %d dim: 1 dim: %d dim: %d } } }
layer { name: "loss" type: "%s" bottom: "scores" bottom: "label" top: "loss" loss_weight: %r %s %s }
""" % (n, q, h, w, n, h, w, "Python" if param is not None else loss_layer, loss_weight, py, loss_param)


def _make_net(caffe, tmp_path, text, name="net.prototxt"):
    path = tmp_path / name
    path.write_text(text)
    return caffe.Net(str(path), caffe.TEST)


def _weights_file(tmp_path, weights, name="weights.txt"):
    path = tmp_path / name
    np.savetxt(str(path), np.asarray(weights, dtype=np.float64), fmt="%.10f")
    return str(path)


def _run(net, scores, labels):
    net.blobs["scores"].data[...] = scores
    net.blobs["label"].data[...] = labels
    loss = float(net.forward()["loss"].flat[0])
    net.backward()
    return loss, net.blobs["scores"].diff.copy()



def _assert_finite_differences(net, scores, labels, grad, count, seed, eps=1e-2):
    """Central differences of the loss at `count` random score entries equal the layer's gradient."""
    for flat in np.random.RandomState(seed).choice(scores.size, count, replace=False):
        idx = np.unravel_index(flat, scores.shape)
        plus, minus = scores.copy(), scores.copy()
        plus[idx] += eps
        minus[idx] -= eps
        fd = (_run(net, plus, labels)[0] - _run(net, minus, labels)[0]) / (2 * eps)
        assert fd == pytest.approx(grad[idx], abs=2e-4), idx

def eq1_numpy(scores, labels, weights, ignore_label=None):
    """Reference: L = -(1/#valid) sum v(y) log softmax(s)_y and its gradient, in float64."""
    s = scores.astype(np.float64)
    y = labels[:, 0].astype(np.int64)
    valid = np.ones(y.shape, bool) if ignore_label is None else (y != ignore_label)
    y_safe = np.where(valid, y, 0)
    shifted = s - s.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    n_idx, h_idx, w_idx = np.indices(y.shape)
    v = np.where(valid, np.asarray(weights)[y_safe], 0.0)
    norm = max(1.0, valid.sum())
    loss = -np.sum(v * log_p[n_idx, y_safe, h_idx, w_idx]) / norm
    grad = np.exp(log_p)
    grad[n_idx, y_safe, h_idx, w_idx] -= 1.0
    return loss, grad * v[:, None] / norm


def sigmoid_ce_numpy(scores, labels, weights, ignore_label=None):
    """Reference: one-hot targets t, L = -(1/#valid) sum v(y) sum_q [t log s + (1-t) log(1-s)]."""
    s = scores.astype(np.float64)
    y = labels[:, 0].astype(np.int64)
    valid = np.ones(y.shape, bool) if ignore_label is None else (y != ignore_label)
    t = (y[:, None] == np.arange(s.shape[1])[None, :, None, None]).astype(np.float64)
    sig = 1.0 / (1.0 + np.exp(-s))
    v = np.where(valid, np.asarray(weights)[np.where(valid, y, 0)], 0.0)
    norm = max(1, valid.sum())
    per = -(t * np.log(sig) + (1 - t) * np.log(1 - sig)).sum(axis=1)
    return np.sum(v * per) / norm, (sig - t) * v[:, None] / norm


@pytest.fixture
def data():
    rng = np.random.RandomState(7)
    scores = (rng.randn(*SHAPE) * 2).astype(np.float32)
    labels = rng.randint(0, SHAPE[1], size=(SHAPE[0], 1) + SHAPE[2:]).astype(np.float32)
    weights = rng.uniform(0.2, 3.0, SHAPE[1])
    return scores, labels, weights


@pytest.mark.parametrize("loss_weight", [1.0, 2.5])
def test_softmax_value_and_gradient_match_numpy(caffe, tmp_path, data, loss_weight):
    scores, labels, weights = data
    net = _make_net(caffe, tmp_path, _net_text(SHAPE, "WeightedSoftmaxLoss", loss_weight,
                                               {"class_weights": _weights_file(tmp_path, weights)}))
    loss, grad = _run(net, scores, labels)
    ref_loss, ref_grad = eq1_numpy(scores, labels, weights)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    np.testing.assert_allclose(grad, loss_weight * ref_grad, rtol=1e-4, atol=1e-7)


def test_softmax_gradient_matches_finite_differences(caffe, tmp_path, data):
    scores, labels, weights = data
    net = _make_net(caffe, tmp_path, _net_text(SHAPE, "WeightedSoftmaxLoss", 1.0,
                                               {"class_weights": _weights_file(tmp_path, weights)}))
    _, grad = _run(net, scores, labels)
    _assert_finite_differences(net, scores, labels, grad, count=30, seed=3)


def test_softmax_is_numerically_stable(caffe, tmp_path, data):
    scores, labels, weights = data
    net = _make_net(caffe, tmp_path, _net_text(SHAPE, "WeightedSoftmaxLoss", 1.0,
                                               {"class_weights": _weights_file(tmp_path, weights)}))
    big = scores * 1000.0
    loss, grad = _run(net, big, labels)
    ref_loss, ref_grad = eq1_numpy(big, labels, weights)
    assert np.isfinite(loss) and np.all(np.isfinite(grad))
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    np.testing.assert_allclose(grad, ref_grad, atol=1e-6)


@pytest.mark.parametrize("offset", [-15.0, 15.0, -60.0, 45.0, -200.0])
def test_softmax_both_exp_paths_match_numpy(caffe, tmp_path, data, offset):
    """Scores shifted so that log Z lies inside the unshifted exp's bound (+-15) or outside
    it (-60, +45: the max-shifted softmax; -200: every exp underflows)."""
    scores, labels, weights = data
    net = _make_net(caffe, tmp_path, _net_text(SHAPE, "WeightedSoftmaxLoss", 1.0,
                                               {"class_weights": _weights_file(tmp_path, weights)}))
    moved = scores + np.float32(offset)
    loss, grad = _run(net, moved, labels)
    ref_loss, ref_grad = eq1_numpy(moved, labels, weights)
    assert np.isfinite(loss) and np.all(np.isfinite(grad))
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("ignore", [None, 3])
def test_unit_weights_equal_caffe_softmax_with_loss(caffe, tmp_path, ignore):
    shape = (2, spec.NUM_BINS, 6, 7)
    rng = np.random.RandomState(11)
    scores = (rng.randn(*shape) * 3).astype(np.float32)
    labels = rng.randint(0, spec.NUM_BINS, size=(2, 1, 6, 7)).astype(np.float32)
    param = {"class_weights": _weights_file(tmp_path, np.ones(spec.NUM_BINS))}
    loss_param = ""
    if ignore is not None:
        param["ignore_label"] = ignore
        loss_param = "loss_param { ignore_label: %d }" % ignore
        assert (labels == ignore).any()
    ours = _make_net(caffe, tmp_path, _net_text(shape, "WeightedSoftmaxLoss", 1.0, param), "ours.prototxt")
    theirs = _make_net(caffe, tmp_path, _net_text(shape, "SoftmaxWithLoss", 1.0, None, loss_param), "theirs.prototxt")
    loss_a, grad_a = _run(ours, scores, labels)
    loss_b, grad_b = _run(theirs, scores, labels)
    assert loss_a == pytest.approx(loss_b, rel=1e-5)
    np.testing.assert_allclose(grad_a, grad_b, rtol=1e-4, atol=1e-8)
    ref_loss, _ = eq1_numpy(scores, labels, np.ones(spec.NUM_BINS), ignore)
    assert loss_a == pytest.approx(ref_loss, rel=1e-5)


@pytest.mark.parametrize("loss_weight,ignore", [(1.0, None), (2.5, None), (0.5, 3)])
def test_sigmoid_variant_matches_numpy_and_finite_differences(caffe, tmp_path, data, loss_weight, ignore):
    """Caffe scales a loss layer's top diff by loss_weight: the gradient must follow it."""
    scores, labels, weights = data
    param = {"class_weights": _weights_file(tmp_path, weights)}
    if ignore is not None:
        param["ignore_label"] = ignore
        assert (labels == ignore).any() and (labels != ignore).any()
    net = _make_net(caffe, tmp_path, _net_text(SHAPE, "WeightedSigmoidCrossEntropyLoss", loss_weight, param))
    loss, grad = _run(net, scores, labels)
    ref_loss, ref_grad = sigmoid_ce_numpy(scores, labels, weights, ignore)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    np.testing.assert_allclose(grad, loss_weight * ref_grad, rtol=1e-4, atol=1e-7)
    if loss_weight == 1.0:
        _assert_finite_differences(net, scores, labels, grad, count=20, seed=5)


def test_sigmoid_unit_weights_equal_caffe_sigmoid_cross_entropy(caffe, tmp_path, data):
    """Caffe's layer takes the one-hot targets and divides by N only; ours divides by N*H*W."""
    scores, labels, _ = data
    n, q, h, w = SHAPE
    ours = _make_net(caffe, tmp_path, _net_text(SHAPE, "WeightedSigmoidCrossEntropyLoss", 1.0,
                                                {"class_weights": _weights_file(tmp_path, np.ones(q))}), "a.prototxt")
    loss_a, grad_a = _run(ours, scores, labels)
    text = """force_backward: true
layer { name: "scores" type: "Input" top: "scores" input_param { shape { dim: %d dim: %d dim: %d dim: %d } } }
layer { name: "target" type: "Input" top: "target" input_param { shape { dim: %d dim: %d dim: %d dim: %d } } }
layer { name: "loss" type: "SigmoidCrossEntropyLoss" bottom: "scores" bottom: "target" top: "loss" }
""" % (SHAPE + SHAPE)
    theirs = _make_net(caffe, tmp_path, text, "b.prototxt")
    theirs.blobs["scores"].data[...] = scores
    theirs.blobs["target"].data[...] = (labels.astype(int) == np.arange(q)[None, :, None, None])
    loss_b = float(theirs.forward()["loss"].flat[0])
    theirs.backward()
    assert loss_a == pytest.approx(loss_b / (h * w), rel=1e-5)
    np.testing.assert_allclose(grad_a, theirs.blobs["scores"].diff / (h * w), rtol=1e-4, atol=1e-8)


def _setup_error(caffe, tmp_path, param, layer="WeightedSoftmaxLoss"):
    text = _net_text(SHAPE, layer, 1.0, param)
    with pytest.raises(Exception) as info:
        _make_net(caffe, tmp_path, text)
    message = str(info.value)
    assert "\n" not in message.strip(), message
    return message


@pytest.mark.parametrize("layer", ["WeightedSoftmaxLoss", "WeightedSigmoidCrossEntropyLoss"])
def test_missing_weights_file_is_a_clear_setup_error(caffe, tmp_path, layer):
    missing = str(tmp_path / "no_such_weights.txt")
    message = _setup_error(caffe, tmp_path, {"class_weights": missing}, layer)
    assert missing in message and "no such file" in message


@pytest.mark.parametrize("content,needle", [
    ("1\n2\n3\n", "has 3 weights but the network scores 5 classes"),
    ("1\n2\n-3\n4\n5\n", "negative"),
    ("1\n2\nnan\n4\n5\n", "non-finite"),
    ("1\n2\nthree\n4\n5\n", "is not a number"),
])
def test_bad_weights_file_is_a_clear_setup_error(caffe, tmp_path, content, needle):
    path = tmp_path / "bad_weights.txt"
    path.write_text(content)
    message = _setup_error(caffe, tmp_path, {"class_weights": str(path)})
    assert str(path) in message and needle in message, message


def test_bad_param_str_is_a_clear_setup_error(caffe, tmp_path):
    assert "class_weights" in _setup_error(caffe, tmp_path, {})
    assert "unknown param_str keys" in _setup_error(caffe, tmp_path, {"class_weights": "w.txt", "lambda": 1})


def test_relative_weights_path_uses_cwd_then_dataset_env(caffe, tmp_path, data, monkeypatch):
    scores, labels, weights = data
    ds = tmp_path / "dataset"
    ds.mkdir()
    _weights_file(ds, weights, layout.CLASS_WEIGHTS_FILE)
    text = _net_text(SHAPE, "WeightedSoftmaxLoss", 1.0, {"class_weights": layout.CLASS_WEIGHTS_FILE})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.delenv("THERMALNET_DATASET", raising=False)
    with pytest.raises(Exception, match="THERMALNET_DATASET, which is not set"):
        _make_net(caffe, tmp_path, text)
    monkeypatch.setenv("THERMALNET_DATASET", str(ds))
    loss, _ = _run(_make_net(caffe, tmp_path, text), scores, labels)
    assert loss == pytest.approx(eq1_numpy(scores, labels, weights)[0], rel=1e-5)
    # The working directory wins over the environment (a DIGITS job folder).
    _weights_file(elsewhere, np.ones(SHAPE[1]), layout.CLASS_WEIGHTS_FILE)
    loss, _ = _run(_make_net(caffe, tmp_path, text), scores, labels)
    assert loss == pytest.approx(eq1_numpy(scores, labels, np.ones(SHAPE[1]))[0], rel=1e-5)


def test_label_out_of_range_and_bad_shape_are_errors(caffe, tmp_path, data):
    scores, labels, weights = data
    param = {"class_weights": _weights_file(tmp_path, weights)}
    net = _make_net(caffe, tmp_path, _net_text(SHAPE, "WeightedSoftmaxLoss", 1.0, param))
    bad = labels.copy()
    bad[0, 0, 0, 0] = SHAPE[1]
    net.blobs["scores"].data[...] = scores
    net.blobs["label"].data[...] = bad
    with pytest.raises(Exception, match="outside the class indices 0..4"):
        net.forward()
    text = _net_text(SHAPE, "WeightedSoftmaxLoss", 1.0, param).replace("dim: 1 dim: 3 dim: 4", "dim: 1 dim: 4 dim: 3")
    with pytest.raises(Exception, match="label shape"):
        _make_net(caffe, tmp_path, text, "shape.prototxt")


def test_layer_file_stands_alone():
    """DIGITS uploads digits_python_layers.py by itself: it may import only numpy and caffe."""
    import ast

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "prototxt",
                        "digits_python_layers.py")
    with open(path) as f:
        tree = ast.parse(f.read())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported <= {"__future__", "json", "os", "numpy", "caffe"}, imported


@pytest.mark.parametrize("layer,ref,ignore", [("WeightedSoftmaxLoss", eq1_numpy, None),
                                              ("WeightedSoftmaxLoss", eq1_numpy, 3),
                                              ("WeightedSigmoidCrossEntropyLoss", sigmoid_ce_numpy, None)])
def test_new_shape_reallocates_and_steps_allocate_nothing_big(caffe, tmp_path, layer, ref, ignore):
    """The layer keeps float32 buffers sized in reshape: a second shape must still be
    right, and a training step (forward + backward) must not allocate anything near
    an N x Q x H x W array (no one-hot, no float64 copies)."""
    import tracemalloc

    rng = np.random.RandomState(5)
    q = spec.NUM_BINS
    weights = rng.uniform(0.2, 3.0, q)
    param = {"class_weights": _weights_file(tmp_path, weights)}
    if ignore is not None:
        param["ignore_label"] = ignore
    net = _make_net(caffe, tmp_path, _net_text((2, q, 8, 10), layer, 1.0, param))
    for shape in ((2, q, 8, 10), (3, q, 24, 32)):
        net.blobs["scores"].reshape(*shape)
        net.blobs["label"].reshape(shape[0], 1, shape[2], shape[3])
        net.reshape()
        scores = (rng.randn(*shape) * 3).astype(np.float32)
        labels = rng.randint(0, q, size=(shape[0], 1) + shape[2:]).astype(np.float32)
        loss, grad = _run(net, scores, labels)
        ref_loss, ref_grad = ref(scores, labels, weights) if ignore is None else ref(scores, labels, weights, ignore)
        assert loss == pytest.approx(ref_loss, rel=1e-5), shape
        np.testing.assert_allclose(grad, ref_grad, rtol=1e-4, atol=1e-8)
    big = scores.nbytes                                # one N x Q x H x W float32 array
    tracemalloc.start()
    try:
        for _ in range(3):
            net.forward()
            net.backward()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < big // 8, "a step allocated %d bytes (scores are %d)" % (peak, big)
