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


# --- Pinned by mutation testing (results/mutation/eq1_layer.json): exact messages, edge inputs ---

def _raw_net_text(param_str, layer="WeightedSoftmaxLoss", scores=SHAPE, label=None, bottoms=("scores", "label"),
                  tops=("loss",), force_backward=True):
    """A one-layer net with param_str written as given (not built from a dict) and free blob shapes."""
    label = label if label is not None else (scores[0], 1) + tuple(scores[2:])
    dims = lambda shape: " ".join("dim: %d" % d for d in shape)
    return """%s
layer { name: "scores" type: "Input" top: "scores" input_param { shape { %s } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { %s } } }
layer { name: "loss" type: "Python" %s %s %s
        python_param { module: "digits_python_layers" layer: "%s" param_str: '%s' } }
""" % ("force_backward: true" if force_backward else "", dims(scores), dims(label),
       " ".join('bottom: "%s"' % b for b in bottoms), " ".join('top: "%s"' % t for t in tops),
       "loss_weight: 1" if len(tops) == 1 else "", layer, param_str)


def _raw_setup_error(caffe, tmp_path, text):
    with pytest.raises(Exception) as info:
        _make_net(caffe, tmp_path, text, "raw.prototxt")
    return str(info.value).strip()


def _layer_module(caffe):
    """The module Caffe imports for `module: "digits_python_layers"` (the same sys.modules entry)."""
    import importlib

    return importlib.import_module("digits_python_layers")


def test_weights_file_comments_blank_lines_and_zero_weight(caffe, tmp_path, data):
    """'#' starts a comment, blank and comment-only lines anywhere are skipped, and a weight
    of 0 is allowed (it switches a class off); the five numbers below are v(0..4)."""
    scores, labels, _ = data
    path = tmp_path / "commented.txt"
    path.write_text("# v(q) for q = 0..4, written by hand\n1.5   # q = 0\n0     # q = 1: switched off\n\n"
                    "2.25\n   \n0.5\n# the last class\n3\n")
    net = _make_net(caffe, tmp_path, _net_text(SHAPE, "WeightedSoftmaxLoss", 1.0, {"class_weights": str(path)}))
    loss, grad = _run(net, scores, labels)
    ref_loss, ref_grad = eq1_numpy(scores, labels, [1.5, 0.0, 2.25, 0.5, 3.0])
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("content,tail", [
    ("1\n2\n\nthree\n5\n", ": line 4: 'three' is not a number"),
    ("1\n-0.5\n1\n1\n1\n", ": contains negative weights"),
    ("1\n2\n3\n", ": has 3 weights but the network scores 5 classes (conv10 num_output)"),
])
def test_weights_file_error_message_is_exact(caffe, tmp_path, content, tail):
    """The whole message: the file as given (an absolute path: no '(from ...)'), the 1-based
    line of a bad token, and that even a small negative weight is refused."""
    path = tmp_path / "bad.txt"
    path.write_text(content)
    assert _setup_error(caffe, tmp_path, {"class_weights": str(path)}) == "class weights file %s%s" % (path, tail)


