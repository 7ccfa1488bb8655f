"""Fine-tuning from ImageNet SqueezeNet (tools.train --weights) and the best snapshot.

The official SqueezeNet v1.0 / v1.1 caffemodels cannot be downloaded here, so the tests
write SqueezeNet's deploy structure themselves (layer names and blob shapes of the
published networks), give it random weights in the real Caffe and save a STAND-IN
caffemodel. It proves the plumbing (names, shapes, copying, errors), not the effect of
ImageNet features.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import make_tiny_dataset
from thermalnet import caffe_log, nets
from tools import train as tr

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
H, W = 48, 64
NEW_LAYERS = [nets.SCORE_LAYER] + list(nets.UPSAMPLE_LAYERS)

# SqueezeNet's fire modules: (name, squeeze, expand) and where the max-pools sit.
# v1.0: conv1 96 filters 7x7/2, pools after conv1, fire4, fire8.
# v1.1: conv1 64 filters 3x3/2, pools after conv1, fire3, fire5.
FIRES = [("fire2", 16, 64), ("fire3", 16, 64), ("fire4", 32, 128), ("fire5", 32, 128),
         ("fire6", 48, 192), ("fire7", 48, 192), ("fire8", 64, 256), ("fire9", 64, 256)]
SQUEEZENET = {"v1_0": {"conv1": (96, 7), "pool_after": ("conv1", "fire4", "fire8"), "params": 1248424},
              "v1_1": {"conv1": (64, 3), "pool_after": ("conv1", "fire3", "fire5"), "params": 1235496}}


def squeezenet_deploy_text(version: str, size: int = 227) -> str:
    """SqueezeNet's deploy network (ImageNet, 1000 classes) written out for the tests."""
    spec = SQUEEZENET[version]
    out = ['name: "squeezenet_%s_standin"' % version,
           'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: %d dim: %d } } }'
           % (size, size)]

    def conv(name, bottom, n, k, stride=1, pad=0):
        out.append('layer { name: "%s" type: "Convolution" bottom: "%s" top: "%s" convolution_param { '
                   'num_output: %d kernel_size: %d stride: %d pad: %d } }' % (name, bottom, name, n, k, stride, pad))

    def relu(name, blob):
        out.append('layer { name: "%s" type: "ReLU" bottom: "%s" top: "%s" }' % (name, blob, blob))

    def pool(name, bottom):
        out.append('layer { name: "%s" type: "Pooling" bottom: "%s" top: "%s" pooling_param { pool: MAX '
                   'kernel_size: 3 stride: 2 } }' % (name, bottom, name))

    n1, k1 = spec["conv1"]
    conv("conv1", "data", n1, k1, stride=2)
    relu("relu_conv1", "conv1")
    pool("pool1", "conv1")
    top = "pool1"
    for fire, s, e in FIRES:
        conv(fire + "/squeeze1x1", top, s, 1)
        relu(fire + "/relu_squeeze1x1", fire + "/squeeze1x1")
        conv(fire + "/expand1x1", fire + "/squeeze1x1", e, 1)
        relu(fire + "/relu_expand1x1", fire + "/expand1x1")
        conv(fire + "/expand3x3", fire + "/squeeze1x1", e, 3, pad=1)
        relu(fire + "/relu_expand3x3", fire + "/expand3x3")
        out.append('layer { name: "%s/concat" type: "Concat" bottom: "%s/expand1x1" bottom: "%s/expand3x3" '
                   'top: "%s/concat" }' % (fire, fire, fire, fire))
        top = fire + "/concat"
        if fire in spec["pool_after"]:
            p = "pool" + fire[len("fire"):]
            pool(p, top)
            top = p
    out.append('layer { name: "drop9" type: "Dropout" bottom: "%s" top: "%s" dropout_param { dropout_ratio: 0.5 } }'
               % (top, top))
    conv("conv10", top, 1000, 1, pad=1 if version == "v1_0" else 0)
    relu("relu_conv10", "conv10")
    out.append('layer { name: "pool10" type: "Pooling" bottom: "conv10" top: "pool10" '
               'pooling_param { pool: AVE global_pooling: true } }')
    out.append('layer { name: "prob" type: "Softmax" bottom: "pool10" top: "prob" }')
    return "\n".join(out) + "\n"


