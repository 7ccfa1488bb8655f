"""Predictor (pycaffe and OpenCV DNN back-ends) and the augment CLI, against the real Caffe.

Weights are random (He-initialised) and inputs random: these tests check plumbing,
preprocessing and back-end agreement, not accuracy.
"""
from __future__ import annotations

import os

import cv2
import numpy as np
import pytest

from thermalnet import decoders, imageio, layout, spec
from thermalnet.caffe_env import PROTOTXT_DIR
from tools import augment
from thermalnet.inference import Predictor, random_caffemodel

TINY_DEPLOY = """name: "tiny_thermal_test_net"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 32 dim: 32 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 8 kernel_size: 3 pad: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2"
        convolution_param { num_output: 8 kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "up" type: "Deconvolution" bottom: "conv2" top: "up"
        convolution_param { num_output: %d kernel_size: 4 stride: 2 pad: 1 } }
layer { name: "prob" type: "Softmax" bottom: "up" top: "prob" }
""" % spec.NUM_BINS

REAL_DEPLOYS = {base: os.path.join(PROTOTXT_DIR, "thermalnet_%s_deploy.prototxt" % base)
                for base in (spec.DEFAULT_BASE, spec.PAPER_BASE)}


@pytest.fixture(scope="module")
def tiny_net(tmp_path_factory, caffe):
    """A small deploy net with the Input `data` -> Softmax `prob` (N, Q, H, W) contract (even H, W)."""
    d = tmp_path_factory.mktemp("tiny_net")
    deploy = str(d / "deploy.prototxt")
    with open(deploy, "w") as f:
        f.write(TINY_DEPLOY)
    return deploy, random_caffemodel(deploy, str(d / "random.caffemodel"), seed=1)


@pytest.fixture(scope="module", params=["tiny"] + sorted(REAL_DEPLOYS))
def any_net(request, tiny_net, tmp_path_factory):
    if request.param == "tiny":
        return tiny_net
    deploy = REAL_DEPLOYS[request.param]
    assert os.path.isfile(deploy), "%s: tracked deploy file missing" % deploy
    d = tmp_path_factory.mktemp("real_" + request.param)
    return deploy, random_caffemodel(deploy, str(d / "random.caffemodel"), seed=2)


def _images(shapes, seed=0):
    rng = np.random.RandomState(seed)
    return [rng.randint(0, 256, size=(h, w, 3)).astype(np.uint8) for h, w in shapes]


# -- preprocessing ---------------------------------------------------------------------
def test_preprocess_equals_caffe_data_layer(caffe, tiny_dataset, tiny_net, tmp_path):
    """What Caffe's Data layer feeds in training (LMDB BGR Datum - mean_file) == Predictor.preprocess(RGB)."""
    root, feats = tiny_dataset
    mean = os.path.join(root, layout.TRAIN_DB, layout.MEAN_FILE)
    net_txt = tmp_path / "data_only.prototxt"
    net_txt.write_text('layer { name: "data" type: "Data" top: "data" top: "label" '
                       'transform_param { mean_file: "%s" } data_param { source: "%s" backend: LMDB batch_size: 2 } }'
                       % (mean, os.path.join(root, layout.TRAIN_DB, layout.FEATURES)))
    net = caffe.Net(str(net_txt), caffe.TEST)
    net.forward()
    pred = Predictor(*tiny_net, mean_file=mean)
    x = feats[layout.TRAIN_DB][0]
    for i in range(2):
        rgb = x[i][::-1].transpose(1, 2, 0)            # the visible PNG the Datum was made from
        np.testing.assert_allclose(pred.preprocess(rgb), net.blobs["data"].data[i], atol=1e-4)


