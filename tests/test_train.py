"""tools.train / thermalnet.caffe_log / thermalnet.plots against the real Caffe.

Datasets here are the random SYNTHETIC fixture layout (tests/conftest.py) at a small
size (48x64) so each iteration costs little on 2 cores; the networks are the kit's
real prototxt/thermalnet_v1_1.prototxt materialised by thermalnet.nets.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from thermalnet import spec
from tests.conftest import make_tiny_dataset
from thermalnet import caffe_log
from tools import train as tr

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
H, W = 48, 64

REAL_FORMAT_LOG = """\
I1231 23:59:58.000000 12345 solver.cpp:330] Iteration 0, Testing net (#0)
I1231 23:59:59.000000 12345 solver.cpp:397]     Test net output #0: accuracy = 0.1
I1231 23:59:59.500000 12345 solver.cpp:397]     Test net output #1: loss = 3.5 (* 1 = 3.5 loss)
I1231 23:59:59.600000 12345 solver.cpp:218] Iteration 0 (0 iter/s, 1.2s/2 iters), loss = 3.4
I1231 23:59:59.700000 12345 solver.cpp:237]     Train net output #0: loss = 3.4 (* 1 = 3.4 loss)
I1231 23:59:59.800000 12345 sgd_solver.cpp:105] Iteration 0, lr = 0.01
I0101 00:00:01.000000 12345 solver.cpp:218] Iteration 2, loss = -nan
I0101 00:00:01.100000 12345 sgd_solver.cpp:105] Iteration 2, lr = 0.001
"""


@pytest.fixture(scope="module")
def small_ds(tmp_path_factory):
    root, _ = make_tiny_dataset(str(tmp_path_factory.mktemp("small_ds")), n_train=4, n_val=2, height=H, width=W)
    return root


def _run(out, ds, **kw):
    args = dict(epochs=2, batch_size=2, base_lr=0.001, progress=False, snapshot_epochs=1, display=1)
    args.update(kw)
    return tr.train(ds, tr.DEFAULT_NET, str(out), **args)


# -- caffe_log on fixed text ------------------------------------------------------------
def test_parse_log_formats_nan_lr_and_year_rollover():
    train, val = caffe_log.parse_log(REAL_FORMAT_LOG.splitlines(True))
    assert [r["iteration"] for r in train] == [0, 2]
    assert train[0]["loss"] == 3.4 and train[0]["lr"] == 0.01
    assert math.isnan(train[1]["loss"]) and train[1]["lr"] == 0.001
    assert train[1]["seconds"] == pytest.approx(3.0)        # Dec 31 23:59:58 -> Jan 1 00:00:01
    assert val == [{"iteration": 0, "seconds": 0.0, "loss": 3.5, "lr": 0.01}]   # the output named loss
    # glog >= 0.6 puts the year in front (YYYYMMDD), as the Caffe built here does.
    new = [l.replace("I1231 ", "I20261231 ").replace("I0101 ", "I20270101 ") for l in REAL_FORMAT_LOG.splitlines(True)]
    train2, val2 = caffe_log.parse_log(new)
    assert [(r["iteration"], r["seconds"], r["lr"]) for r in train2] == [(0, 1.6, 0.01), (2, pytest.approx(3.0), 0.001)]
    assert val2 == val


def test_parse_log_resume_supersedes_repeated_iterations():
    lines = ["I0101 00:00:0%d.000000 1 s.cpp:1] Iteration %d, loss = %g\n" % (i, it, l)
             for i, (it, l) in enumerate([(0, 3.0), (1, 2.9), (2, 2.8), (1, 2.7), (2, 2.6)])]
    train, _ = caffe_log.parse_log(lines)
    assert [(r["iteration"], r["loss"]) for r in train] == [(0, 3.0), (1, 2.7), (2, 2.6)]


def test_log_to_csv_rejects_non_caffe_log(tmp_path):
    p = tmp_path / "notes.txt"
    p.write_text("hello\n")
    with pytest.raises(ValueError, match="notes.txt.*not a Caffe training log"):
        caffe_log.log_to_csv(str(p))
    assert caffe_log.main([str(tmp_path / "missing.log")]) == 1


# -- checks before training -----------------------------------------------------------------
def test_class_count_mismatch_is_a_clear_error(tmp_path, capsys):
    ds, _ = make_tiny_dataset(str(tmp_path / "q16"), n_train=2, n_val=1, height=H, width=W, num_bins=16)
    with pytest.raises(tr.ClassCountMismatch, match=r"predicts 32 classes.*num_bins 16"):
        tr.train(ds, tr.DEFAULT_NET, str(tmp_path / "run"), epochs=1, batch_size=1, progress=False)
    rc = tr.main(["--dataset", ds, "--out", str(tmp_path / "run2"), "--epochs", "1", "--batch-size", "1"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1 and "num_bins 16" in err
    assert not os.path.exists(tmp_path / "run" / "train.log")


def test_refuses_to_clobber_a_run_without_resume(small_ds, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "train.log").write_text("old\n")
    with pytest.raises(FileExistsError, match="--resume"):
        _run(out, small_ds)
    assert (out / "train.log").read_text() == "old\n"


# -- training -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def full_run(small_ds, tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "run"
    return _run(out, small_ds), str(out)


def test_pycaffe_run_folder_log_csv_and_snapshots(full_run, caffe):
    s, out = full_run
    assert s["status"] == "done" and s["iterations"] == 4 and s["iters_per_epoch"] == 2
    for f in ("train_val.prototxt", "solver.prototxt", "train.log", "train.csv", "val.csv", "loss.png",
              "snap_iter_2.caffemodel", "snap_iter_2.solverstate", "snap_iter_4.caffemodel",
              "snap_iter_4.solverstate", "train_summary.json"):
        assert os.path.isfile(os.path.join(out, f)), f
    log = open(os.path.join(out, "train.log")).read().splitlines()
    assert all(caffe_log.GLOG_RE.match(l) for l in log), [l for l in log if not caffe_log.GLOG_RE.match(l)][:3]
    train = caffe_log.read_csv(os.path.join(out, "train.csv"))
    val = caffe_log.read_csv(os.path.join(out, "val.csv"))
    assert [r["iteration"] for r in train] == [0, 1, 2, 3]
    assert [r["iteration"] for r in val] == [0, 2, 4]        # before training, then every epoch
    assert all(r["lr"] == pytest.approx(0.001) for r in train)
    # A softmax over Q=32 bins starts near ln(32) (times the mean class weight).
    assert 1.0 < train[0]["loss"] < 10.0 and all(math.isfinite(r["loss"]) for r in train + val)
    # The snapshot is a real Caffe model of the deploy net.
    net = caffe.Net(os.path.join(REPO, "prototxt", "thermalnet_v1_1_deploy.prototxt"),
                    os.path.join(out, "snap_iter_4.caffemodel"), caffe.TEST)
    assert net.params["conv10_thermal"][0].data.shape[0] == spec.NUM_BINS
    assert json.load(open(os.path.join(out, "train_summary.json")))["final_caffemodel"].endswith("snap_iter_4.caffemodel")


def test_val_loss_is_the_test_net_over_the_whole_val_db(full_run, small_ds, caffe):
    """Recompute the logged final val loss with a fresh TEST net from the snapshot."""
    s, out = full_run
    net = caffe.Net(os.path.join(out, "train_val.prototxt"), caffe.TEST, stages=["val"],
                    weights=os.path.join(out, "snap_iter_4.caffemodel"))
    total = 0.0
    for _ in range(s["test_iter"]):
        net.forward()
        total += float(net.blobs["loss"].data[0])
    val = caffe_log.read_csv(os.path.join(out, "val.csv"))
    assert val[-1]["loss"] == pytest.approx(total / s["test_iter"], rel=1e-4)


def test_resume_continues_the_same_curve(full_run, small_ds, tmp_path, caffe):
    """Train 2 iterations, resume to 4: iteration numbers continue, the log is appended,
    and the result matches the uninterrupted 4-iteration run of full_run."""
    s_full, out_full = full_run
    out = tmp_path / "resumed"
    _run(out, small_ds, epochs=1)
    first_log = (out / "train.log").read_text()
    s = _run(out, small_ds, epochs=2, resume=str(out / "snap_iter_2.solverstate"))
    log = (out / "train.log").read_text()
    assert log.startswith(first_log) and "Restoring previous solver status" in log
    train = caffe_log.read_csv(str(out / "train.csv"))
    val = caffe_log.read_csv(str(out / "val.csv"))
    assert [r["iteration"] for r in train] == [0, 1, 2, 3]
    assert [r["iteration"] for r in val] == [0, 2, 4]
    assert s["start_iter"] == 2 and s["iterations"] == 4
    ref_train = caffe_log.read_csv(os.path.join(out_full, "train.csv"))
    ref_val = caffe_log.read_csv(os.path.join(out_full, "val.csv"))
    # Identical before the interruption (same seed, same data order): deterministic CPU Caffe.
    assert [r["loss"] for r in train[:2]] == [r["loss"] for r in ref_train[:2]]
    assert val[1]["loss"] == ref_val[1]["loss"]
    # After it: the same data batches (2 iterations x 2 = one epoch, so the Data layer's
    # restart at key 0 is where the uninterrupted run is too), but drop9 draws new masks
    # after a restore (Caffe's RNG state is not in the .solverstate). So: the resumed
    # weights end nearer the uninterrupted ones than the snapshot they started from.
    deploy = os.path.join(REPO, "prototxt", "thermalnet_v1_1_deploy.prototxt")
    load = lambda p: caffe.Net(deploy, caffe.TEST, weights=str(p))
    a2, a4 = load(os.path.join(out_full, "snap_iter_2.caffemodel")), load(os.path.join(out_full, "snap_iter_4.caffemodel"))
    b4 = load(out / "snap_iter_4.caffemodel")
    for name in a4.params:
        step = np.linalg.norm(a4.params[name][0].data - a2.params[name][0].data)
        gap = np.linalg.norm(a4.params[name][0].data - b4.params[name][0].data)
        assert gap <= 0.8 * step or step == gap == 0, (name, gap, step)
    assert val[2]["loss"] == pytest.approx(ref_val[2]["loss"], rel=0.01)


def test_resume_is_bitwise_without_dropout(small_ds, tmp_path, caffe):
    """The same net minus its Dropout layer: resuming gives the uninterrupted run's exact weights."""
    from thermalnet import nets
    net = nets.load_net(tr.DEFAULT_NET)
    keep = [layer for layer in net.layer if layer.type != "Dropout"]
    assert len(keep) == len(net.layer) - 1
    del net.layer[:]
    net.layer.extend(keep)
    nodrop = str(tmp_path / "nodrop.prototxt")
    nets.save_net(net, nodrop)
    kw = dict(batch_size=2, base_lr=0.001, progress=False, snapshot_epochs=1, display=1)
    tr.train(small_ds, nodrop, str(tmp_path / "a"), epochs=2, **kw)
    tr.train(small_ds, nodrop, str(tmp_path / "b"), epochs=1, **kw)
    tr.train(small_ds, nodrop, str(tmp_path / "b"), epochs=2, resume=str(tmp_path / "b" / "snap_iter_2.solverstate"), **kw)
    deploy = os.path.join(REPO, "prototxt", "thermalnet_v1_1_deploy.prototxt")
    a = caffe.Net(deploy, caffe.TEST, weights=str(tmp_path / "a" / "snap_iter_4.caffemodel"))
    b = caffe.Net(deploy, caffe.TEST, weights=str(tmp_path / "b" / "snap_iter_4.caffemodel"))
    for name in a.params:
        for pa, pb in zip(a.params[name], b.params[name]):
            assert np.array_equal(pa.data, pb.data), name
    va = caffe_log.read_csv(str(tmp_path / "a" / "val.csv"))
    vb = caffe_log.read_csv(str(tmp_path / "b" / "val.csv"))
    assert [(r["iteration"], r["loss"]) for r in va] == [(r["iteration"], r["loss"]) for r in vb]