@pytest.fixture(scope="module")
def standin(tmp_path_factory, caffe):
    """{version: (caffemodel path, {layer: [blob arrays]})}: random-weight SqueezeNet STAND-INs."""
    root = tmp_path_factory.mktemp("squeezenet_standin")
    result = {}
    for i, version in enumerate(sorted(SQUEEZENET)):
        proto = root / ("squeezenet_%s_deploy.prototxt" % version)
        proto.write_text(squeezenet_deploy_text(version))
        net = caffe.Net(str(proto), caffe.TEST)
        rng = np.random.RandomState(100 + i)
        for blobs in net.params.values():
            for b in blobs:
                b.data[...] = rng.randn(*b.data.shape).astype(np.float32) * 0.05
        model = root / ("squeezenet_%s_standin.caffemodel" % version)
        net.save(str(model))
        result[version] = (str(model), {k: [b.data.copy() for b in v] for k, v in net.params.items()})
        del net
    return result


@pytest.fixture(scope="module")
def small_ds(tmp_path_factory):
    root, _ = make_tiny_dataset(str(tmp_path_factory.mktemp("ft_ds")), n_train=4, n_val=2, height=H, width=W)
    return root


def test_standin_has_squeezenet_names_and_parameter_counts(standin, caffe):
    """The test's SqueezeNet has the published parameter counts (v1.0 1,248,424, v1.1 1,235,496)
    and exactly the Thermalnet body's layer names and shapes, plus conv10 (1000 classes)."""
    for version, (model, params) in standin.items():
        assert sum(b.size for blobs in params.values() for b in blobs) == SQUEEZENET[version]["params"]
        assert params["conv10"][0].shape == (1000, 512, 1, 1)
        body = nets.net_param_shapes(nets.network(version).deploy)
        assert [n for n in body if n not in NEW_LAYERS] == [n for n in params if n != "conv10"]
        for name, shapes in body.items():
            if name not in NEW_LAYERS:
                assert shapes == [b.shape for b in params[name]], name
    assert standin["v1_0"][1]["conv1"][0].shape == (96, 3, 7, 7)
    assert standin["v1_1"][1]["conv1"][0].shape == (64, 3, 3, 3)


def _thermalnet(caffe, name, stage, tmp_path, small_ds):
    info = nets.network(name)
    if stage == "deploy_file":
        return caffe.Net(info.deploy, caffe.TEST)
    path = nets.materialize(info.net, small_ds, str(tmp_path / "net.prototxt"), batch_size=2, val_batch_size=2)
    if stage == "train":
        return caffe.Net(path, caffe.TRAIN, stages=["train"])
    return caffe.Net(path, caffe.TEST, stages=["deploy"])


@pytest.mark.parametrize("stage", ["train", "deploy", "deploy_file"])
@pytest.mark.parametrize("name", sorted(nets.NETWORKS))
def test_squeezenet_weights_load_by_name_into_every_thermalnet(standin, small_ds, tmp_path, caffe, name, stage):
    """copy_from (what Caffe's -weights does) into every network and stage: each SqueezeNet
    blob arrives unchanged, conv10_thermal and the upsampling keep their fillers."""
    model, src = standin[nets.network(name).base]
    fit = nets.check_weights(model, nets.network(name).net)
    assert fit["from_fillers"] == NEW_LAYERS
    assert fit["files"][0]["ignored"] == ["conv10"]
    net = _thermalnet(caffe, name, stage, tmp_path, small_ds)
    before = {k: [b.data.copy() for b in net.params[k]] for k in NEW_LAYERS}
    net.copy_from(model)
    assert "conv10" not in net.params
    copied = [k for k in net.params if k not in NEW_LAYERS]
    assert copied == fit["from_weights"] and len(copied) == 1 + 3 * len(FIRES)
    for k in copied:
        for got, want in zip(net.params[k], src[k]):
            assert np.array_equal(got.data, want), k
    for k in NEW_LAYERS:
        for got, init in zip(net.params[k], before[k]):
            assert np.array_equal(got.data, init), k
    assert net.params[nets.SCORE_LAYER][0].data.std() > 0          # the gaussian filler, not zeros
    del net