def test_mean_is_resized_to_other_sizes(tiny_dataset, tiny_net):
    root, _ = tiny_dataset
    mean_file = os.path.join(root, layout.TRAIN_DB, layout.MEAN_FILE)
    pred = Predictor(*tiny_net, mean_file=mean_file)
    from thermalnet.lmdb_io import read_mean_binaryproto
    mean = read_mean_binaryproto(mean_file)
    img = _images([(60, 90)])[0]
    want_mean = cv2.resize(mean.transpose(1, 2, 0), (90, 60), interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1)
    bgr = img[:, :, ::-1].transpose(2, 0, 1).astype(np.float32)
    np.testing.assert_allclose(pred.preprocess(img), bgr - want_mean, atol=1e-4)
    no_mean = Predictor(*tiny_net)
    np.testing.assert_array_equal(no_mean.preprocess(img), bgr)
    grey = img[:, :, 0]
    assert no_mean.preprocess(grey).shape == (3, 60, 90)


# -- prediction ----------------------------------------------------------------------------
def test_probs_shapes_order_and_normalisation(tiny_net):
    pred = Predictor(*tiny_net, batch_size=2)
    shapes = [(40, 48), (32, 32), (40, 48), (40, 48), (32, 32)]
    imgs = _images(shapes)
    probs = pred.predict_probs(imgs)
    assert [p.shape for p in probs] == [(spec.NUM_BINS,) + s for s in shapes]
    for p in probs:
        np.testing.assert_allclose(p.sum(axis=0), 1.0, atol=1e-5)
    # grouping by size and batching must not change which output belongs to which image (a batch of two
    # sums in another float32 order than one image -- patch 0007's batched GEMM: up to ~2e-6 seen)
    single = Predictor(*tiny_net, batch_size=1)
    for img, p in zip(imgs, probs):
        np.testing.assert_allclose(single.predict_probs([img])[0], p, atol=1e-5)
    assert not np.allclose(probs[0], probs[2])


def test_brightness_uses_spec_decode(tiny_net):
    pred = Predictor(*tiny_net)
    imgs = _images([(32, 48)] * 2)
    probs = pred.predict_probs(imgs)
    for method in ("expectation", "argmax", "annealed"):
        got = pred.predict_brightness(imgs, decoding=method, temperature=0.5)
        for g, p in zip(got, probs):
            assert g.shape == (32, 48)
            np.testing.assert_allclose(g, decoders.decode(p, method, 0.5), atol=1e-9)
            assert g.min() >= 0 and g.max() <= 255
    with pytest.raises(ValueError, match="decoding"):
        pred.predict_brightness(imgs, decoding="median")


@pytest.mark.parametrize("size", [(spec.DEFAULT_HEIGHT, spec.DEFAULT_WIDTH), (spec.PAPER_HEIGHT, spec.PAPER_WIDTH)])
def test_opencv_dnn_matches_pycaffe(any_net, size):
    deploy, weights = any_net
    imgs = _images([size] * 2, seed=3)
    mean = np.array([104.0, 117.0, 123.0], dtype=np.float32)
    ref = Predictor(deploy, weights, mean_file=mean, backend="pycaffe", batch_size=2).predict_probs(imgs)
    ocv = Predictor(deploy, weights, mean_file=mean, backend="opencv", batch_size=2)
    got = ocv.predict_probs(imgs)
    assert [g.shape for g in got] == [(spec.NUM_BINS,) + size] * 2
    diff = max(float(np.abs(a - b).max()) for a, b in zip(ref, got))
    assert diff < 1e-4, "OpenCV DNN and pycaffe differ by %g" % diff
    # a second size through the same OpenCV net: the input shape is re-planned per size
    other = _images([(64, 96)], seed=4)
    np.testing.assert_allclose(ocv.predict_probs(other)[0],
                               Predictor(deploy, weights, mean_file=mean).predict_probs(other)[0], atol=1e-4)


def test_errors_name_the_file(tiny_net, tmp_path):
    deploy, weights = tiny_net
    missing = str(tmp_path / "nope.caffemodel")
    with pytest.raises(FileNotFoundError, match="nope.caffemodel"):
        Predictor(deploy, missing)
    with pytest.raises(FileNotFoundError, match="nope.binaryproto"):
        Predictor(deploy, weights, mean_file=str(tmp_path / "nope.binaryproto"))
    with pytest.raises(ValueError, match="backend"):
        Predictor(deploy, weights, backend="tensorrt")
    bad = tmp_path / "bad.binaryproto"
    bad.write_bytes(b"\xff\x00garbage")
    with pytest.raises(ValueError, match="bad.binaryproto"):
        Predictor(deploy, weights, mean_file=str(bad))
    # an odd size makes the tiny net's output one pixel larger than its input
    with pytest.raises(ValueError, match="expected \\(N, Q, H, W\\)"):
        Predictor(deploy, weights).predict_probs(_images([(33, 32)]))