def test_nan_stops_training_with_a_clear_message(small_ds, tmp_path, capsys):
    out = tmp_path / "nan"
    with pytest.raises(tr.TrainingError, match=r"training stopped: loss (is nan|diverged)"):
        _run(out, small_ds, base_lr=1e12, epochs=20)
    s = json.load(open(out / "train_summary.json"))
    assert s["status"] == "stopped" and "lower --base-lr" in s["error"]
    assert 1 <= s["iterations"] < 40                   # where it stopped, recorded
    rows = caffe_log.read_csv(str(out / "train.csv"))
    assert rows and rows[-1]["iteration"] < 40          # stopped long before the 40 planned iterations
    rc = tr.main(["--dataset", small_ds, "--out", str(tmp_path / "nan2"), "--epochs", "20", "--batch-size", "2",
                  "--base-lr", "1e12"])
    err = capsys.readouterr().err
    assert rc == 1 and "error: training stopped" in err


@pytest.mark.parametrize("backend", ["pycaffe", "caffe"])
def test_time_budget_stops_with_a_snapshot_and_a_validation(small_ds, tmp_path, backend):
    out = tmp_path / backend
    s = _run(out, small_ds, epochs=50, max_minutes=1e-4, backend=backend)      # 6 ms: past it at once
    assert s["status"] == "done" and 1 <= s["iterations"] < 100
    assert "time budget" in (out / "train.log").read_text()
    assert os.path.isfile(out / ("snap_iter_%d.caffemodel" % s["iterations"]))
    val = caffe_log.read_csv(str(out / "val.csv"))
    if backend == "pycaffe":
        assert val[-1]["iteration"] == s["iterations"]