def test_legacy_v1_caffemodel_is_read_like_caffe_reads_it(standin, tmp_path, caffe):
    """An old-format file (V1 `layers`, blobs as num/channels/height/width) passes the check
    and Caffe loads the same values from it."""
    from thermalnet.caffe_env import caffe_pb2
    pb = caffe_pb2()
    model, src = standin["v1_1"]
    new = pb.NetParameter()
    with open(model, "rb") as f:
        new.ParseFromString(f.read())
    old = pb.NetParameter(name=new.name)
    for layer in new.layer:
        if not layer.blobs:
            continue
        v1 = old.layers.add(name=layer.name, type=pb.V1LayerParameter.CONVOLUTION)
        for blob in layer.blobs:
            dims = (1, 1, 1) + tuple(blob.shape.dim) if len(blob.shape.dim) == 1 else tuple(blob.shape.dim)
            b = v1.blobs.add(num=dims[0], channels=dims[1], height=dims[2], width=dims[3])
            b.data.extend(blob.data)
    path = tmp_path / "v1_format.caffemodel"
    path.write_bytes(old.SerializeToString())
    shapes = nets.read_caffemodel(str(path))
    assert shapes["conv10"][1] == ((1, 1, 1, 1000), True)
    fit = nets.check_weights(str(path), nets.network("v1_1").deploy)
    assert fit["from_fillers"] == NEW_LAYERS
    net = caffe.Net(nets.network("v1_1").deploy, caffe.TEST)
    net.copy_from(str(path))
    for k in fit["from_weights"]:
        for got, want in zip(net.params[k], src[k]):
            assert np.array_equal(got.data, want), k
    # ... and a legacy blob of the wrong shape is caught like a new-format one.
    old.layers[0].blobs[0].num = 96
    path.write_bytes(old.SerializeToString())
    with pytest.raises(nets.WeightsError, match="layer 'conv1' blob 0 .* has shape 96x3x3x3 in the file but 64x3x3x3"):
        nets.check_weights(str(path), nets.network("v1_1").deploy)


def _cli(args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "tools.train"] + args, cwd=cwd, capture_output=True, text=True)


def test_wrong_weights_are_one_line_errors_before_anything_is_written(standin, small_ds, tmp_path):
    """v1.0 weights into the v1.1 net, and files that are not caffemodels: one line naming the
    file (and the layer and both shapes), exit 1, no run folder, never Caffe's abort."""
    v10, _ = standin["v1_0"]
    text = tmp_path / "notes.caffemodel"
    text.write_text("this is not a model\n")
    empty = tmp_path / "empty.caffemodel"
    empty.write_bytes(b"")
    unrelated = tmp_path / "unrelated.caffemodel"
    shutil.copy(str(standin["v1_1"][0]), str(unrelated))
    from thermalnet.caffe_env import caffe_pb2
    msg = caffe_pb2().NetParameter()
    msg.ParseFromString(unrelated.read_bytes())
    for layer in msg.layer:
        layer.name = "vgg_" + layer.name
    unrelated.write_bytes(msg.SerializeToString())
    cases = [
        (v10, ["squeezenet_v1_0_standin.caffemodel", "layer 'conv1'", "96x3x7x7 in the file", "64x3x3x3 in"]),
        (str(tmp_path / "missing.caffemodel"), ["missing.caffemodel: no such caffemodel"]),
        (str(text), ["notes.caffemodel: not a binary Caffe model"]),
        (str(empty), ["empty.caffemodel: not a binary Caffe model with weights"]),
        (str(unrelated), ["unrelated.caffemodel: none of its", "nothing would be copied"]),
        (str(standin["v1_1"][0]) + "," + v10, ["squeezenet_v1_0_standin.caffemodel", "layer 'conv1'"]),
    ]
    for i, (weights, expect) in enumerate(cases):
        out = tmp_path / ("run%d" % i)
        r = _cli(["--dataset", small_ds, "--out", str(out), "--epochs", "1", "--batch-size", "2",
                  "--weights", weights])
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 1 and len(lines) == 1, (weights, r.stderr)
        assert lines[0].startswith("error: ")
        for e in expect:
            assert e in lines[0], (e, lines[0])
        assert not out.exists(), "nothing may be written for a refused run"