# -- augment: inputs, names, shards -----------------------------------------------------
def _tree(root, names):
    for n in names:
        p = os.path.join(root, n)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        open(p, "wb").close()


def test_list_inputs_folder_and_list(tmp_path):
    names = ["b/2.png", "a/1.JPG", "a/sub/3.jpeg", "c.txt", "d/.hidden.png", "e.bmp"]
    _tree(str(tmp_path / "in"), names)
    got = augment.list_inputs(str(tmp_path / "in"))
    assert [rel for _, rel in got] == ["a/1.JPG", "a/sub/3.jpeg", "b/2.png", "e.bmp"]
    lst = tmp_path / "list.txt"
    lst.write_text("# comment\nin/b/2.png\n\n%s\nin/a/sub/3.jpeg\n" % (tmp_path / "in" / "e.bmp"))
    got = augment.list_inputs(str(lst))
    assert [rel for _, rel in got] == ["a/sub/3.jpeg", "b/2.png", "e.bmp"]
    assert all(os.path.isabs(p) for p, _ in got)
    with pytest.raises(FileNotFoundError, match="nothere"):
        augment.list_inputs(str(tmp_path / "nothere"))


def test_shards_partition_the_list_and_names_never_collide():
    rels = sorted(["d%d/img%03d.%s" % (i % 3, i, "png" if i % 2 else "jpg") for i in range(50)]
                  + ["d0/img000.png", "d1/x.png", "d1/x.jpg", "d1/x.tif"])
    stems = augment.output_stems(rels, palette=True)
    assert len(set(stems.values())) == len(rels)
    assert stems["d1/x.png"] == "d1/x_png" and stems["d1/x.jpg"] == "d1/x_jpg"
    assert stems["d1/img001.png"] == "d1/img001"
    for n in range(1, 8):
        shards = [augment.select_shard(rels, i, n) for i in range(n)]
        flat = [r for s in shards for r in s]
        assert sorted(flat) == rels and len(flat) == len(set(flat))
        assert max(map(len, shards)) - min(map(len, shards)) <= 1
    with pytest.raises(ValueError, match="x_pal.png"):
        augment.output_stems(["x.png", "x_pal.png"], palette=True)
    assert augment.output_stems(["x.png", "x_pal.png"], palette=False)["x_pal.png"] == "x_pal"