def test_divergence_watch_without_nan():
    w = tr.DivergenceWatch(factor=5.0, patience=3)
    assert w.check(0, 3.0) is None
    assert w.check(1, 20.0) is None and w.check(2, 20.0) is None
    assert w.check(3, 3.0) is None                    # recovered: the count restarts
    assert w.check(4, 16.0) is None and w.check(5, 16.0) is None
    assert "diverged" in w.check(6, 16.0)
    assert "loss is inf" in tr.DivergenceWatch().check(0, float("inf"))


def test_learning_rate_policies_match_caffe(caffe):
    from thermalnet.caffe_env import caffe_pb2
    sp = caffe_pb2().SolverParameter(base_lr=0.1, lr_policy="step", gamma=0.5, stepsize=10, max_iter=100)
    assert tr.learning_rate(sp, 9) == pytest.approx(0.1) and tr.learning_rate(sp, 10) == pytest.approx(0.05)
    sp = caffe_pb2().SolverParameter(base_lr=0.1, lr_policy="poly", power=1.0, max_iter=100)
    assert tr.learning_rate(sp, 50) == pytest.approx(0.05)
    sp = caffe_pb2().SolverParameter(base_lr=0.1, lr_policy="multistep", gamma=0.1, stepvalue=[5, 8])
    assert [tr.learning_rate(sp, i) for i in (4, 5, 8)] == pytest.approx([0.1, 0.01, 0.001])


