"""DIGITS' custom-network rules (digits_jobs/validate.py) on the kit's networks, in the real Caffe.

Every all-in-one network in prototxt/ is split the way DIGITS splits it, written out as
DIGITS' train_val/deploy/solver files for the (SYNTHETIC, random) tiny dataset, and run
in Caffe; broken copies of a good network must be rejected with the layer named.
"""
from __future__ import annotations

import glob
import math
import os
import shutil
import subprocess

import numpy as np
import pytest
from google.protobuf import text_format

from thermalnet import layout, spec
from thermalnet.caffe_env import PROTOTXT_DIR, caffe_pb2
from digits_jobs import validate as v

ALL_IN_ONE = sorted(p for p in glob.glob(os.path.join(PROTOTXT_DIR, "*.prototxt"))
                    if not p.endswith("_deploy.prototxt") and "solver" not in os.path.basename(p))
GOOD = os.path.join(PROTOTXT_DIR, "thermalnet_%s.prototxt" % spec.DEFAULT_BASE)


def test_networks_are_there():
    # The glob below must not pass vacuously.
    names = {os.path.basename(p) for p in ALL_IN_ONE}
    assert {"thermalnet_v1_1.prototxt", "thermalnet_v1_0.prototxt"} <= names, names


@pytest.mark.parametrize("net", ALL_IN_ONE, ids=os.path.basename)
def test_every_network_passes_digits_and_runs_in_caffe(net, tiny_dataset, caffe, tmp_path):
    root, feats = tiny_dataset
    out = str(tmp_path / "job")
    r = v.validate(net, root, out)
    c = r["caffe"]
    n, _, h, w = feats[layout.TRAIN_DB][0].shape
    assert c["deploy_input"] == (1, 3, h, w)
    assert c["deploy_prob"] == (1, spec.NUM_BINS, h, w)
    assert "loss" in c["train_outputs"] and np.isfinite(c["train_outputs"]["loss"])
    assert "loss" in c["val_outputs"]
    for f in (v.ORIGINAL_FILE, v.TRAIN_VAL_FILE, v.DEPLOY_FILE, v.SOLVER_FILE, v.PYTHON_LAYER_FILE):
        assert os.path.isfile(os.path.join(out, f)), f


def _load(path, msg):
    with open(path) as f:
        return text_format.Merge(f.read(), msg)


def test_written_files_follow_digits(tiny_dataset, tmp_path):
    root, feats = tiny_dataset
    out = str(tmp_path / "job")
    v.validate(GOOD, root, out, run_caffe=False)
    pb = caffe_pb2()
    tv = _load(os.path.join(out, v.TRAIN_VAL_FILE), pb.NetParameter())
    dep = _load(os.path.join(out, v.DEPLOY_FILE), pb.NetParameter())
    data = [l for l in tv.layer if l.type == "Data"]
    assert len(data) == 4
    sources = set()
    for l in data:
        # DIGITS keeps only a phase rule on its Data layers, LMDB backend, the dataset's DBs.
        assert len(l.include) == 1 and not l.include[0].stage and not len(l.exclude)
        assert l.data_param.backend == pb.DataParameter.LMDB
        sources.add(l.data_param.source)
        if l.top[0] == "data":
            assert l.transform_param.mean_file == os.path.join(root, layout.TRAIN_DB, layout.MEAN_FILE)
        else:
            assert not l.transform_param.HasField("mean_file")
    assert sources == {os.path.join(root, s, p) for s in (layout.TRAIN_DB, layout.VAL_DB)
                       for p in (layout.FEATURES, layout.LABELS)}
    assert not any(l.type in ("Input", "Data") for l in dep.layer)
    assert list(dep.input) == ["data"]
    assert list(dep.input_shape[0].dim) == [1, 3, feats[layout.TRAIN_DB][0].shape[2], feats[layout.TRAIN_DB][0].shape[3]]
    assert not any(v.is_loss_layer(l) for l in dep.layer)
    assert all(not len(l.include) and not len(l.exclude) for l in dep.layer)
    # class weights: DIGITS runs Caffe in the job folder, so the path must be absolute
    loss = [l for l in tv.layer if l.type == "Python"][0]
    assert os.path.join(root, layout.CLASS_WEIGHTS_FILE) in loss.python_param.param_str