def test_shard_parsing_and_slurm_environment():
    assert augment.parse_shard("2/5") == (2, 5)
    for bad in ("5/5", "-1/3", "a/b", "3", "1/0"):
        with pytest.raises(ValueError, match="shard"):
            augment.parse_shard(bad)
    assert augment.shard_from_env({}) is None
    env = {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_COUNT": "4"}
    assert augment.shard_from_env(env) == (2, 4)
    env = {"SLURM_ARRAY_TASK_ID": "20", "SLURM_ARRAY_TASK_MIN": "10", "SLURM_ARRAY_TASK_MAX": "30",
           "SLURM_ARRAY_TASK_STEP": "5"}
    assert augment.shard_from_env(env) == (2, 5)
    with pytest.raises(ValueError):
        augment.shard_from_env({"SLURM_ARRAY_TASK_ID": "9", "SLURM_ARRAY_TASK_COUNT": "4"})


# -- augment: end to end ----------------------------------------------------------------
@pytest.fixture()
def visible_tree(tmp_path):
    root = tmp_path / "visible"
    imgs = _images([(32, 48), (48, 64), (32, 48)], seed=7)
    for rel, img in zip(["a/x.png", "a/x.jpg", "b/y.png"], imgs):
        os.makedirs(root / os.path.dirname(rel), exist_ok=True)
        if rel.endswith(".jpg"):
            cv2.imwrite(str(root / rel), img[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 100])
        else:
            imageio.write_png(str(root / rel), img)
    (root / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    imageio.write_png(str(root / "b" / "tiny.png"), _images([(8, 8)])[0])
    return str(root)


def test_augment_cli_end_to_end(tiny_net, visible_tree, tmp_path, capsys):
    deploy, weights = tiny_net
    out = str(tmp_path / "out")
    rc = augment.main(["--model", weights, "--deploy", deploy, "--input", visible_tree, "--out", out,
                       "--palette", "--celsius", "--window", "10", "40", "--batch-size", "2", "--quiet"])
    assert rc == 0
    err = capsys.readouterr().err
    assert "broken.png" in err and "tiny.png" in err and "2 skipped" in err
    pred = Predictor(deploy, weights)
    for rel, stem in [("a/x.png", "a/x_png"), ("a/x.jpg", "a/x_jpg"), ("b/y.png", "b/y")]:
        rgb = imageio.read_rgb(os.path.join(visible_tree, rel))
        want = pred.predict_brightness([rgb])[0]
        png = imageio.read_ir(os.path.join(out, stem + ".png"))
        assert png.units == "brightness"
        np.testing.assert_array_equal(png.values, augment.to_uint8(want))
        degc = np.load(os.path.join(out, stem + ".npy"))
        assert degc.dtype == np.float32
        np.testing.assert_allclose(degc, spec.to_celsius(want, 10, 40), rtol=1e-5, atol=1e-4)
        pal = imageio.read_rgb(os.path.join(out, stem + "_pal.png"))
        assert pal.shape == rgb.shape
    produced = sorted(os.path.relpath(os.path.join(d, f), out) for d, _, fs in os.walk(out) for f in fs)
    assert not any(".tmp" in p for p in produced)
    assert len(produced) == 9


def test_augment_shards_write_the_same_files(tiny_net, visible_tree, tmp_path, monkeypatch):
    deploy, weights = tiny_net
    whole, parts = str(tmp_path / "whole"), str(tmp_path / "parts")
    base = ["--model", weights, "--deploy", deploy, "--input", visible_tree, "--quiet"]
    assert augment.main(base + ["--out", whole]) == 0
    assert augment.main(base + ["--out", parts, "--shard", "0/2"]) == 0
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")
    assert augment.main(base + ["--out", parts]) == 0

    def files(d):
        return {os.path.relpath(os.path.join(r, f), d): open(os.path.join(r, f), "rb").read()
                for r, _, fs in os.walk(d) for f in fs}
    assert files(whole) == files(parts) and len(files(whole)) == 3


def test_augment_cli_errors(tiny_net, tmp_path, capsys):
    deploy, weights = tiny_net
    assert augment.main(["--model", weights, "--deploy", deploy, "--input", str(tmp_path / "none"),
                         "--out", str(tmp_path / "o")]) == 1          # thermalnet.cli: 1 = failed on its inputs
    assert "none" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert augment.main(["--model", weights, "--deploy", deploy, "--input", str(tmp_path / "empty"),
                         "--out", str(tmp_path / "o"), "--celsius"]) == 1
    assert "--celsius needs" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        augment.main(["--help"])


def test_benchmark_flop_count_of_tiny_net(tiny_net):
    """Conv/deconv FLOPs counted from blob shapes (what `make bench` divides by time)."""
    from tools.benchmark import net_flops
    q = spec.NUM_BINS
    macs = 8 * 32 * 32 * (3 * 9) + 8 * 16 * 16 * (8 * 9) + (8 * 16 * 16) * (q * 4 * 4)
    assert net_flops(tiny_net[0], 32, 32) == 2 * macs
    assert net_flops(tiny_net[0], 64, 32, batch=3) == 3 * 2 * 2 * macs


def test_augment_takes_mean_and_window_from_the_dataset(tiny_net, tiny_dataset, visible_tree, tmp_path):
    deploy, weights = tiny_net
    root, _ = tiny_dataset
    out = str(tmp_path / "out")
    assert augment.main(["--model", weights, "--deploy", deploy, "--dataset", root, "--input", visible_tree,
                         "--out", out, "--celsius", "--quiet", "--decoding", "argmax"]) == 0
    pred = Predictor(deploy, weights, mean_file=os.path.join(root, layout.TRAIN_DB, layout.MEAN_FILE))
    rgb = imageio.read_rgb(os.path.join(visible_tree, "b", "y.png"))
    want = pred.predict_brightness([rgb], decoding="argmax")[0]
    np.testing.assert_allclose(np.load(os.path.join(out, "b", "y.npy")), spec.to_celsius(want, 15.0, 45.0),
                               rtol=1e-5, atol=1e-4)
    info = tmp_path / "ds"
    info.mkdir()
    (info / layout.DATASET_INFO_FILE).write_text('{"num_bins": 32, "height": 120, "width": 160, "window_mode": "image", "window": null}')
    with pytest.raises(ValueError, match="--window"):
        augment.window_from_dataset(str(info))


@pytest.mark.parametrize("size", [(32, 48), (40, 40)])
def test_onnxruntime_backend_matches_pycaffe(any_net, size, tmp_path):
    """The third back-end: the caffemodel exported in memory, and the same from an .onnx file
    written by thermalnet.onnx_export (which needs no deploy prototxt)."""
    from thermalnet import onnx_export
    deploy, weights = any_net
    h, w = size if os.path.basename(deploy) == "deploy.prototxt" else (size[0] * 3, size[1] * 3)   # real nets: larger
    imgs = _images([(h, w)] * 3, seed=4)
    mean = np.random.RandomState(1).uniform(90, 130, size=(3, h, w)).astype(np.float32)
    ref = Predictor(deploy, weights, mean_file=mean, backend="pycaffe", batch_size=2).predict_probs(imgs)
    ort = Predictor(deploy, weights, mean_file=mean, backend="onnxruntime", batch_size=2).predict_probs(imgs)
    onnx_path = str(tmp_path / "model.onnx")
    onnx_export.export(deploy, weights, onnx_path, verify_sizes=[(h, w)], log=lambda m: None)
    from_file = Predictor(None, onnx_path, mean_file=mean, backend="onnxruntime", batch_size=3).predict_probs(imgs)
    for a, b, c in zip(ref, ort, from_file):
        assert a.shape == b.shape == c.shape == (spec.NUM_BINS, h, w)
        assert np.abs(a - b).max() < 1e-4 and np.abs(a - c).max() < 1e-4
        assert a.max() > 1.5 / spec.NUM_BINS            # not near-uniform: the comparison means something
    with pytest.raises(ValueError, match="needs the deploy prototxt"):
        Predictor(None, weights, backend="opencv")


def test_augment_cli_onnxruntime_from_an_onnx_file(tiny_net, visible_tree, tmp_path, capsys):
    """`--backend onnxruntime --model X.onnx` needs no deploy prototxt and writes what pycaffe writes."""
    from thermalnet import onnx_export
    deploy, weights = tiny_net
    onnx_path = str(tmp_path / "tiny.onnx")
    assert onnx_export.main(["--deploy", deploy, "--model", weights, "--out", onnx_path]) == 0
    ref, ort = str(tmp_path / "ref"), str(tmp_path / "ort")
    common = ["--input", visible_tree, "--quiet", "--batch-size", "2"]
    assert augment.main(["--model", weights, "--deploy", deploy, "--out", ref] + common) == 0
    assert augment.main(["--model", onnx_path, "--backend", "onnxruntime", "--out", ort] + common) == 0
    for stem in ("a/x_png", "a/x_jpg", "b/y"):
        a = imageio.read_ir(os.path.join(ref, stem + ".png")).values.astype(int)
        b = imageio.read_ir(os.path.join(ort, stem + ".png")).values.astype(int)
        assert np.abs(a - b).max() <= 1          # uint8 brightness: a 1e-6 probability change may round over
    capsys.readouterr()
    assert augment.main(["--model", weights, "--out", str(tmp_path / "x")] + common) == 1
    assert "needs the deploy prototxt" in capsys.readouterr().err
