"""The hand-written networks in prototxt/: they load in every stage, keep the input's size,
count SqueezeNet's parameters, align their crop, and run the same in OpenCV's importer.

Weights are random (SYNTHETIC) throughout; nothing here is a trained result.
"""
from __future__ import annotations

import glob
import os

import numpy as np
import pytest

from thermalnet import layout, spec
from thermalnet.caffe_env import PROTOTXT_DIR
from thermalnet import nets

BASES = ("v1_1", "v1_0")
SIZES = ((120, 160), (240, 320), (227, 227))
# Layer types that exist in BVLC Caffe 1.0, NVCaffe 0.15/0.17 and the kit's rc3 build.
PORTABLE_TYPES = {"Data", "Input", "Convolution", "ReLU", "Pooling", "Concat", "Dropout", "Deconvolution",
                  "Crop", "Python", "Accuracy", "Softmax", "Power", "BNLL"}
ALL_PROTOTXT = sorted(glob.glob(os.path.join(PROTOTXT_DIR, "thermalnet_*.prototxt")))


def _he_init(net, seed=0):
    """Random weights with activations that neither vanish nor explode (He et al.)."""
    rng = np.random.RandomState(seed)
    for name, blobs in net.params.items():
        if name in nets.UPSAMPLE_LAYERS:
            continue
        w = blobs[0].data
        w[...] = rng.randn(*w.shape) * np.sqrt(2.0 / np.prod(w.shape[1:]))
        if len(blobs) > 1:
            blobs[1].data[...] = rng.randn(*blobs[1].data.shape) * 0.1


def test_every_network_is_listed_and_scores_num_bins():
    listed = {p for info in nets.NETWORKS.values() for p in (info.net, info.deploy)}
    assert {os.path.abspath(p) for p in ALL_PROTOTXT} == {os.path.abspath(p) for p in listed}
    for path in ALL_PROTOTXT:
        assert nets.num_classes(path) == spec.NUM_BINS, path


def test_only_portable_layers_and_fields():
    for path in ALL_PROTOTXT:
        net = nets.load_net(path)
        for layer in net.layer:
            assert layer.type in PORTABLE_TYPES, (path, layer.name, layer.type)
            if layer.type == "Pooling":
                fields = {f.name for f, _ in layer.pooling_param.ListFields()}
                assert fields <= {"pool", "kernel_size", "stride", "pad"}, (path, layer.name, fields)
            if layer.type == "Crop":
                assert layer.crop_param.axis == 2 and len(layer.crop_param.offset) == 1
            if layer.type == "Python":
                assert layer.python_param.module == "digits_python_layers"
                assert list(layer.loss_weight) == [1.0]


@pytest.mark.parametrize("name", sorted(nets.NETWORKS))
def test_all_in_one_instantiates_in_every_stage(caffe, tiny_dataset, tmp_path, name):
    root, feats = tiny_dataset
    n_train = feats[layout.TRAIN_DB][0].shape[0]
    path = nets.materialize(nets.network(name).net, root, str(tmp_path / "net.prototxt"), batch_size=2,
                            val_batch_size=3)
    q, h, w = spec.NUM_BINS, spec.DEFAULT_HEIGHT, spec.DEFAULT_WIDTH
    train = caffe.Net(path, caffe.TRAIN, stages=["train"])
    out = train.forward()
    assert set(out) == {"loss"} and np.isfinite(out["loss"]).all()
    assert train.blobs["score"].data.shape == (2, q, h, w)
    assert train.blobs["label"].data.shape == (2, 1, h, w)
    # The Data layer delivers the stored pixels minus the stored mean, in LMDB order.
    mean = feats[layout.TRAIN_DB][0].astype(np.float32).mean(axis=0)
    np.testing.assert_allclose(train.blobs["data"].data[0], feats[layout.TRAIN_DB][0][0] - mean, atol=1e-3)
    np.testing.assert_array_equal(train.blobs["label"].data[1], feats[layout.TRAIN_DB][1][1])
    assert n_train >= 2

    val = caffe.Net(path, caffe.TEST, stages=["val"])
    out = val.forward()
    assert set(out) == {"loss", "accuracy"}
    assert val.blobs["score"].data.shape == (3, q, h, w)
    assert 0.0 <= float(out["accuracy"]) <= 1.0

    deploy = caffe.Net(path, caffe.TEST, stages=["deploy"])
    assert "loss" not in deploy.blobs and "label" not in deploy.blobs
    deploy.blobs["data"].data[...] = np.random.RandomState(0).randn(*deploy.blobs["data"].data.shape)
    prob = deploy.forward()["prob"]
    assert prob.shape == (1, q, h, w)
    np.testing.assert_allclose(prob.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(nets.NETWORKS))
@pytest.mark.parametrize("size", SIZES)
def test_deploy_output_has_the_input_size(caffe, tmp_path, name, size):
    h, w = size
    info = nets.network(name)
    for source in (info.deploy, info.net):       # the deploy file and the all-in-one deploy stage
        path = nets.deploy_for_size(source, h, w, str(tmp_path / "deploy.prototxt"), batch=2)
        net = caffe.Net(path, caffe.TEST, stages=["deploy"])
        net.forward()
        assert net.blobs["prob"].data.shape == (2, spec.NUM_BINS, h, w), (source, size)


