"""thermalnet.onnx_export: the kit's deploy nets (random weights) in ONNX Runtime equal pycaffe.

Random He-initialised weights with logits scaled like a trained net's (see
thermalnet.inference.random_caffemodel), random inputs: the checks are about the
translation, not accuracy.
"""
from __future__ import annotations

import os
import re

import numpy as np
import onnx
import pytest

from thermalnet import spec
from thermalnet.caffe_env import PROTOTXT_DIR
from thermalnet import onnx_export
from thermalnet.inference import _PycaffeBackend, random_caffemodel

DEPLOYS = {base: os.path.join(PROTOTXT_DIR, "thermalnet_%s_deploy.prototxt" % base)
           for base in (spec.DEFAULT_BASE, spec.PAPER_BASE)}


@pytest.fixture(scope="module", params=sorted(DEPLOYS))
def exported(request, tmp_path_factory, caffe):
    deploy = DEPLOYS[request.param]
    d = tmp_path_factory.mktemp("onnx_" + request.param)
    weights = random_caffemodel(deploy, str(d / "random.caffemodel"), seed=3)
    out = str(d / "model.onnx")
    diff = onnx_export.export(deploy, weights, out, log=lambda m: None)
    return deploy, weights, out, diff


def test_export_runs_like_pycaffe_at_several_sizes(exported):
    deploy, weights, out, diff = exported
    assert diff < onnx_export.VERIFY_TOLERANCE
    model = onnx.load(out)
    onnx.checker.check_model(model)
    assert [o.name for o in model.graph.output] == ["prob"]
    sess = onnx_export.ort_session(out)
    ref = _PycaffeBackend(deploy, weights, None)
    h, w = onnx_export.deploy_size(deploy)
    rng = np.random.RandomState(9)
    for size in ((h, w), (h // 2 + 8, w // 2), (h + 32, w + 48)):      # H, W are symbolic in the graph
        x = rng.uniform(-128, 128, size=(2, 3) + size).astype(np.float32)
        a = ref.forward(x)
        b = sess.run(["prob"], {"data": x})[0]
        assert b.shape == a.shape == (2, spec.NUM_BINS) + size
        assert np.abs(a - b).max() < 1e-4, size
        assert a.max() > 0.5                      # peaked distributions: a wrong layer would show


def test_export_uses_every_kit_layer_type(exported):
    model = onnx.load(exported[2])
    ops = {n.op_type for n in model.graph.node}
    assert {"Conv", "Relu", "MaxPool", "Concat", "ConvTranspose", "Slice", "ReduceMax", "Exp", "ReduceSum", "Div"} <= ops
    deconv = [n for n in model.graph.node if n.op_type == "ConvTranspose"]
    assert all(next(a.i for a in n.attribute if a.name == "group") == spec.NUM_BINS for n in deconv)
    pools = [n for n in model.graph.node if n.op_type == "MaxPool"]
    assert pools and all(next(a.i for a in n.attribute if a.name == "ceil_mode") == 1 for n in pools)


def test_layer_names_do_not_matter(exported, tmp_path):
    """The exporter reads types: renaming every layer gives the same graph arithmetic."""
    deploy, weights, out, _ = exported
    with open(deploy) as f:
        text = f.read()
    renamed = re.sub(r'name: "([^"]+)"', r'name: "renamed_\1"', text)
    assert renamed != text
    new_deploy = str(tmp_path / "renamed_deploy.prototxt")
    with open(new_deploy, "w") as f:
        f.write(renamed)
    # Weights are copied by layer name, so give the renamed net the same weights.
    from thermalnet.caffe_env import import_caffe
    caffe = import_caffe()
    src = caffe.Net(deploy, weights, caffe.TEST)
    dst = caffe.Net(new_deploy, caffe.TEST)
    for name, blobs in src.params.items():
        for i, b in enumerate(blobs):
            dst.params["renamed_" + name][i].data[...] = b.data
    new_weights = str(tmp_path / "renamed.caffemodel")
    dst.save(new_weights)
    diff = onnx_export.export(new_deploy, new_weights, str(tmp_path / "renamed.onnx"), log=lambda m: None)
    assert diff < onnx_export.VERIFY_TOLERANCE
    x = np.random.RandomState(2).uniform(-128, 128, size=(1, 3) + onnx_export.deploy_size(deploy)).astype(np.float32)
    a = onnx_export.ort_session(out).run(["prob"], {"data": x})[0]
    b = onnx_export.ort_session(str(tmp_path / "renamed.onnx")).run(["prob"], {"data": x})[0]
    np.testing.assert_array_equal(a, b)


def test_unsupported_layer_is_a_one_line_error_and_nothing_is_written(tmp_path, caffe, capsys):
    deploy = str(tmp_path / "bad_deploy.prototxt")
    with open(deploy, "w") as f:
        f.write('layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }\n'
                'layer { name: "c" type: "Convolution" bottom: "data" top: "c" '
                'convolution_param { num_output: 4 kernel_size: 1 } }\n'
                'layer { name: "whatever" type: "TanH" bottom: "c" top: "prob" }\n')
    weights = random_caffemodel(deploy, str(tmp_path / "bad.caffemodel"), seed=0)
    out = str(tmp_path / "bad.onnx")
    assert onnx_export.main(["--deploy", deploy, "--model", weights, "--out", out]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "type TanH is not exported" in err and deploy in err
    assert not os.path.exists(out) and not os.path.exists(out + ".tmp")
    assert onnx_export.main(["--deploy", str(tmp_path / "none.prototxt"), "--model", weights, "--out", out]) == 1
    assert "no such deploy prototxt" in capsys.readouterr().err


def test_help():
    with pytest.raises(SystemExit) as info:
        onnx_export.main(["--help"])
    assert info.value.code == 0