def test_weights_file_via_dataset_env_names_both_paths(caffe, tmp_path, monkeypatch):
    """A relative name found through $THERMALNET_DATASET: errors name the file read and the
    name given; a name found nowhere names the folders tried, the variable's value included."""
    ds = tmp_path / "dataset"
    ds.mkdir()
    (ds / "short.txt").write_text("1\n2\n3\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("THERMALNET_DATASET", str(ds))
    assert _setup_error(caffe, tmp_path, {"class_weights": "short.txt"}) == (
        "class weights file %s (from short.txt): has 3 weights but the network scores 5 classes "
        "(conv10 num_output)" % os.path.join(str(ds), "short.txt"))
    assert _setup_error(caffe, tmp_path, {"class_weights": "missing.txt"}) == (
        "class weights file missing.txt: no such file (relative paths are tried in the working directory "
        "%s, then in $THERMALNET_DATASET=%s)" % (os.getcwd(), ds))


def test_unreadable_weights_file_is_a_clear_setup_error(caffe, tmp_path, monkeypatch):
    """A file that exists but cannot be read (bytes that are not text; an I/O error) is the
    same one-line ValueError naming the file, not a traceback from open()."""
    path = tmp_path / "binary.txt"
    path.write_bytes(b"1\n\xff\xfe\n1\n1\n1\n")
    message = _setup_error(caffe, tmp_path, {"class_weights": str(path)})
    assert message.startswith("class weights file %s: unreadable (" % path) and "0xff" in message, message

    def failing_open(*args, **kwargs):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(_layer_module(caffe), "open", failing_open, raising=False)
    path.write_text("1\n1\n1\n1\n1\n")
    assert _setup_error(caffe, tmp_path, {"class_weights": str(path)}) == (
        "class weights file %s: unreadable ([Errno 5] Input/output error)" % path)


@pytest.mark.parametrize("param_str,expected", [
    (" ", 'WeightedSoftmaxLoss: param_str needs "class_weights": path of the Q-line weights file'),
    ('["w.txt"]', "WeightedSoftmaxLoss: param_str must be a JSON object, got '[\"w.txt\"]'"),
    ('{"class_weights": "w.txt", "ignore_label": "3"}', "WeightedSoftmaxLoss: ignore_label must be an integer, got '3'"),
    ('{"class_weights": "w.txt", "ignore_label": true}', "WeightedSoftmaxLoss: ignore_label must be an integer, got True"),
    ('{"class_weights": "w.txt", "ignore_label": 2.5}', "WeightedSoftmaxLoss: ignore_label must be an integer, got 2.5"),
])
def test_bad_param_str_message_is_exact(caffe, tmp_path, param_str, expected):
    """A blank param_str is 'no parameters' (so class_weights is missing), not bad JSON; a
    JSON list, a string, a boolean or a fraction as ignore_label are each refused by name."""
    assert _raw_setup_error(caffe, tmp_path, _raw_net_text(param_str)) == expected


def test_param_str_that_is_not_json_is_a_clear_setup_error(caffe, tmp_path):
    """Unquoted keys (a common hand-editing slip in DIGITS' form): our message, with the text."""
    message = _raw_setup_error(caffe, tmp_path, _raw_net_text("{class_weights: w.txt}"))
    assert message.startswith("WeightedSoftmaxLoss: param_str is not JSON (") \
        and message.endswith("): '{class_weights: w.txt}'"), message


def test_wrong_blob_counts_and_scores_rank_are_clear_setup_errors(caffe, tmp_path):
    """Miswired prototxt fails at set-up with the counts or the scores' shape in the message."""
    param_str = json.dumps({"class_weights": "w.txt"})
    assert _raw_setup_error(caffe, tmp_path, _raw_net_text(param_str, bottoms=("scores",))) == (
        "WeightedSoftmaxLoss needs two bottoms (scores N x Q x H x W, label N x 1 x H x W), got 1")
    assert _raw_setup_error(caffe, tmp_path, _raw_net_text(param_str, tops=("loss", "extra"))) == (
        "WeightedSoftmaxLoss has one top (the loss), got 2")
    assert _raw_setup_error(caffe, tmp_path, _raw_net_text(param_str, scores=(2, 5, 3), label=(2, 1, 3, 4))) == (
        "WeightedSoftmaxLoss: scores must be N x Q x H x W, got shape (2, 5, 3)")


def test_label_blob_n_h_w_is_accepted_and_mismatch_message_is_exact(caffe, tmp_path, data):
    """Labels may come as N x H x W (no channel axis); any other shape names both shapes."""
    scores, labels, weights = data
    param_str = json.dumps({"class_weights": _weights_file(tmp_path, weights)})
    n, q, h, w = SHAPE
    net = _make_net(caffe, tmp_path, _raw_net_text(param_str, label=(n, h, w)), "nhw.prototxt")
    net.blobs["scores"].data[...] = scores
    net.blobs["label"].data[...] = labels[:, 0]
    loss = float(net.forward()["loss"].flat[0])
    assert loss == pytest.approx(eq1_numpy(scores, labels, weights)[0], rel=1e-5)
    assert _raw_setup_error(caffe, tmp_path, _raw_net_text(param_str, label=(n, 1, w, h))) == (
        "WeightedSoftmaxLoss: label shape (2, 1, 4, 3) does not match scores (2, 5, 3, 4) (want (2, 1, 3, 4))")


def test_caffe_total_loss_is_loss_weight_times_eq1(caffe, tmp_path, data):
    """The loss Caffe sums for the solver's log (and DIGITS' loss graph) is loss_weight x the
    top's entries: the top must be one number, not a vector that multiplies it."""
    scores, labels, weights = data
    net = _make_net(caffe, tmp_path, _net_text(SHAPE, "WeightedSoftmaxLoss", 2.5,
                                               {"class_weights": _weights_file(tmp_path, weights)}))
    net.blobs["scores"].data[...] = scores
    net.blobs["label"].data[...] = labels
    total = net._forward(0, len(net.layers) - 1)
    assert net.blobs["loss"].data.shape == (1,)
    assert total == pytest.approx(2.5 * eq1_numpy(scores, labels, weights)[0], rel=1e-5)


def _softmax_net(caffe, tmp_path, weights, ignore=None):
    """The softmax variant at loss_weight 1 over SHAPE, with these class weights and ignore_label."""
    param = {"class_weights": _weights_file(tmp_path, weights)}
    if ignore is not None:
        param["ignore_label"] = ignore
    return _make_net(caffe, tmp_path, _net_text(SHAPE, "WeightedSoftmaxLoss", 1.0, param))


@pytest.mark.parametrize("ignore", [None, 255])
@pytest.mark.parametrize("bad", [-1.0, 5.0, 1.5])
def test_bad_label_message_names_the_offending_value(caffe, tmp_path, data, ignore, bad):
    """Before the bad pixel sit an ignored 255 (when ignore_label is 255), a 0, a 3 and a
    0.001 (within the 1e-3 tolerance): none of them may be the value reported."""
    scores, labels, weights = data
    net = _softmax_net(caffe, tmp_path, weights, ignore)
    labels = labels.copy()
    labels.reshape(-1)[:6] = [255.0 if ignore is not None else 1.0, 0.0, 3.0, np.float32(0.001), 2.0, bad]
    net.blobs["scores"].data[...] = scores
    net.blobs["label"].data[...] = labels
    with pytest.raises(Exception) as info:
        net.forward()
    assert str(info.value).strip() == "WeightedSoftmaxLoss: label %r outside the class indices 0..4" % bad


def test_bad_label_message_names_the_first_of_several(caffe, tmp_path, data):
    """The message reports the first bad label in N, H, W order (-1 before the 7)."""
    scores, labels, weights = data
    net = _make_net(caffe, tmp_path, _net_text(SHAPE, "WeightedSoftmaxLoss", 1.0,
                                               {"class_weights": _weights_file(tmp_path, weights)}))
    labels = labels.copy()
    labels.reshape(-1)[[2, 10]] = [-1.0, 7.0]
    net.blobs["scores"].data[...] = scores
    net.blobs["label"].data[...] = labels
    with pytest.raises(Exception, match=r"label -1\.0 outside"):
        net.forward()


@pytest.mark.parametrize("ignore", [None, 255])
def test_labels_within_tolerance_are_rounded_not_refused(caffe, tmp_path, data, ignore):
    """Labels stored as floats are accepted up to 1e-3 from an integer, the bound included
    (0.001 itself), and count as that integer."""
    scores, labels, weights = data
    net = _softmax_net(caffe, tmp_path, weights, ignore)
    noisy = labels.copy()
    noisy.reshape(-1)[:4] = [np.float32(0.001), 2.0005, 3.9995, 255.0 if ignore is not None else 1.0]
    loss, grad = _run(net, scores, noisy)
    ref_loss, ref_grad = eq1_numpy(scores, np.rint(noisy), weights, ignore)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-4, atol=1e-7)


