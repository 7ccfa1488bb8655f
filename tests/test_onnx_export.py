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
    """Fixed bilinear upsampling + crop become two MatMuls; the softmax after them is shifted at low resolution."""
    model = onnx.load(exported[2])
    ops = [n.op_type for n in model.graph.node]
    assert {"Conv", "Relu", "MaxPool", "Concat", "MatMul", "ReduceMax", "Exp", "ReduceSum", "If"} <= set(ops)
    assert "ConvTranspose" not in ops                 # the deploy nets' deconvolutions are fixed bilinear
    assert ops.count("MatMul") >= 2
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


def _deconv_names(net):
    return [name for name, layer in zip(net._layer_names, net.layers) if layer.type == "Deconvolution"]


def _compare(deploy, weights, model, sizes, batch=2, seed=5):
    sess = onnx_export.ort_session(model)
    ref = _PycaffeBackend(deploy, weights, None)
    rng = np.random.RandomState(seed)
    for size in sizes:
        x = rng.uniform(-128, 128, size=(batch, 3) + size).astype(np.float32)
        a = ref.forward(x)
        b = sess.run(["prob"], {"data": x})[0]
        assert b.shape == a.shape and a.shape[2:] == size
        assert np.abs(a - b).max() < 1e-4, size
        assert a.max() > 0.5


ODD_SIZES = ((241, 323), (120, 160), (97, 131))


@pytest.mark.parametrize("base", sorted(DEPLOYS))
def test_fixed_bilinear_upsampling_is_rewritten_and_learned_is_not(base, tmp_path, caffe):
    """Bilinear deconvolutions: no ConvTranspose, equal to pycaffe at sizes that are not multiples of 16.
    The second one given random (learned-like, not separable) weights: ConvTranspose kept, still equal."""
    deploy = DEPLOYS[base]
    weights = random_caffemodel(deploy, str(tmp_path / "bilinear.caffemodel"), seed=4)
    model = onnx_export.build_model(deploy, weights)
    assert "ConvTranspose" not in [n.op_type for n in model.graph.node]
    _compare(deploy, weights, model, ODD_SIZES + (((480, 640),) if base == spec.DEFAULT_BASE else ()))

    net = caffe.Net(deploy, weights, caffe.TEST)
    deconvs = _deconv_names(net)
    assert len(deconvs) == 2
    w = net.params[deconvs[1]][0].data
    w[...] = np.random.RandomState(1).normal(0.0, 1.0, size=w.shape[2:])    # the same in every bin, not rank 1
    learned = str(tmp_path / "learned.caffemodel")
    net.save(learned)
    model = onnx_export.build_model(deploy, learned)
    convt = [n for n in model.graph.node if n.op_type == "ConvTranspose"]
    assert len(convt) == 1 and next(a.i for a in convt[0].attribute if a.name == "group") == spec.NUM_BINS
    _compare(deploy, learned, model, ODD_SIZES[:2])


GENERAL_NET = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 29 dim: 37 } } }
layer { name: "c1" type: "Convolution" bottom: "data" top: "c1"
        convolution_param { num_output: 4 kernel_size: 1 stride: 4 } }
layer { name: "up1" type: "Deconvolution" bottom: "c1" top: "up1"
        convolution_param { num_output: 4 group: 4 bias_term: false kernel_h: 3 kernel_w: 5 stride_h: 2 stride_w: 3
                            pad_h: 1 pad_w: 0 } }
layer { name: "up2" type: "Deconvolution" bottom: "up1" top: "up2"
        convolution_param { num_output: 4 group: 4 bias_term: false kernel_size: 4 stride: 2 pad: 1 dilation: 2
                            weight_filler { type: "bilinear" } } }