def test_weights_probe_tells_a_caffe_that_reads_the_flag_from_one_that_ignores_it(tmp_path, small_ds,
                                                                                   monkeypatch):
    """caffe_tool_reads_weights on two stand-in tools: one fails on the missing file (as BVLC's
    caffe train does), one trains regardless (as an rc3-lineage build without the kit's patch
    0008 does); train() refuses --weights with the second before writing anything."""
    reads, ignores = tmp_path / "reads", tmp_path / "ignores"
    reads.write_text('#!/bin/sh\nfor a; do last=$a; done\necho "Failed to parse NetParameter file: $last" >&2\n'
                     'exit 134\n')
    ignores.write_text('#!/bin/sh\necho "Optimization Done." >&2\nexit 0\n')
    for f in (reads, ignores):
        f.chmod(0o755)
    assert tr.caffe_tool_reads_weights(str(reads)) is True
    assert tr.caffe_tool_reads_weights(str(ignores)) is False
    monkeypatch.setattr(tr, "caffe_tool_reads_weights", lambda tool: False)
    with pytest.raises(ValueError, match="this caffe tool ignores -weights"):
        tr.train(small_ds, tr.DEFAULT_NET, str(tmp_path / "r"), epochs=1, batch_size=2, progress=False,
                 backend="caffe", weights=str(reads))
    assert not (tmp_path / "r").exists()