@pytest.mark.parametrize("base", BASES)
def test_parameter_counts_match_squeezenet(caffe, base):
    net = caffe.Net(nets.network(base).deploy, caffe.TEST)
    summary = nets.count_summary(net)
    q = spec.NUM_BINS
    squeezenet_body = {"v1_0": 735424, "v1_1": 722496}[base]   # SqueezeNet minus its conv10
    print("\n%s parameters: %s" % (base, summary))
    assert summary["body"] == squeezenet_body
    assert summary["score"] == 512 * q + q
    assert summary["upsample"] == 2 * q * 8 * 8                 # grouped 8x8 kernels, no bias
    assert summary["total"] == squeezenet_body + 512 * q + q + 2 * q * 64
    counts, total = nets.param_counts(net)
    assert total == summary["total"] and list(counts)[0] == "conv1" and list(counts)[-1] == "upscore2"


def _bilinear(k):
    f = np.ceil(k / 2.0)
    c = (2 * f - 1 - f % 2) / (2.0 * f)
    x = np.arange(k)
    line = 1 - np.abs(x / f - c)
    return np.outer(line, line)


@pytest.mark.parametrize("base", BASES)
def test_upsampling_is_bilinear_per_class(caffe, base):
    net = caffe.Net(nets.network(base).deploy, caffe.TEST)
    for layer in nets.UPSAMPLE_LAYERS:
        (w,) = net.params[layer]
        assert w.data.shape == (spec.NUM_BINS, 1, 8, 8)
        for q in range(spec.NUM_BINS):
            np.testing.assert_allclose(w.data[q, 0], _bilinear(8), atol=1e-6)
    # A constant score map stays constant inside the image after both upsamplings and the crop.
    net.params[nets.SCORE_LAYER][0].data[...] = 0
    net.params[nets.SCORE_LAYER][1].data[...] = np.arange(spec.NUM_BINS, dtype=np.float32)
    h, w = net.blobs["data"].data.shape[2:]
    net.forward()
    score = net.blobs["score"].data[0]
    inner = score[:, 24:h - 24, 24:w - 24]     # away from the zero padding of the upsamplings
    np.testing.assert_allclose(inner, np.arange(spec.NUM_BINS)[:, None, None] * np.ones_like(inner[:1]), rtol=1e-5)


@pytest.mark.parametrize("base", BASES)
def test_crop_offset_centres_the_receptive_field(caffe, base):
    """With positive constant weights the net is symmetric, so an impulse's response must be
    centred where the derived offset puts it: half a pixel down/right (x_up2 = x_in + 2.5
    for v1.1 cropped at 2, x_in + 0.5 for v1.0 cropped at 0), averaged over the 16 phases."""
    net = caffe.Net(nets.network(base).deploy, caffe.TEST)
    for name, blobs in net.params.items():
        if name in nets.UPSAMPLE_LAYERS:
            continue
        blobs[0].data[...] = 1.0 / np.prod(blobs[0].data.shape[1:])
        if len(blobs) > 1:
            blobs[1].data[...] = 0
    net.blobs["data"].reshape(1, 3, 200, 200)
    net.reshape()
    shifts = []
    for d in range(16):
        y = x = 90 + d
        net.blobs["data"].data[...] = 0
        net.blobs["data"].data[0, :, y, x] = 1000.0
        net.forward()
        s = net.blobs["score"].data[0, 0]
        s = s - s.min()
        yy, xx = np.mgrid[:s.shape[0], :s.shape[1]]
        shifts.append(((s * yy).sum() / s.sum() - y, (s * xx).sum() / s.sum() - x))
    mean_shift = np.mean(shifts, axis=0)
    np.testing.assert_allclose(mean_shift, [0.5, 0.5], atol=0.05)


@pytest.mark.parametrize("name", sorted(nets.NETWORKS))
@pytest.mark.parametrize("size", [(120, 160), (227, 227)])
def test_opencv_gives_the_same_output_as_pycaffe(caffe, tmp_path, name, size):
    import cv2          # pinned in requirements.txt: missing is a failure, not a skip
    h, w = size
    deploy = nets.deploy_for_size(nets.network(name).deploy, h, w, str(tmp_path / "deploy.prototxt"))
    net = caffe.Net(deploy, caffe.TEST)
    _he_init(net)
    model = str(tmp_path / "random.caffemodel")
    x = (np.random.RandomState(1).randn(1, 3, h, w) * 50).astype(np.float32)
    net.blobs["data"].data[...] = x
    net.forward()
    # Scale the scores to a trained network's range (|score| <= 20: confident, not saturated);
    # float32 rounding differs between the two libraries in proportion to the magnitudes.
    scale = 20.0 / np.abs(net.blobs["score"].data).max()
    for blob in net.params[nets.SCORE_LAYER]:
        blob.data[...] *= scale
    net.save(model)
    net.forward()
    ref_score, ref_prob = net.blobs["score"].data.copy(), net.blobs["prob"].data.copy()
    # Far from uniform, so the comparison means something (normalised sigmoids are flatter).
    assert ref_prob.max() > (0.5 if nets.network(name).loss == "softmax" else 2.0 / spec.NUM_BINS)
    cvnet = cv2.dnn.readNetFromCaffe(deploy, model)
    cvnet.setInput(x)
    score, prob = cvnet.forward(["score", "prob"])
    assert prob.shape == ref_prob.shape == (1, spec.NUM_BINS, h, w)
    assert np.abs(prob - ref_prob).max() < 1e-4
    assert np.abs(score - ref_score).max() < 1e-4