def test_caffe_tool_backend_writes_a_real_caffe_log(small_ds, tmp_path):
    """`caffe train` as a child process: its own glog output is the log, parsed by caffe_log;
    its logged learning rates check learning_rate(), and its losses match the pycaffe loop's."""
    template = tmp_path / "sgd_step.prototxt"
    template.write_text('type: "SGD"\nbase_lr: 0.01\nlr_policy: "step"\ngamma: 0.5\nmomentum: 0.9\n')
    out = tmp_path / "tool"
    s = _run(out, small_ds, backend="caffe", epochs=1, base_lr=None, solver_template=str(template))
    log = (out / "train.log").read_text()
    assert "Solving thermalnet_v1_1" in log and "Optimization Done." in log      # caffe's own lines
    assert "solver.cpp" in log and "sgd_solver.cpp" in log
    train = caffe_log.read_csv(str(out / "train.csv"))
    val = caffe_log.read_csv(str(out / "val.csv"))
    assert [r["iteration"] for r in train] == [0, 1, 2]   # caffe also displays after the last step
    assert all(r["seconds"] is not None and r["seconds"] >= 0 for r in train + val)   # its timestamps parsed
    assert [r["iteration"] for r in val] == [0, 2]
    sp = tr._solver_param(str(out / "solver.prototxt"))
    assert sp.lr_policy == "step" and sp.type == "SGD"
    assert [r["lr"] for r in train[:2]] == pytest.approx([tr.learning_rate(sp, 0), tr.learning_rate(sp, 1)])
    assert train[1]["lr"] == pytest.approx(0.005)
    assert os.path.isfile(out / "snap_iter_2.caffemodel") and s["final_caffemodel"].endswith("snap_iter_2.caffemodel")
    # The same job through the pycaffe loop: same seed, same data, same solver -> same numbers.
    ref = _run(tmp_path / "py", small_ds, epochs=1, base_lr=None, solver_template=str(template))
    py_train = caffe_log.read_csv(str(tmp_path / "py" / "train.csv"))
    py_val = caffe_log.read_csv(str(tmp_path / "py" / "val.csv"))
    assert [r["loss"] for r in py_train] == pytest.approx([r["loss"] for r in train[:2]], rel=1e-5)
    assert [r["loss"] for r in py_val] == pytest.approx([r["loss"] for r in val], rel=1e-5)
    assert ref["iterations"] == 2


def test_cli_help_lists_the_options():
    out = subprocess.run([sys.executable, "-m", "tools.train", "--help"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0
    for opt in ("--dataset", "--net", "--solver-template", "--out", "--epochs", "--batch-size", "--base-lr",
                "--gpu", "--resume", "--backend", "--paper-scale"):
        assert opt in out.stdout


def test_log_and_plot_clis_on_a_real_run(full_run, tmp_path, capsys):
    _, out = full_run
    assert caffe_log.main([os.path.join(out, "train.log"), "--out", str(tmp_path)]) == 0
    assert open(tmp_path / "train.csv").read() == open(os.path.join(out, "train.csv")).read()
    from thermalnet import plots
    png = tmp_path / "curve.png"
    assert plots.main([out, "--out", str(png), "--iters-per-epoch", "2"]) == 0
    from PIL import Image
    assert Image.open(png).size[0] > 300
    assert plots.main([str(tmp_path / "nothing")]) == 1
