"""Training mechanics with the real Caffe: solver files, weight updates, a falling loss,
DIGITS' epoch arithmetic, and `caffe train` running the Python loss layer.

Data are SYNTHETIC and tiny (2 images of 64x80), so a step takes well under a second on
CPU; with batch = training set size every step sees the same batch. Random per-pixel
labels cannot be fitted by a stride-16 network (their loss already sits at log Q), so
the loss test uses two-colour images whose halves carry two different bins.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

from conftest import caffe_tool_train, make_tiny_dataset
from thermalnet import caffe_env, layout, spec
from thermalnet.lmdb_io import LmdbWriter, write_mean_binaryproto
from thermalnet import nets


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("small_ds"))
    return make_tiny_dataset(root, n_train=2, n_val=2, height=64, width=80, seed=3)[0]


@pytest.fixture(scope="module")
def halves_dataset(tmp_path_factory):
    """SYNTHETIC: image 0 red|blue with bins 4|25, image 1 blue|red with bins 25|4, plus noise."""
    import json

    root = str(tmp_path_factory.mktemp("halves_ds"))
    rng = np.random.RandomState(0)
    h, w = 64, 80
    red, blue = np.array([20, 20, 230]), np.array([230, 20, 20])      # BGR
    images, labels = [], []
    for left, right, lo, hi in ((red, blue, 4, 25), (blue, red, 25, 4)):
        img = np.empty((3, h, w))
        img[:, :, : w // 2] = left[:, None, None]
        img[:, :, w // 2:] = right[:, None, None]
        images.append(np.clip(img + rng.randn(3, h, w) * 10, 0, 255).astype(np.uint8))
        lab = np.full((1, h, w), lo, np.uint8)
        lab[:, :, w // 2:] = hi
        labels.append(lab)
    for split in (layout.TRAIN_DB, layout.VAL_DB):
        with LmdbWriter(os.path.join(root, split, layout.FEATURES)) as fw, \
                LmdbWriter(os.path.join(root, split, layout.LABELS)) as lw:
            for img, lab in zip(images, labels):
                fw.put(img)
                lw.put(lab)
    write_mean_binaryproto(np.mean(images, axis=0), os.path.join(root, layout.TRAIN_DB, layout.MEAN_FILE))
    np.savetxt(os.path.join(root, layout.CLASS_WEIGHTS_FILE), spec.rebalance_weights(spec.class_prior(np.array(labels))))
    with open(os.path.join(root, layout.DATASET_INFO_FILE), "w") as f:
        json.dump({"synthetic": True, "note": "SYNTHETIC two-colour test images", "num_bins": spec.NUM_BINS,
                   "height": h, "width": w}, f)
    return root


def _solver(tmp_path, dataset, name="v1_1", base_lr=1e-3, solver_type="Adam", max_epochs=20):
    net = nets.materialize(nets.network(name).net, dataset, str(tmp_path / "net.prototxt"), batch_size=2,
                           val_batch_size=2)
    schedule = nets.solver_schedule(2, 2, max_epochs, n_val=2, val_batch=2)
    return nets.write_solver(str(tmp_path / "solver.prototxt"), net, schedule, base_lr, "fixed", solver_type,
                             snapshot_prefix=str(tmp_path / "snap"))


def _loss(solver):
    return float(solver.net.blobs["loss"].data.flat[0])


@pytest.mark.parametrize("name", ["v1_1", "v1_1_sigmoid", "v1_0"])
def test_one_step_changes_weights_but_not_the_fixed_upsampling(caffe, tmp_path, small_dataset, name):
    caffe.set_random_seed(spec.SEED)
    solver = caffe.get_solver(_solver(tmp_path, small_dataset, name))
    before = {k: [b.data.copy() for b in v] for k, v in solver.net.params.items()}
    solver.step(1)
    assert np.isfinite(_loss(solver))
    for layer in ("conv1", "fire5/expand3x3", "conv10_thermal"):
        assert not np.allclose(solver.net.params[layer][0].data, before[layer][0]), layer
    for layer in nets.UPSAMPLE_LAYERS:
        np.testing.assert_array_equal(solver.net.params[layer][0].data, before[layer][0])


def test_steps_lower_the_loss_on_a_repeated_batch(caffe, tmp_path, halves_dataset):
    caffe.set_random_seed(spec.SEED)
    solver = caffe.get_solver(_solver(tmp_path, halves_dataset, base_lr=1e-3))
    losses = []
    for _ in range(12):
        solver.step(1)
        losses.append(_loss(solver))
    print("\nSYNTHETIC repeated batch, Adam 1e-3, loss per step:", " ".join("%.3f" % v for v in losses))
    assert np.mean(losses[-3:]) < 0.8 * losses[0], losses
    # What it has learnt so far is which bins occur (telling the halves apart takes ~40 steps).
    solver.net.forward()
    assert set(np.unique(solver.net.blobs["score"].data.argmax(axis=1))) <= {4, 25}


def test_solver_schedule_follows_digits_arithmetic():
    paper = nets.solver_schedule(spec.PAPER_TRAIN, 8, 1000, n_val=spec.PAPER_TEST, val_batch=8)
    assert paper["iters_per_epoch"] == 125 and paper["max_iter"] == 125000
    assert paper["test_interval"] == 125 and paper["test_iter"] == 13
    assert paper["stepsize"] == int(np.ceil(125000 * 0.33))
    odd = nets.solver_schedule(1001, 8, 3, iter_size=2)
    assert odd["iters_per_epoch"] == 63 and odd["max_iter"] == 189 and odd["test_iter"] == 0
    with pytest.raises(ValueError):
        nets.solver_schedule(0, 8, 1)


def test_write_solver_uses_digits_conventions(caffe, tmp_path):
    from google.protobuf import text_format

    schedule = nets.solver_schedule(64, 8, 10, n_val=16)
    path = nets.write_solver(str(tmp_path / "s.prototxt"), "net.prototxt", schedule, 0.01, "step", "SGD",
                             snapshot_prefix="snap", mode="CPU")
    s = caffe.proto.caffe_pb2.SolverParameter()
    with open(path) as f:
        text_format.Merge(f.read(), s)
    assert s.net == os.path.abspath("net.prototxt")
    assert list(s.train_state.stage) == ["train"] and list(s.test_state[0].stage) == ["val"]
    assert s.max_iter == 80 and s.test_interval == 8 and list(s.test_iter) == [2]
    assert s.type == "SGD" and s.momentum == pytest.approx(0.9)
    assert s.weight_decay == pytest.approx(0.01 / 100)
    assert s.stepsize == schedule["stepsize"] and s.gamma == pytest.approx(0.1)
    assert s.solver_mode == s.CPU and s.random_seed == spec.SEED
    rms = nets.write_solver(str(tmp_path / "r.prototxt"), "net.prototxt", schedule, 0.01, solver_type="RMSProp")
    with open(rms) as f:
        assert "momentum" not in f.read()
    with pytest.raises(ValueError, match="unknown solver type"):
        nets.write_solver(str(tmp_path / "x.prototxt"), "n", schedule, 0.01, solver_type="Sgd")


def test_caffe_tool_trains_with_the_python_loss(caffe, tmp_path, small_dataset):
    """`caffe train` (what DIGITS runs) must find digits_python_layers and write a snapshot."""
    try:
        caffe_env.caffe_tool()
    except caffe_env.CaffeNotFound as exc:
        if os.environ.get("CAFFE_ROOT"):          # a user's Caffe may be built without its tools
            pytest.skip(str(exc))
        pytest.fail("make setup links the `caffe` tool into the venv: %s" % exc)
    out, snap = caffe_tool_train(small_dataset, str(tmp_path))
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Test net output #1: loss" in out.stderr or "Test net output #0: loss" in out.stderr
    assert os.path.isfile(snap)
    trained = caffe.Net(nets.network("v1_1").deploy, snap, caffe.TEST)
    assert trained.params["conv10_thermal"][0].data.std() > 0


@pytest.mark.parametrize("template,epochs,batch,val_batch,snapshot_epochs", [
    ("solver_paper.prototxt", 1000, 8, 8, 100), ("solver_demo.prototxt", 40, 8, 5, 8)])
def test_solver_templates_hold_the_documented_arithmetic(caffe, tmp_path, small_dataset, template, epochs, batch,
                                                         val_batch, snapshot_epochs):
    from google.protobuf import text_format

    s = caffe.proto.caffe_pb2.SolverParameter()
    with open(os.path.join(caffe_env.PROTOTXT_DIR, template)) as f:
        text_format.Merge(f.read(), s)
    want = nets.solver_schedule(spec.PAPER_TRAIN, batch, epochs, n_val=spec.PAPER_TEST, val_batch=val_batch,
                                snapshot_every_epochs=snapshot_epochs)
    assert (s.max_iter, s.test_interval, list(s.test_iter), s.snapshot) == \
        (want["max_iter"], want["test_interval"], [want["test_iter"]], want["snapshot"])
    if s.lr_policy == "step":
        assert s.stepsize == want["stepsize"]
    assert s.weight_decay == pytest.approx(s.base_lr / 100)      # DIGITS' rule
    assert list(s.train_state.stage) == ["train"] and list(s.test_state[0].stage) == ["val"]
    assert os.path.isfile(os.path.join(caffe_env.PROTOTXT_DIR, s.net))
    # The template's optimiser runs: point it at a bound network and take one step.
    s.net = nets.materialize(nets.network("v1_1").net, small_dataset, str(tmp_path / "net.prototxt"),
                             batch_size=2, val_batch_size=2)
    s.solver_mode = s.CPU
    s.test_iter[0] = 1
    path = tmp_path / "solver.prototxt"
    path.write_text(text_format.MessageToString(s))
    solver = caffe.get_solver(str(path))
    solver.step(1)
    assert np.isfinite(float(solver.net.blobs["loss"].data.flat[0]))