def test_normalisation_with_no_or_one_valid_pixel(caffe, tmp_path):
    """Worked by hand. All pixels ignored: loss 0 and gradient 0 (divide by max(1, 0)).
    One valid pixel with all scores 0 and label 2 of weight 1.5: p = 1/5 in every bin, so
    L = 1.5 ln 5 and the gradient there is 1.5 (0.2 - [q = 2]) = (.3, .3, -1.2, .3, .3)."""
    weights = [1.0, 1.0, 1.5, 1.0, 1.0]
    net = _make_net(caffe, tmp_path, _net_text(SHAPE, "WeightedSoftmaxLoss", 1.0,
                                               {"class_weights": _weights_file(tmp_path, weights),
                                                "ignore_label": 255}))
    scores = np.zeros(SHAPE, np.float32)
    labels = np.full((SHAPE[0], 1) + SHAPE[2:], 255.0, np.float32)
    loss, grad = _run(net, scores, labels)
    assert loss == 0.0 and not grad.any()
    labels[1, 0, 2, 3] = 2.0
    loss, grad = _run(net, scores, labels)
    assert loss == pytest.approx(1.5 * np.log(5.0), rel=1e-6)
    expected = np.zeros(SHAPE)
    expected[1, :, 2, 3] = [0.3, 0.3, -1.2, 0.3, 0.3]
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-7)