def test_caffe_train_weights_starts_from_the_weights(caffe, tmp_path):
    """`caffe train -weights A,B` (what DIGITS runs for its pretrained-model field, the kit's
    client for --weights and --import) copies A, then B, by layer name before the first step:
    the iteration-0 snapshot holds B's blobs, not the fillers. The kit's rc3-lineage Caffe
    ignored the flag until patch 0008; BVLC 1.0 and NVCaffe always read it."""
    from thermalnet.caffe_env import caffe_tool
    net = tmp_path / "net.prototxt"
    net.write_text(tr._PROBE_NET.replace("num_output: 1 }", 'num_output: 1 weight_filler { type: "gaussian" '
                                                             'std: 1 } bias_filler { type: "gaussian" std: 1 } }'))
    files = []
    for i, scale in enumerate((3.0, 7.0)):
        n = caffe.Net(str(net), caffe.TEST)
        n.params["ip"][0].data[...] = scale * np.array([[1.0, 2.0]])
        n.params["ip"][1].data[...] = scale
        files.append(str(tmp_path / ("w%d.caffemodel" % i)))
        n.save(files[-1])
        del n
    solver = tmp_path / "solver.prototxt"
    solver.write_text('net: "%s"\nbase_lr: 0.01\nlr_policy: "fixed"\nmax_iter: 0\ndisplay: 1\n'
                      'snapshot_prefix: "%s"\nsolver_mode: CPU\n' % (net, tmp_path / "snap"))
    r = subprocess.run([caffe_tool(), "train", "-solver", str(solver), "-weights", ",".join(files)],
                       capture_output=True, text=True, cwd=str(tmp_path),
                       env=dict(os.environ, GLOG_logtostderr="1", GLOG_minloglevel="0"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Finetuning from %s" % files[0] in r.stderr and "Finetuning from %s" % files[1] in r.stderr
    got = caffe.Net(str(net), str(tmp_path / "snap_iter_0.caffemodel"), caffe.TEST).params["ip"]
    np.testing.assert_array_equal(got[0].data, [[7.0, 14.0]])
    np.testing.assert_array_equal(got[1].data, [7.0])


def test_nets_cli_checks_weights(standin, capsys):
    assert nets.main(["--net", "v1_1", "--check-weights", standin["v1_1"][0]]) == 0
    out = capsys.readouterr().out
    assert "25 layers copied by name; not in the network: conv10" in out
    assert "v1_1: from the weights 25 layers; from fillers: conv10_thermal, upscore1, upscore2" in out
    assert nets.main(["--net", "v1_0", "--check-weights", standin["v1_1"][0]]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "layer 'conv1' blob 0 (weights) has shape 64x3x3x3 in the file but 96x3x7x7" in err[0]


def test_resume_and_weights_together_are_refused(standin, small_ds, tmp_path):
    with pytest.raises(ValueError, match="--resume .* or --weights .* not both"):
        tr.train(small_ds, tr.DEFAULT_NET, str(tmp_path / "r"), epochs=1, batch_size=2, progress=False,
                 resume=str(tmp_path / "snap_iter_2.solverstate"), weights=standin["v1_1"][0])


@pytest.mark.parametrize("backend", ["pycaffe", "caffe"])
def test_train_with_weights_on_both_backends(standin, small_ds, tmp_path, caffe, backend):
    """--weights through the CLI: the summary records the file and the layers; with a zero
    learning rate (1e-30: Caffe wants one > 0) the final snapshot holds the SqueezeNet blobs
    and the fillers."""
    model, src = standin["v1_1"]
    out = tmp_path / backend
    r = _cli(["--dataset", small_ds, "--out", str(out), "--epochs", "1", "--batch-size", "2", "--base-lr", "1e-30",
              "--backend", backend, "--weights", model])
    assert r.returncode == 0, r.stderr
    assert "fine-tuned from %s" % model in r.stdout
    s = json.load(open(out / "train_summary.json"))
    assert s["weights"] == [os.path.abspath(model)] and s["backend"] == backend
    assert s["weights_layers"]["from_fillers"] == NEW_LAYERS
    assert len(s["weights_layers"]["from_weights"]) == 1 + 3 * len(FIRES)
    log = (out / "train.log").read_text()
    if backend == "caffe":
        assert "caffe train -solver %s -weights %s" % (out / tr.CAFFE_SOLVER_FILE, model) in log
    assert "Finetuning from %s" % model in log       # the line BVLC's caffe train writes for -weights
    net = caffe.Net(nets.network("v1_1").deploy, caffe.TEST, weights=s["final_caffemodel"])
    for k in s["weights_layers"]["from_weights"]:
        for got, want in zip(net.params[k], src[k]):
            np.testing.assert_allclose(got.data, want, rtol=1e-6, atol=1e-20, err_msg=k)
    # The same run without --weights (same solver seed, so the same fillers): the new layers are
    # identical, the body is not -- the new layers came from the fillers, the body from the file.
    plain = tmp_path / (backend + "_plain")
    s0 = tr.train(small_ds, tr.DEFAULT_NET, str(plain), epochs=1, batch_size=2, base_lr=1e-30, progress=False,
                  backend=backend)
    assert s0["weights"] == [] and s0["weights_layers"] is None
    ref = caffe.Net(nets.network("v1_1").deploy, caffe.TEST, weights=s0["final_caffemodel"])
    for k in NEW_LAYERS:
        for a, b in zip(net.params[k], ref.params[k]):
            np.testing.assert_allclose(a.data, b.data, rtol=1e-6, atol=1e-20, err_msg=k)
    assert not np.allclose(net.params["conv1"][0].data, ref.params["conv1"][0].data, rtol=1e-3)


# -- the best snapshot ----------------------------------------------------------------------
def _best_run(out, ds, backend, **kw):
    args = dict(epochs=6, batch_size=2, base_lr=0.01, progress=False, snapshot_epochs=3, display=1, backend=backend)
    args.update(kw)
    return tr.train(ds, tr.DEFAULT_NET, str(out), **args)


@pytest.fixture(scope="module")
def best_runs(small_ds, tmp_path_factory):
    root = tmp_path_factory.mktemp("best")
    return {b: (_best_run(root / b, small_ds, b), str(root / b)) for b in ("pycaffe", "caffe")}


@pytest.mark.parametrize("backend", ["pycaffe", "caffe"])
def test_best_snapshot_is_the_lowest_validation_loss(best_runs, caffe, backend):
    s, out = best_runs[backend]
    val = caffe_log.read_csv(os.path.join(out, "val.csv"))
    # caffe train validates before it first saves, so its candidates start after iteration 0.
    rows = [r for r in val if backend == "pycaffe" or r["iteration"] > 0]
    want = min(rows, key=lambda r: r["loss"])
    assert want["iteration"] != s["iterations"], "set-up: the val loss must turn up for this test to mean much"
    assert s["best"]["iteration"] == want["iteration"]
    assert s["best"]["val_loss"] == pytest.approx(want["loss"], rel=1e-5)
    assert s["best"]["caffemodel"] == os.path.join(out, tr.BEST_MODEL)
    assert json.load(open(os.path.join(out, tr.BEST_INFO)))["iteration"] == want["iteration"]
    assert json.load(open(os.path.join(out, tr.SUMMARY_FILE)))["best"] == s["best"]
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]
    # The user's snapshot schedule is what stays on disk (every 3 epochs = 6 iterations, and the last).
    snaps = sorted(int(f[len("snap_iter_"):-len(".caffemodel")]) for f in os.listdir(out)
                   if f.startswith("snap_iter_") and f.endswith(".caffemodel"))
    assert snaps == [6, 12]


def test_caffe_backend_keeps_only_the_users_snapshots_off_the_validation_grid(small_ds, tmp_path):
    """Snapshots every 1.5 epochs (3 iterations), validation every epoch (2): caffe saves every
    iteration to catch both; what stays is the schedule (3, 6), the last, and best.caffemodel."""
    out = tmp_path / "grid"
    s = _best_run(out, small_ds, "caffe", epochs=3, snapshot_epochs=1.5)
    assert tr._solver_param(str(out / tr.CAFFE_SOLVER_FILE)).snapshot == 1
    assert "Snapshotting to binary proto file %s" % (out / "snap_iter_1.caffemodel") in (out / "train.log").read_text()
    snaps = sorted(f for f in os.listdir(out) if f.startswith("snap_iter_"))
    assert snaps == ["snap_iter_3.caffemodel", "snap_iter_3.solverstate", "snap_iter_6.caffemodel",
                     "snap_iter_6.solverstate"]
    assert s["best"]["iteration"] in (2, 4, 6) and os.path.isfile(out / tr.BEST_MODEL)


def _weights_at(caffe, run_dir, it):
    """{layer: [arrays]} of a pycaffe run with a snapshot every epoch, at iteration `it`: its
    snapshot, or at iteration 0, where no snapshot is taken, the net its solver file starts from
    (the same seed, so the same fillers). Which iteration is best depends on the Caffe's
    arithmetic: with BVLC 1.0's the pycaffe run's best is iteration 0, with the kit's later."""
    if it:
        snap = str(run_dir / ("snap_iter_%d.caffemodel" % it))
        net = caffe.Net(nets.network("v1_1").deploy, caffe.TEST, weights=snap)
    else:
        net = caffe.get_solver(str(run_dir / tr.PYCAFFE_SOLVER_FILE)).net
    return {k: [b.data.copy() for b in v] for k, v in net.params.items()}


def test_best_snapshot_holds_the_weights_of_that_iteration(best_runs, small_ds, tmp_path, caffe):
    """Both back-ends' best.caffemodel equal the weights of the pycaffe run at the best iteration
    (same seed and data: the two back-ends compute the same numbers)."""
    ref_out = tmp_path / "every_epoch"
    _best_run(ref_out, small_ds, "pycaffe", snapshot_epochs=1)
    deploy = nets.network("v1_1").deploy
    for backend, close in (("caffe", True), ("pycaffe", False)):     # pycaffe: the same run again, bit for bit
        best = best_runs[backend][0]["best"]
        ref = _weights_at(caffe, ref_out, best["iteration"])
        got = caffe.Net(deploy, caffe.TEST, weights=best["caffemodel"])
        assert set(got.params) <= set(ref), (backend, best["iteration"])
        for k in got.params:
            for a, b in zip(ref[k], got.params[k]):
                if close:
                    np.testing.assert_allclose(a, b.data, rtol=1e-4, atol=1e-6, err_msg=k)
                else:
                    assert np.array_equal(a, b.data), k


def test_pick_snapshot_names_the_model(best_runs):
    s, out = best_runs["pycaffe"]
    best = tr.pick_snapshot(s, "best")
    last = tr.pick_snapshot(s, "last")
    assert best["which"] == "best" and best["caffemodel"].endswith(tr.BEST_MODEL)
    assert best["iteration"] == s["best"]["iteration"]
    assert last["which"] == "last" and last["caffemodel"] == s["final_caffemodel"] and last["iteration"] == 12
    no_val = dict(s, best=None)
    assert tr.pick_snapshot(no_val, "best")["which"].startswith("last (no validation")
    with pytest.raises(ValueError, match="unknown snapshot"):
        tr.pick_snapshot(s, "middle")


def test_resume_keeps_the_earlier_best(small_ds, tmp_path):
    out = tmp_path / "resume"
    first = _best_run(out, small_ds, "pycaffe", epochs=3)
    s = _best_run(out, small_ds, "pycaffe", epochs=6, resume=str(out / "snap_iter_6.solverstate"))
    val = caffe_log.read_csv(str(out / "val.csv"))
    want = min(val, key=lambda r: r["loss"])
    assert s["best"]["iteration"] == want["iteration"]
    if want["iteration"] <= 6:
        assert s["best"] == first["best"]
    # Resumed from an earlier snapshot: a best found after it belongs to the abandoned run.
    s2 = _best_run(out, small_ds, "pycaffe", epochs=6, resume=str(out / "snap_iter_6.solverstate"))
    val = caffe_log.read_csv(str(out / "val.csv"))
    assert s2["best"]["iteration"] == min(val, key=lambda r: r["loss"])["iteration"]


@pytest.mark.parametrize("backend", ["pycaffe", "caffe"])
def test_resume_before_the_best_forgets_it(small_ds, tmp_path, backend):
    out = tmp_path / backend
    _best_run(out, small_ds, backend, epochs=6)
    fake = {"iteration": 12, "val_loss": -1.0, "caffemodel": str(out / tr.BEST_MODEL)}
    (out / tr.BEST_INFO).write_text(json.dumps(fake))              # a "best" after the resume point
    s = _best_run(out, small_ds, backend, epochs=6, resume=str(out / "snap_iter_6.solverstate"))
    assert s["best"]["val_loss"] > 0 and s["best"]["iteration"] >= 6


# -- a damaged dataset ---------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_corrupt_lmdb_is_one_line_naming_the_folder(small_ds, tmp_path, damage):
    ds = tmp_path / "ds"
    shutil.copytree(small_ds, str(ds))
    data = ds / "train_db" / "features" / "data.mdb"
    blob = data.read_bytes()
    if damage == "garbage":
        data.write_bytes(b"\x13" * 8192 + blob[8192:])
    elif damage == "truncated":
        data.write_bytes(blob[:len(blob) // 2])
    else:
        data.write_bytes(b"")
    out = tmp_path / "run"
    r = _cli(["--dataset", str(ds), "--out", str(out), "--epochs", "1", "--batch-size", "2"])
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    assert str(ds / "train_db" / "features") in lines[0] and "LMDB" in lines[0] and "Traceback" not in r.stderr
    assert not out.exists()


@pytest.mark.parametrize("damage", ["missing", "garbage", "wrong_size"])
def test_bad_mean_image_is_one_line_naming_the_file(small_ds, tmp_path, damage):
    ds = tmp_path / "ds"
    shutil.copytree(small_ds, str(ds))
    mean = ds / "train_db" / "mean.binaryproto"
    if damage == "missing":
        mean.unlink()
    elif damage == "garbage":
        mean.write_bytes(b"\xff" * 64)
    else:
        from thermalnet.lmdb_io import write_mean_binaryproto
        write_mean_binaryproto(np.zeros((3, H // 2, W), np.float32), str(mean))
    out = tmp_path / "run"
    r = _cli(["--dataset", str(ds), "--out", str(out), "--epochs", "1", "--batch-size", "2"])
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    assert str(mean) in lines[0] and "Traceback" not in r.stderr and not out.exists()
    if damage == "wrong_size":
        assert "1x3x24x64" in lines[0] and "3x48x64" in lines[0]
