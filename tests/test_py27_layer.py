"""The eq. 1 layer file under Python 2.7 + numpy 1.16, as DIGITS 6 runs it.

DIGITS uploads prototxt/digits_python_layers.py as it is and runs it in its Python
2.7 with an old numpy. Compiling is not enough (numpy calls newer than 1.16 only fail
when run), so a small Python 2 script imports the file with a minimal stand-in for
the `caffe` module (only caffe.Layer, which the file subclasses), runs setup,
reshape, forward and backward on inputs written by this test (.npy, SYNTHETIC
random), and the results are compared with the same layers run in the real Caffe
under Python 3. tools/py27_env.sh finds the interpreter and caches numpy 1.16.6.

Where no Python 2.7 exists, the test is skipped with a warning that says what was
not verified.
"""
from __future__ import annotations

import json
import os
import subprocess
import warnings

import numpy as np
import pytest

from test_loss_layer import _make_net, _net_text, _weights_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY27_ENV = os.path.join(REPO, "tools", "py27_env.sh")
LAYERS = ("WeightedSoftmaxLoss", "WeightedSigmoidCrossEntropyLoss")
# Two shapes: the second checks that reshape re-allocates the layer's buffers.
SHAPES = ((2, 5, 3, 4), (3, 5, 6, 2))
NOT_VERIFIED = ("NOT VERIFIED: prototxt/digits_python_layers.py was not run under Python 2.7 + numpy 1.16 "
                "(what DIGITS 6 runs)")

FAKE_CAFFE = "class Layer(object):\n    \"\"\"Stand-in for caffe.Layer: the layer file only subclasses it.\"\"\"\n"

PY2_SCRIPT = r'''
import json, sys
import numpy as np
cfg = json.load(open(sys.argv[1]))
sys.path[:0] = [cfg["fake_caffe"], cfg["layer_dir"]]
import digits_python_layers as dpl

class Blob(object):
    def __init__(self, data):
        self.data = data
        self.diff = np.zeros_like(data)
        self.shape = data.shape
    def reshape(self, *shape):
        self.data = np.zeros(shape, np.float32)
        self.diff = np.zeros(shape, np.float32)
        self.shape = self.data.shape

out = {"numpy": np.__version__, "python": list(sys.version_info[:3]), "results": []}
for case in cfg["cases"]:
    layer = getattr(dpl, case["layer"])()
    layer.param_str = json.dumps(case["param"])
    bottom = [Blob(np.load(case["scores_0"])), Blob(np.load(case["labels_0"]))]
    top = [Blob(np.zeros(1, np.float32))]
    layer.setup(bottom, top)
    for k in range(len(case["shapes"])):
        bottom = [Blob(np.load(case["scores_%d" % k])), Blob(np.load(case["labels_%d" % k]))]
        layer.reshape(bottom, top)
        layer.forward(bottom, top)
        top[0].diff[...] = case["top_diff"]
        layer.backward(top, [True, False], bottom)
        np.save(case["grad_%d" % k], bottom[0].diff)
        out["results"].append(float(top[0].data.flat[0]))
    bad = np.load(case["labels_0"]).copy()
    bad.flat[0] = 99
    try:
        bottom = [Blob(np.load(case["scores_0"])), Blob(bad)]
        layer.reshape(bottom, top)
        layer.forward(bottom, top)
        out["results"].append("no error")
    except ValueError as exc:
        out["results"].append(str(exc))
json.dump(out, open(sys.argv[2], "w"))
'''


def py27_env():
    """(python2.7, site folder with numpy 1.16) from tools/py27_env.sh, or a loud skip."""
    proc = subprocess.run(["bash", PY27_ENV], capture_output=True, text=True)
    if proc.returncode != 0:
        why = (proc.stderr.strip().splitlines() or ["tools/py27_env.sh exited %d" % proc.returncode])[-1]
        warnings.warn("%s: %s" % (NOT_VERIFIED, why))
        pytest.skip("%s: %s" % (NOT_VERIFIED, why))
    env = dict(line.split("=", 1) for line in proc.stdout.strip().splitlines() if "=" in line)
    return env["PY27"], env["PY27_SITE"]


def _py3_caffe(caffe, tmp_path, layer, param, scores, labels, top_diff):
    """The same layer in the real Caffe under Python 3: (loss, gradient)."""
    net = _make_net(caffe, tmp_path, _net_text(scores.shape, layer, top_diff, param), "py3_%s.prototxt" % layer)
    net.blobs["scores"].data[...] = scores
    net.blobs["label"].data[...] = labels
    loss = float(net.forward()["loss"].flat[0])      # the top holds the loss; loss_weight scales the diff
    net.backward()
    return loss, net.blobs["scores"].diff.copy()


@pytest.mark.parametrize("ignore", [None, 2])
def test_layer_forward_backward_under_python27_match_python3(caffe, tmp_path, ignore):
    py2, site = py27_env()
    rng = np.random.RandomState(17)
    weights = rng.uniform(0.2, 3.0, SHAPES[0][1])
    param = {"class_weights": _weights_file(tmp_path, weights)}
    if ignore is not None:
        param["ignore_label"] = ignore
    (tmp_path / "fake_caffe").mkdir()
    (tmp_path / "fake_caffe" / "caffe.py").write_text(FAKE_CAFFE)
    cases, expected = [], []
    for layer in LAYERS:
        case = {"layer": layer, "param": param, "shapes": [list(s) for s in SHAPES], "top_diff": 1.5}
        for k, shape in enumerate(SHAPES):
            scores = (rng.randn(*shape) * 3).astype(np.float32)
            labels = rng.randint(0, shape[1], size=(shape[0], 1) + shape[2:]).astype(np.float32)
            if ignore is not None:
                labels.flat[1] = ignore
            for key, arr in (("scores", scores), ("labels", labels)):
                path = str(tmp_path / ("%s_%s_%d.npy" % (layer, key, k)))
                np.save(path, arr)
                case["%s_%d" % (key, k)] = path
            case["grad_%d" % k] = str(tmp_path / ("%s_grad_%d.npy" % (layer, k)))
            expected.append((layer, k) + _py3_caffe(caffe, tmp_path, layer, param, scores, labels, 1.5))
        cases.append(case)
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"fake_caffe": str(tmp_path / "fake_caffe"),
                               "layer_dir": os.path.join(REPO, "prototxt"), "cases": cases}))
    (tmp_path / "run27.py").write_text(PY2_SCRIPT)
    env = dict(os.environ, PYTHONPATH=site, PYTHONNOUSERSITE="1")
    proc = subprocess.run([py2, str(tmp_path / "run27.py"), str(cfg), str(tmp_path / "out.json")],
                          capture_output=True, text=True, env=env, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["python"][:2] == [2, 7] and out["numpy"] == "1.16.6", out
    results = list(out["results"])
    for layer in LAYERS:
        for k in range(len(SHAPES)):
            loss27 = results.pop(0)
            _, _, loss3, grad3 = expected.pop(0)
            grad27 = np.load(str(tmp_path / ("%s_grad_%d.npy" % (layer, k))))
            assert loss27 == pytest.approx(loss3, rel=1e-5), (layer, k)
            np.testing.assert_allclose(grad27, grad3, rtol=1e-4, atol=1e-7, err_msg="%s shape %d" % (layer, k))
            if ignore is not None:
                g = grad27.reshape(grad27.shape[0], grad27.shape[1], -1)
                assert not g[0, :, 1].any(), "ignored pixel got a gradient under Python 2.7"
        message = results.pop(0)
        assert "outside the class indices" in message, message