def test_one_class_sigmoid_with_ignore_label(caffe, tmp_path):
    """Q = 1 (a single sigmoid; the target is 1 on every valid pixel) with ignore_label 255:
    ignored pixels must not become an out-of-range label index. By hand, scores 0 and v = 2:
    each of the 18 valid pixels costs 2 ln 2 and has gradient 2 (1/2 - 1) / 18 = -1/18."""
    shape = (2, 1, 3, 4)
    net = _make_net(caffe, tmp_path, _net_text(shape, "WeightedSigmoidCrossEntropyLoss", 1.0,
                                               {"class_weights": _weights_file(tmp_path, [2.0]),
                                                "ignore_label": 255}))
    labels = np.zeros((2, 1, 3, 4), np.float32)
    labels[0, 0, 1] = 255.0          # 4 ignored pixels
    labels[1, 0, 0, :2] = 255.0      # and 2 more: 18 valid
    loss, grad = _run(net, np.zeros(shape, np.float32), labels)
    assert loss == pytest.approx(2.0 * np.log(2.0), rel=1e-6)
    np.testing.assert_allclose(grad, np.where(labels == 255.0, 0.0, -1.0 / 18.0), rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("s,fast", [(30.0, True), (30.25, False), (-30.0, True), (-30.25, False), (0.0, True)])
def test_unshifted_exp_is_used_exactly_inside_the_documented_bounds(caffe, tmp_path, s, fast):
    """WeightedSoftmaxLoss' docstring: the unshifted exp when every Z lies in [exp(-30),
    exp(30)], the bounds included. Each pixel scores s in bin 2 and -200 (exp = 0 in float32)
    elsewhere, so Z = exp(s); the layer's buffer then holds exp(s) (fast) or exp(0) = 1 (shifted)
    in bin 2. Label 2 everywhere: p = 1, loss 0 either way."""
    weights = np.ones(SHAPE[1])
    net = _make_net(caffe, tmp_path, _net_text(SHAPE, "WeightedSoftmaxLoss", 1.0,
                                               {"class_weights": _weights_file(tmp_path, weights)}))
    scores = np.full(SHAPE, -200.0, np.float32)
    scores[:, 2] = s
    loss, _ = _run(net, scores, np.full((SHAPE[0], 1) + SHAPE[2:], 2.0, np.float32))
    assert loss == pytest.approx(0.0, abs=1e-5)
    held = net.layer_dict["loss"].big[:, 2]
    np.testing.assert_allclose(held, np.exp(s) if fast else 1.0, rtol=1e-6)


def _training_like_net(caffe, tmp_path, layer, param):
    """As in a training net without force_backward: the scores come from a learned layer (a 1x1
    convolution set to the identity), the labels from a data layer, so Caffe asks the loss for
    the scores' gradient only (propagate_down = [True, False])."""
    n, q, h, w = SHAPE
    text = """layer { name: "data" type: "Input" top: "data" input_param { shape { dim: %d dim: %d dim: %d dim: %d } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: %d dim: 1 dim: %d dim: %d } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "scores"
        convolution_param { num_output: %d kernel_size: 1 bias_term: false } }
layer { name: "loss" type: "Python" bottom: "scores" bottom: "label" top: "loss" loss_weight: 1
        python_param { module: "digits_python_layers" layer: "%s" param_str: '%s' } }
""" % (n, q, h, w, n, h, w, q, layer, json.dumps(param))
    net = _make_net(caffe, tmp_path, text, "train.prototxt")
    net.params["conv"][0].data[...] = np.eye(q).reshape(q, q, 1, 1)
    return net


@pytest.mark.parametrize("layer,ref", [("WeightedSoftmaxLoss", eq1_numpy),
                                       ("WeightedSigmoidCrossEntropyLoss", sigmoid_ce_numpy)])
def test_label_diff_is_zeroed_only_when_asked(caffe, tmp_path, data, layer, ref):
    """force_backward makes Caffe ask for the label's gradient too: it is 0 (labels have none).
    In a training net it is not asked for: the scores' gradient still comes back and the label
    blob's diff is left as it was (a layer writes only the diffs it is asked for)."""
    scores, labels, weights = data
    param = {"class_weights": _weights_file(tmp_path, weights)}
    forced = _make_net(caffe, tmp_path, _net_text(SHAPE, layer, 1.0, param))
    forced.blobs["label"].diff[...] = 7.0
    _run(forced, scores, labels)
    assert not forced.blobs["label"].diff.any()

    net = _training_like_net(caffe, tmp_path, layer, param)
    net.blobs["data"].data[...] = scores
    net.blobs["label"].data[...] = labels
    net.blobs["label"].diff[...] = 7.0
    net.forward()
    net.backward()
    np.testing.assert_allclose(net.blobs["scores"].diff, ref(scores, labels, weights)[1], rtol=1e-4, atol=1e-7)
    assert np.all(net.blobs["label"].diff == 7.0)