layer { name: "crop" type: "Crop" bottom: "up2" bottom: "data" top: "score" crop_param { axis: 2 offset: 3 offset: 1 } }
layer { name: "prob" type: "Softmax" bottom: "score" top: "prob" }
"""


def test_rewrite_handles_unequal_axes_padding_dilation_and_crop_offsets(tmp_path, caffe):
    """The general pattern, not the kit's numbers: a non-square separable kernel with signed taps,
    different strides and pads per axis, a padded inner deconvolution, a dilated bilinear one,
    and a crop with an offset per axis; then the same net with a non-separable first deconvolution."""
    deploy = str(tmp_path / "general_deploy.prototxt")
    with open(deploy, "w") as f:
        f.write(GENERAL_NET)
    weights = random_caffemodel(deploy, str(tmp_path / "random.caffemodel"), seed=2)
    net = caffe.Net(deploy, weights, caffe.TEST)
    a_h = np.array([0.5, -1.25, 0.75], np.float32)
    a_w = np.array([0.3, 0.9, -0.2, 0.6, 0.1], np.float32)
    kernel = np.outer(a_h.astype(np.float64), a_w.astype(np.float64)).astype(np.float32)
    net.params["up1"][0].data[...] = kernel
    separable = str(tmp_path / "separable.caffemodel")
    net.save(separable)
    sizes = ((29, 37), (33, 41), (30, 50))
    model = onnx_export.build_model(deploy, separable)
    assert "ConvTranspose" not in [n.op_type for n in model.graph.node]
    _compare(deploy, separable, model, sizes, batch=3)

    net.params["up1"][0].data[...] = np.random.RandomState(0).normal(size=(4, 1, 3, 5))
    learned = str(tmp_path / "learned.caffemodel")
    net.save(learned)
    model = onnx_export.build_model(deploy, learned)
    assert [n.op_type for n in model.graph.node].count("ConvTranspose") == 1
    _compare(deploy, learned, model, sizes, batch=3)


def test_separable_kernel_reads_the_caffemodel_weights(exported, caffe):
    """Caffe's bilinear filler is exactly outer(a, a); any departure a float32 rounding cannot explain is not."""
    deploy, weights = exported[:2]
    net = caffe.Net(deploy, weights, caffe.TEST)
    name = _deconv_names(net)[0]
    w = net.params[name][0].data.copy()
    q = spec.NUM_BINS
    a_h, a_w = onnx_export.separable_kernel(w, q, q)
    np.testing.assert_array_equal(np.outer(a_h, a_w).astype(np.float32), w[0, 0])
    assert onnx_export.separable_kernel(w, q, q, bias=np.zeros(q, np.float32)) is not None
    assert onnx_export.separable_kernel(w, q, q, bias=np.full(q, 0.1, np.float32)) is None  # a bias
    assert onnx_export.separable_kernel(w, q, 1) is None                          # mixes channels
    bumped = w.copy()
    bumped[:, 0, 2, 5] *= 1.0001                                                  # learned-like
    assert onnx_export.separable_kernel(bumped, q, q) is None
    per_bin = w.copy()
    per_bin[3] *= 2.0                                                             # not the same in every group
    assert onnx_export.separable_kernel(per_bin, q, q) is None
    assert onnx_export.separable_kernel(np.zeros_like(w), q, q) is None


def _underflow_branch_taken(model, x) -> bool:
    """Run the graph with the If's condition as an extra output (True: the exact softmax branch ran)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    cond = [n for n in m.graph.node if n.op_type == "If"]
    assert len(cond) == 1
    m.graph.output.append(onnx.helper.make_tensor_value_info(cond[0].input[0], onnx.TensorProto.BOOL, []))
    return bool(onnx_export.ort_session(m).run([cond[0].input[0]], {"data": x})[0])


UPSAMPLE_ONLY_NET = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 12 dim: 16 } } }
layer { name: "up" type: "Deconvolution" bottom: "data" top: "up"
        convolution_param { num_output: 3 group: 3 bias_term: false kernel_size: 4 stride: 2 pad: 1
                            weight_filler { type: "bilinear" } } }
layer { name: "crop" type: "Crop" bottom: "up" bottom: "data" top: "score" crop_param { axis: 2 offset: 1 } }
layer { name: "prob" type: "Softmax" bottom: "score" top: "prob" }
layer { name: "also" type: "ReLU" bottom: "score" top: "also" }
"""


@pytest.mark.parametrize("scale,exact_branch", [(4.0, False), (400.0, True)])
def test_low_resolution_softmax_shift_falls_back_where_it_would_underflow(scale, exact_branch, tmp_path, caffe):
    """Logits are the input itself, upsampled: ordinary ones take the cheap branch; neighbours that
    disagree by hundreds make the shifted sums underflow, and the exact branch keeps Caffe's result.
    (The ReLU after the Softmax reads the upsampled blob too: it is still there for it.)"""
    deploy = str(tmp_path / "upsample_deploy.prototxt")
    with open(deploy, "w") as f:
        f.write(UPSAMPLE_ONLY_NET)
    weights = random_caffemodel(deploy, str(tmp_path / "w.caffemodel"), seed=0)
    model = onnx_export.build_model(deploy, weights)
    assert "ConvTranspose" not in [n.op_type for n in model.graph.node]
    sess = onnx_export.ort_session(model)
    ref = _PycaffeBackend(deploy, weights, None)
    rng = np.random.RandomState(3)
    for size in ((12, 16), (13, 21)):
        x = rng.uniform(-scale, scale, size=(2, 3) + size).astype(np.float32)
        assert _underflow_branch_taken(model, x) is exact_branch
        a = ref.forward(x)
        b = sess.run(["prob"], {"data": x})[0]
        assert np.isfinite(b).all() and np.abs(a - b).max() < 1e-5
        assert a.max() > 0.9