@pytest.mark.parametrize("form,batch,iter_size", [
    ({"train_epochs": 7, "batch_size": 4, "learning_rate": 0.02}, 4, 1),
    ({"train_epochs": 3, "batch_size": 4, "batch_accumulation": 2, "solver_type": "ADAGRAD"}, 4, 2),
    ({"train_epochs": 5, "lr_policy": "step", "lr_step_size": 33, "learning_rate": 0.001}, 8, 1),
    ({"train_epochs": 2, "lr_policy": "exp", "lr_exp_gamma": 0.95, "solver_type": "RMSPROP"}, 8, 1),
])
def test_solver_arithmetic(form, batch, iter_size):
    # Nominal counts: the paper's 1000/100. batch 8 comes from the network when the form leaves it out.
    ds = v.DatasetFacts.nominal()
    with open(GOOD) as f:
        files = v.digits_files(f.read(), ds, v.JobSettings.from_form(form))
    s = files.solver
    per_epoch = math.ceil(1000 / (batch * iter_size))
    assert s.max_iter == per_epoch * form["train_epochs"]
    assert s.iter_size == iter_size
    assert list(s.test_iter) == [math.ceil(100 / batch)]
    assert s.test_interval == per_epoch
    assert s.weight_decay == pytest.approx(s.base_lr / 100.0)
    assert s.net == v.TRAIN_VAL_FILE and s.snapshot_prefix == v.SNAPSHOT_PREFIX
    if form.get("solver_type") in ("ADAGRAD", "RMSPROP"):
        assert not s.HasField("momentum")
    else:
        assert s.momentum == pytest.approx(0.9)
    if form.get("lr_policy") == "step":
        assert s.stepsize == math.ceil(33 * s.max_iter / 100.0)
    if form.get("lr_policy") == "exp":
        assert s.gamma == pytest.approx(0.95 ** (100.0 / s.max_iter))
    assert s.display == max(1, min(s.max_iter // (form["train_epochs"] * 8), math.ceil(5000 / (batch * iter_size))))


def test_mean_pixel_is_the_mean_image_average(tiny_dataset):
    root, _ = tiny_dataset
    ds = v.DatasetFacts.from_dataset_dir(root)
    with open(GOOD) as f:
        files = v.digits_files(f.read(), ds, v.JobSettings(use_mean="pixel"))
    from thermalnet.lmdb_io import read_mean_binaryproto
    want = read_mean_binaryproto(ds.mean_file).mean(axis=(1, 2))
    for l in files.train_val.layer:
        if l.type == "Data" and l.top[0] == "data":
            assert not l.transform_param.HasField("mean_file")
            np.testing.assert_allclose(list(l.transform_param.mean_value), want, rtol=1e-6)


def test_cli_accepts_and_writes(tiny_dataset, tmp_path, capsys):
    root, _ = tiny_dataset
    out = str(tmp_path / "cli")
    assert v.main([GOOD, "--dataset", root, "--out", out, "--no-caffe"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("OK ") and "deploy" in text
    assert os.path.isfile(os.path.join(out, v.SOLVER_FILE))


# ---- broken networks: each must be refused with the layer named -------------------------------
def _edited(edit):
    pb = caffe_pb2()
    with open(GOOD) as f:
        net = text_format.Merge(f.read(), pb.NetParameter())
    edit(net, pb)
    return text_format.MessageToString(net)


def _layer(net, name):
    return [l for l in net.layer if l.name == name][0]


def _loss_in_deploy(net, pb):
    _layer(net, "loss").ClearField("exclude")


def _wrong_module(net, pb):
    _layer(net, "loss").python_param.module = "thermalnet_layers"


def _unknown_class(net, pb):
    _layer(net, "loss").python_param.layer = "WeightedSoftmax"


def _bottom_missing_in_val(net, pb):
    # conv1 only in train: relu_conv1 (and the rest) lose their bottom in val and deploy
    l = _layer(net, "conv1")
    l.include.add().stage.append("train")


def _label_missing_in_val(net, pb):
    _layer(net, "val-label").top[0] = "label_val"


def _no_train_label(net, pb):
    net.layer.remove(_layer(net, "train-label"))


def _image_data(net, pb):
    _layer(net, "train-data").type = "ImageData"


def _mirror(net, pb):
    _layer(net, "train-data").transform_param.mirror = True


def _label_mean(net, pb):
    _layer(net, "train-label").transform_param.mean_file = "train_db/mean.binaryproto"


def _no_prob(net, pb):
    _layer(net, "prob").top[0] = "probs"


def _two_train_data(net, pb):
    extra = net.layer.add()
    extra.CopyFrom(_layer(net, "train-data"))
    extra.name = "train-data-2"


def _data_in_both_phases(net, pb):
    _layer(net, "val-data").ClearField("include")


def _two_tops(net, pb):
    _layer(net, "train-data").top.append("label")


BROKEN = [
    (_loss_in_deploy, "'loss'", "deploy"),
    (_wrong_module, "'loss'", "digits_python_layers"),
    (_unknown_class, "'loss'", "WeightedSoftmax"),
    (_bottom_missing_in_val, "'relu_conv1'", "conv1"),
    (_label_missing_in_val, "'loss'", "'label'"),
    (_no_train_label, "train", "label"),
    (_image_data, "'train-data'", "ImageData"),
    (_mirror, "'train-data'", "mirror"),
    (_label_mean, "'train-label'", "mean_file"),
    (_no_prob, "prob", "deploy"),
    (_two_train_data, "'train-data-2'", "two train"),
    (_data_in_both_phases, "'val-data'", "both"),
    (_two_tops, "'train-data'", "one top"),
]


@pytest.mark.parametrize("edit,layer,why", BROKEN, ids=[b[0].__name__.strip("_") for b in BROKEN])
def test_broken_network_is_rejected_naming_the_layer(edit, layer, why):
    text = _edited(edit)
    with pytest.raises(v.DigitsRuleError) as ei:
        v.digits_files(text, v.DatasetFacts.nominal(), v.JobSettings(), where="broken.prototxt")
    msg = str(ei.value)
    assert layer in msg and why in msg, msg
    assert "\n" not in msg


def test_not_a_netparameter():
    with pytest.raises(v.DigitsRuleError, match="broken.prototxt: not a valid NetParameter"):
        v.digits_files("layer { nme: 'x' }", v.DatasetFacts.nominal(), where="broken.prototxt")


def test_crop_size_would_misalign_labels():
    with open(GOOD) as f:
        text = f.read()
    with pytest.raises(v.DigitsRuleError, match="'train-data'.*crop"):
        v.digits_files(text, v.DatasetFacts.nominal(), v.JobSettings(crop_size=96))


def test_cli_rejects_with_exit_1(tmp_path, capsys):
    bad = tmp_path / "loss_in_deploy.prototxt"
    bad.write_text(_edited(_loss_in_deploy))
    assert v.main([str(bad), "--no-caffe"]) == 1
    out = capsys.readouterr().out
    assert out.startswith("REJECTED %s" % bad) and "'loss'" in out


def test_cli_exit_codes_and_one_line_errors(tmp_path, capsys):
    """A bad job file is exit 1 with one line naming it (it was 2); 2 is left to argparse."""
    for name, text, want in (("absent.json", None, "no such job definition"), ("bad.json", "{", "not JSON"),
                             ("list.json", "[1]", "a job definition is a JSON object"),
                             ("field.json", '{"form": {"solver_type": "Adam"}}', "solver_type 'Adam'")):
        path = tmp_path / name
        if text is not None:
            path.write_text(text)
        assert v.main([GOOD, "--no-caffe", "--job", str(path)]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: %s: " % path) and want in err[0], err
    with pytest.raises(SystemExit) as ei:
        v.main([GOOD, GOOD, "--out", str(tmp_path / "o")])     # --out with two networks: a usage error
    assert ei.value.code == 2 and not os.path.exists(tmp_path / "o")
    assert "--out takes one network" in capsys.readouterr().err


def test_caffe_itself_would_fail_without_the_digits_rules(tiny_dataset, tmp_path):
    # Why the deploy check matters: Caffe aborts on a deploy net whose loss needs the label.
    # (glog FATAL aborts the process, hence a child interpreter.)
    import sys
    root, _ = tiny_dataset
    ds = v.DatasetFacts.from_dataset_dir(root)
    with open(GOOD) as f:
        files = v.digits_files(f.read(), ds, v.JobSettings())
    loss = caffe_pb2().LayerParameter()
    loss.CopyFrom([l for l in files.train_val.layer if l.name == "loss"][0])
    loss.ClearField("include")
    files.deploy.layer.add().CopyFrom(loss)
    job = v.write_job_dir(files, str(tmp_path / "job"), os.path.join(PROTOTXT_DIR, v.PYTHON_LAYER_FILE))
    code = ("from thermalnet.caffe_env import import_caffe; c = import_caffe(quiet=False); "
            "c.Net(%r, c.TEST)" % os.path.join(job, v.DEPLOY_FILE))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=job,
                       env=dict(os.environ, PYTHONPATH=os.path.dirname(PROTOTXT_DIR)))
    assert r.returncode != 0
    assert "Unknown bottom blob 'label'" in r.stderr, r.stderr[-2000:]


def test_rewrite_class_weights_only_touches_relative_paths():
    with open(GOOD) as f:
        text = f.read()
    out = v.rewrite_class_weights(text, "/srv/data/ds/class_weights.txt")
    assert '\\"class_weights\\": \\"/srv/data/ds/class_weights.txt\\"' in out or \
        '"class_weights": "/srv/data/ds/class_weights.txt"' in out
    assert v.rewrite_class_weights(out, "/elsewhere.txt") == out


def _python2():
    cands = [shutil.which("python2.7"), shutil.which("python2")]
    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    cands += sorted(glob.glob(os.path.join(root, "versions", "2.7*", "bin", "python2.7")))
    for c in cands:
        if c and subprocess.run([c, "-c", "import sys; sys.exit(sys.version_info[0] != 2)"],
                                capture_output=True).returncode == 0:
            return c
    return None


def test_python_layer_file_compiles_under_python2(tmp_path):
    # DIGITS 6 and its NVCaffe run Python 2.7: the uploaded loss layer must parse there.
    py2 = _python2()
    if py2 is None:
        pytest.skip("no Python 2.7 interpreter on this machine")
    src = os.path.join(PROTOTXT_DIR, v.PYTHON_LAYER_FILE)
    r = subprocess.run([py2, "-c", "import py_compile, sys; py_compile.compile(sys.argv[1], cfile=sys.argv[2], "
                        "doraise=True)", src, str(tmp_path / "x.pyc")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