def test_materialize_binds_the_dataset(caffe, tiny_dataset, tmp_path):
    root, _ = tiny_dataset
    out = nets.materialize(nets.network("v1_1").net, root, str(tmp_path / "bound.prototxt"), batch_size=4)
    net = nets.load_net(out)
    data_layers = [layer for layer in net.layer if layer.type == "Data"]
    assert len(data_layers) == 4
    for layer in data_layers:
        assert os.path.isabs(layer.data_param.source) and os.path.isdir(layer.data_param.source)
        split = layout.TRAIN_DB if "train" in layer.name else layout.VAL_DB
        kind = layout.FEATURES if layer.top[0] == "data" else layout.LABELS
        assert layer.data_param.source == os.path.join(os.path.abspath(root), split, kind)
        assert layer.data_param.batch_size == (4 if split == layout.TRAIN_DB else 8)
        if kind == layout.FEATURES:
            assert layer.transform_param.mean_file == os.path.join(os.path.abspath(root), layout.TRAIN_DB,
                                                                   layout.MEAN_FILE)
    (loss,) = [layer for layer in net.layer if layer.type == "Python"]
    assert os.path.abspath(root) in loss.python_param.param_str
    assert not [p for p in os.listdir(str(tmp_path)) if p.startswith(".tmp-")]


def test_materialize_refuses_bad_inputs(tiny_dataset, tmp_path):
    root, _ = tiny_dataset
    with pytest.raises(ValueError, match="no dataset folder"):
        nets.materialize(nets.network("v1_1").net, str(tmp_path / "missing"), str(tmp_path / "a.prototxt"))
    with pytest.raises(ValueError, match="no Data layers"):
        nets.materialize(nets.network("v1_1").deploy, root, str(tmp_path / "b.prototxt"))
    empty = tmp_path / "empty_ds"
    empty.mkdir()
    with pytest.raises(ValueError, match="does not exist"):
        nets.materialize(nets.network("v1_1").net, str(empty), str(tmp_path / "c.prototxt"))
    bad = tmp_path / "bad.prototxt"
    bad.write_text("layer { name: ")
    with pytest.raises(ValueError, match="bad.prototxt: not a valid Caffe prototxt"):
        nets.num_classes(str(bad))
    no_input = tmp_path / "no_input.prototxt"
    no_input.write_text('layer { name: "conv10_thermal" type: "Convolution" convolution_param { num_output: 3 } }')
    with pytest.raises(ValueError, match="no_input.prototxt: no Input layer"):
        nets.deploy_for_size(str(no_input), 10, 10, str(tmp_path / "d.prototxt"))
    with pytest.raises(ValueError, match="thermal bins"):
        _, other = _copy_dataset_with_bins(root, tmp_path, spec.NUM_BINS // 2)
        nets.materialize(nets.network("v1_1").net, other, str(tmp_path / "f.prototxt"))


def _copy_dataset_with_bins(root, tmp_path, bins):
    import json
    import shutil

    other = str(tmp_path / "other_ds")
    shutil.copytree(root, other)
    info_path = os.path.join(other, layout.DATASET_INFO_FILE)
    with open(info_path) as f:
        info = json.load(f)
    info["num_bins"] = bins
    with open(info_path, "w") as f:
        json.dump(info, f)
    return info, other


def test_counts_cli_prints_the_budget(caffe, capsys):
    assert nets.main(["--counts"]) == 0
    out = capsys.readouterr().out
    print(out)
    for name in nets.NETWORKS:
        assert name in out
    assert "722,496" in out and "735,424" in out and "MISMATCH" not in out
    with pytest.raises(SystemExit) as info:
        nets.main(["--help"])
    assert info.value.code == 0


def test_materialize_cli(caffe, tiny_dataset, tmp_path, capsys):
    root, _ = tiny_dataset
    out = str(tmp_path / "cli.prototxt")
    assert nets.main(["--net", "v1_0", "--materialize", root, out, "--batch-size", "3"]) == 0
    assert capsys.readouterr().out.strip() == out
    assert nets.load_net(out).layer[0].data_param.batch_size == 3
    assert nets.main(["--materialize", str(tmp_path / "nowhere"), out]) == 1
    assert "no dataset folder" in capsys.readouterr().err
