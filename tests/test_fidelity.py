"""tools.fidelity: each claim is checked on artifacts, and a broken artifact is reported as FAIL.

The shipped network on a dataset of the paper's size passes the network and split claims;
copies broken the way a careless edit would break them (a third deconvolution, global
average pooling, a dataset with 999 training pairs, another Q) are each reported FAIL
with their evidence. Networks are built in the real Caffe (in a child process).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import make_tiny_dataset
from thermalnet import layout, nets
from tools import fidelity

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NET = nets.network(nets.DEFAULT_NETWORK).net


def _status(rows):
    return {r["key"]: r["status"] for r in rows}


def _evidence(rows, key):
    return next(r["evidence"] for r in rows if r["key"] == key)


@pytest.fixture(scope="module")
def small_ds(tmp_path_factory):
    return make_tiny_dataset(str(tmp_path_factory.mktemp("fid") / "ds"), n_train=4, n_val=2, height=48, width=64)[0]


def _edited(tmp_path, edit, name="net.prototxt"):
    net = nets.load_net(NET)
    edit(net)
    path = str(tmp_path / name)
    nets.save_net(net, path)
    return path


def test_shipped_network_passes_the_network_claims(small_ds):
    rows = fidelity.check(small_ds)
    st = _status(rows)
    for key in ("squeezenet_fire", "squeezenet_body", "avgpool_removed", "two_deconv", "output_size", "eq1_loss"):
        assert st[key] == fidelity.PASS, (key, _evidence(rows, key))
    assert "input 1x3x48x64 -> prob 1x32x48x64" in _evidence(rows, "output_size")
    assert "722,496" in _evidence(rows, "squeezenet_body")
    # a dataset folder has no run and no evaluation: those claims are NOT RUN, with the reason
    assert st["epochs_1000"] == st["eq2_rms"] == st["gatys_vgg16"] == fidelity.NOT_RUN
    assert "no training run given" in _evidence(rows, "epochs_1000")
    assert st["split_1000_100"] == fidelity.FAIL          # 4 / 2 pairs
    assert all(r["status"] in (fidelity.ASSUMED, fidelity.NOT_RUN) for r in rows if r["kind"] == "assumption")


def test_three_deconvolutions_fail(small_ds, tmp_path):
    def add_third(net):
        layers = list(net.layer)
        second = [l for l in layers if l.type == "Deconvolution"][1]
        extra = type(second)()
        extra.CopyFrom(second)
        extra.name, extra.bottom[0], extra.top[0] = "upscore3", second.top[0], "upscore3"
        crop = next(l for l in layers if l.type == "Crop")
        crop.bottom[0] = "upscore3"
        pos = layers.index(second) + 1
        rest = [type(l)() for l in layers[pos:]]
        for new, old in zip(rest, layers[pos:]):
            new.CopyFrom(old)
        del net.layer[pos:]
        net.layer.extend([extra] + rest)

    rows = fidelity.check(small_ds, net=_edited(tmp_path, add_third))
    st = _status(rows)
    assert st["two_deconv"] == fidelity.FAIL
    assert "train net net.prototxt: 3 (" in _evidence(rows, "two_deconv")
    assert st["avgpool_removed"] == fidelity.PASS


def test_global_pooling_fails(small_ds, tmp_path):
    from thermalnet.caffe_env import caffe_pb2

    def global_pool(net):
        pool = [l for l in net.layer if l.type == "Pooling"][-1]
        pool.pooling_param.pool = caffe_pb2().PoolingParameter.AVE
        pool.pooling_param.global_pooling = True
        pool.pooling_param.ClearField("kernel_size")
        pool.pooling_param.ClearField("stride")

    rows = fidelity.check(small_ds, net=_edited(tmp_path, global_pool))
    st = _status(rows)
    assert st["avgpool_removed"] == fidelity.FAIL
    assert "global or average pooling present: pool5" in _evidence(rows, "avgpool_removed")
    # a 1x1 map cannot be upsampled back to 48x64: Caffe refuses it (in the child process, not here)
    assert st["output_size"] == fidelity.FAIL
    assert st["two_deconv"] == fidelity.PASS


def test_score_layer_found_by_structure_not_name(small_ds, tmp_path):
    def rename(net):
        score = fidelity.score_layer(list(net.layer))
        old = score.top[0]
        score.name, score.top[0] = "my_scores", "my_scores"
        for l in net.layer:
            for i, b in enumerate(l.bottom):
                if b == old:
                    l.bottom[i] = "my_scores"

    rows = fidelity.check(small_ds, net=_edited(tmp_path, rename))
    assert "score layer my_scores num_output 32" in _evidence(rows, "q_bins")
    assert _status(rows)["squeezenet_body"] == fidelity.PASS


def test_another_q_fails(tmp_path):
    ds = make_tiny_dataset(str(tmp_path / "q16"), n_train=2, n_val=1, height=48, width=64, num_bins=16)[0]
    rows = fidelity.check(ds, caffe_check=False)
    assert _status(rows)["q_bins"] == fidelity.FAIL
    assert "dataset.json num_bins 16" in _evidence(rows, "q_bins")


@pytest.mark.parametrize("n_train,n_val,expect", [(999, 100, "FAIL"), (1000, 100, "PASS"), (1000, 99, "FAIL")])
def test_split_counts_the_lmdbs(tmp_path, n_train, n_val, expect):
    ds = make_tiny_dataset(str(tmp_path / "ds"), n_train=n_train, n_val=n_val, height=4, width=4)[0]
    rows = fidelity.check(ds, caffe_check=False)
    assert _status(rows)["split_1000_100"] == expect
    assert "train_db/features %d entries" % n_train in _evidence(rows, "split_1000_100")
    assert "val_db/features %d" % n_val in _evidence(rows, "split_1000_100")


def test_register_is_one_complete_table():
    keys = [i.key for i in fidelity.REGISTER]
    assert len(keys) == len(set(keys))
    for item in fidelity.REGISTER:
        assert item.kind in ("claim", "assumption", "result")
        assert callable(getattr(fidelity, "check_" + item.check)), item.check
        assert item.where and item.statement
        if item.kind == "assumption":
            assert item.behind, item.key           # what supports the choice (or the marked placeholder)
        if item.kind == "result":                  # the paper's value, the tolerance, relation or absolute
            assert item.paper_value and item.tolerance and item.comparable in (fidelity.RELATION, fidelity.ABSOLUTE)
    claims = " ".join(i.statement for i in fidelity.REGISTER if i.kind == "claim")
    for words in ("640x480", "fire modules", "average pooling", "Two deconvolution", "Output size", "Eq. 1",
                  "1000 training pairs", "1000 epochs", "Eq. 2", "3x3 Gaussian", "VGG-16"):
        assert words in claims, words


def test_cli(small_ds, tmp_path):
    out = subprocess.run([sys.executable, "-m", "tools.fidelity", small_ds, "--strict", "--json",
                          str(tmp_path / "f.json")], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 1, out.stderr                # the 4/2 split FAILs: one error line
    assert len(out.stderr.strip().splitlines()) == 1 and "FAIL" in out.stderr and small_ds in out.stderr
    assert "| claim | 1000 training pairs, 100 test pairs |" in out.stdout and "**FAIL**" in out.stdout
    assert os.path.isfile(tmp_path / "f.json")
    bad = subprocess.run([sys.executable, "-m", "tools.fidelity", str(tmp_path)], cwd=REPO, capture_output=True,
                         text=True)
    assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1 and "neither a run folder" in bad.stderr
    h = subprocess.run([sys.executable, "-m", "tools.fidelity", "--help"], cwd=REPO, capture_output=True, text=True)
    assert h.returncode == 0 and "RUN_OR_DATASET" in h.stdout


def _write_manifest(ds, rows, models=None):
    with open(os.path.join(ds, "manifest.csv"), "w") as f:
        f.write("id,source,object_class,split,vis_h,vis_w,ir_h,ir_w\n")
        for r in rows:
            f.write("%s,x,human,test,%d,%d,%d,%d\n" % r)
    if models is not None:
        with open(os.path.join(ds, "alignment.csv"), "w") as f:
            f.write("id,model\n" + "".join("%s,%s\n" % kv for kv in models.items()))


def test_table1_sizes_from_the_manifest_and_the_flir_camera(tmp_path):
    ds = make_tiny_dataset(str(tmp_path / "ds"), n_train=2, n_val=1, height=4, width=4)[0]
    _write_manifest(ds, [("a", 480, 640, 120, 160), ("b", 480, 640, 120, 160)])
    assert _status(fidelity.check(ds, caffe_check=False))["table1_sizes"] == fidelity.PASS
    _write_manifest(ds, [("a", 480, 640, 120, 160), ("b", 1080, 1440, 120, 160)])
    rows = fidelity.check(ds, caffe_check=False)
    assert _status(rows)["table1_sizes"] == fidelity.FAIL and "1 of 2" in _evidence(rows, "table1_sizes")
    # FLIR files: the visible photo is cropped to the IR view, so the camera model and IR size are checked
    _write_manifest(ds, [("a", 301, 402, 120, 160)], models={"a": "FLIR ONE Pro"})
    assert _status(fidelity.check(ds, caffe_check=False))["table1_sizes"] == fidelity.PASS
    _write_manifest(ds, [("a", 301, 402, 48, 72)], models={"a": "FLIR AX8"})
    rows = fidelity.check(ds, caffe_check=False)
    assert _status(rows)["table1_sizes"] == fidelity.FAIL and "FLIR AX8 IR 72x48" in _evidence(rows, "table1_sizes")


def test_a_moved_run_reads_its_own_files(tmp_path):
    """A run folder copied elsewhere: its own train_val/solver are read; a dataset that is gone is NOT RUN."""
    import json
    import shutil
    ds = make_tiny_dataset(str(tmp_path / "ds"), n_train=2, n_val=1, height=48, width=64)[0]
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(NET, run / "train_val.prototxt")
    (run / "solver.prototxt").write_text('type: "Nesterov"\nbase_lr: 0.02\nlr_policy: "step"\nmax_iter: 7\n')
    summary = {"dataset": ds, "train_val": "/elsewhere/train_val.prototxt", "solver": "/elsewhere/solver.prototxt",
               "net": "/elsewhere/net.prototxt", "iterations": 7, "iters_per_epoch": 7, "epochs": 1, "batch_size": 2}
    (run / "train_summary.json").write_text(json.dumps(summary))
    rows = fidelity.check(str(run), caffe_check=False)
    assert "Nesterov, base_lr 0.02, lr_policy step, max_iter 7" in _evidence(rows, "solver")
    assert _status(rows)["two_deconv"] == fidelity.PASS
    assert "1.0 epochs" in _evidence(rows, "epochs_1000") and _status(rows)["epochs_1000"] == fidelity.FAIL
    shutil.rmtree(ds)
    rows = fidelity.check(str(run), caffe_check=False)
    assert _status(rows)["split_1000_100"] == fidelity.NOT_RUN and "is not here" in _evidence(rows, "split_1000_100")
    assert _status(rows)["two_deconv"] == fidelity.PASS


def test_every_assumption_says_what_it_rests_on():
    """No assumption of the register is left without its measurement or reason."""
    from tools import fidelity
    for item in fidelity.REGISTER:
        if item.kind == "assumption":
            assert len(item.behind) > 40 and "placeholder" not in item.behind.lower(), item.key


def _v_by_hand(prior, lam):
    """eq. 1's v(Y) written out again (no kit code): 1 / ((1 - lam) p + lam / Q), then scaled
    so that the expectation under the prior is 1."""
    q = len(prior)
    raw = [1.0 / ((1.0 - lam) * p + lam / q) for p in prior]
    mean = sum(p * r for p, r in zip(prior, raw))
    return [r / mean for r in raw]


@pytest.mark.parametrize("index,factor,expect", [(7, 1.0, "PASS"), (7, 2.0, "FAIL"), (7, 1.001, "FAIL"),
                                                 (7, 0.5, "FAIL"), (1, 1.000002, "PASS"), (0, 1.00002, "FAIL")])
def test_eq1_check_compares_the_weights_with_the_prior(tmp_path, index, factor, expect):
    """class_weights.txt written from class_prior.txt by hand (lambda 0.5), then one weight
    scaled: 100 % too large, 0.1 % too large, halved: each is a FAIL naming the file. The
    tolerance is relative (1e-5): 2e-6 on the largest weight (9.33) passes, 2e-5 on the
    smallest (0.55) fails, though their absolute errors are 1.9e-5 and 1.1e-5."""
    ds = make_tiny_dataset(str(tmp_path / "ds"), n_train=2, n_val=1, height=4, width=4, num_bins=32)[0]
    prior = [0.0] * 32
    for b, p in ((0, 0.5), (3, 0.25), (7, 0.125), (31, 0.125)):
        prior[b] = p
    v = _v_by_hand(prior, 0.5)
    # by hand: mixes 0.5 p + 1/64 = 0.265625, 0.140625, 0.078125 (twice), 1/64 for unseen bins;
    # E[1/mix] = 0.5/0.265625 + 0.25/0.140625 + 0.25/0.078125 = 6.86013; v(unseen) = 64 / 6.86013
    assert v[1] == pytest.approx(9.329268, abs=1e-6) and v[0] == pytest.approx(0.548780, abs=1e-6)
    v[index] *= factor
    with open(os.path.join(ds, "class_prior.txt"), "w") as f:
        f.write("".join("%.10f\n" % p for p in prior))
    with open(os.path.join(ds, "class_weights.txt"), "w") as f:
        f.write("".join("%.10f\n" % x for x in v))
    rows = fidelity.check(ds, caffe_check=False)
    assert _status(rows)["eq1_loss"] == expect, _evidence(rows, "eq1_loss")
    if expect == "FAIL":
        assert "class_weights.txt differs from v(Y)" in _evidence(rows, "eq1_loss")
    else:
        assert "class_weights.txt = v(Y) of class_prior.txt (lambda 0.50, 32 bins" in _evidence(rows, "eq1_loss")


def _write_eval(folder, per_image, table):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "eval.json"), "w") as f:
        f.write('{"synthetic": true}')
    with open(os.path.join(folder, "per_image.csv"), "w") as f:
        f.write("id,object_class,tn\n" + "".join("%s,%s,%s\n" % r for r in per_image))
    with open(os.path.join(folder, "table2.csv"), "w") as f:
        f.write("object_class,n,tn\n" + "".join("%s,%d,%s\n" % r for r in table))


PER_IMAGE = [("a", "human", 10.0), ("b", "human", 20.0), ("c", "computer", 6.0)]
# class means by hand: human (10 + 20) / 2 = 15, computer 6, overall 36 / 3 = 12
GOOD_TABLE = [("human", 2, 15.0), ("computer", 1, 6.0), ("overall", 3, 12.0)]


@pytest.mark.parametrize("table,bad", [
    (GOOD_TABLE, None),
    ([("human", 2, 15.5), ("computer", 1, 6.0), ("overall", 3, 12.0)], "human"),     # a class mean off
    ([("human", 2, 15.0), ("computer", 1, 6.0), ("overall", 3, 13.0)], "overall"),   # the overall mean off
    ([("human", 3, 15.0), ("computer", 1, 6.0), ("overall", 3, 12.0)], "human"),     # a count off
    ([("human", 2, 15.0), ("computer", 1, 6.0), ("overall", 3, 12.002)], "overall"),  # past the 1e-3 tolerance
])
def test_eq2_check_compares_table2_with_the_per_image_file(tmp_path, table, bad):
    ds = make_tiny_dataset(str(tmp_path / "ds"), n_train=2, n_val=1, height=4, width=4)[0]
    ev = str(tmp_path / "eval")
    _write_eval(ev, PER_IMAGE, table)
    rows = fidelity.check(ds, eval_dir=ev, caffe_check=False)
    if bad is None:
        assert _status(rows)["eq2_rms"] == fidelity.PASS, _evidence(rows, "eq2_rms")
        assert "human 2, computer 1, overall 3; SYNTHETIC data" in _evidence(rows, "eq2_rms")
    else:
        assert _status(rows)["eq2_rms"] == fidelity.FAIL
        assert _evidence(rows, "eq2_rms") == "table2.csv class means differ from per_image.csv for " + bad


def _set_info(ds, **kw):
    path = os.path.join(ds, "dataset.json")
    with open(path) as f:
        info = json.load(f)
    info.update(kw)
    with open(path, "w") as f:
        json.dump(info, f)


def test_table2_classes_need_every_object_class_in_the_test_split(tmp_path):
    ds = make_tiny_dataset(str(tmp_path / "ds"), n_train=2, n_val=1, height=4, width=4)[0]
    assert _status(fidelity.check(ds, caffe_check=False))["table2_classes"] == fidelity.NOT_RUN
    _set_info(ds, class_counts={"test": {"human": 2, "microwave_oven": 1, "computer": 3}})
    rows = fidelity.check(ds, caffe_check=False)
    assert _status(rows)["table2_classes"] == fidelity.PASS
    assert _evidence(rows, "table2_classes") == "test split (dataset.json class_counts): computer 3, human 2, " \
                                                "microwave_oven 1"
    _set_info(ds, class_counts={"test": {"human": 2, "microwave_oven": 0, "computer": 3}})
    rows = fidelity.check(ds, caffe_check=False)
    assert _status(rows)["table2_classes"] == fidelity.FAIL
    assert _evidence(rows, "table2_classes").startswith("test split has no microwave_oven (")


@pytest.mark.parametrize("iterations,per_epoch,expect", [(125000, 125, "PASS"), (124999, 125, "FAIL"),
                                                         (10, 0, "NOT RUN")])
def test_epochs_count_iterations_over_iterations_per_epoch(tmp_path, iterations, per_epoch, expect):
    ds = make_tiny_dataset(str(tmp_path / "ds"), n_train=2, n_val=1, height=4, width=4)[0]
    run = tmp_path / "run"
    run.mkdir()
    (run / "train_summary.json").write_text(json.dumps({"dataset": ds, "iterations": iterations, "epochs": 1000,
                                                        "iters_per_epoch": per_epoch, "max_seconds": 600}))
    rows = fidelity.check(str(run), net=NET, caffe_check=False)
    assert _status(rows)["epochs_1000"] == expect
    if per_epoch:
        assert "%d iterations / 125 per epoch = %.1f epochs (planned 1000, time budget 10 min)" % (
            iterations, iterations / 125.0) in _evidence(rows, "epochs_1000")


def test_eq1_check_names_another_loss(tmp_path):
    """A network trained with another loss FAILs eq. 1, naming that loss."""
    ds = make_tiny_dataset(str(tmp_path / "ds"), n_train=2, n_val=1, height=4, width=4)[0]

    def loss_layers(net):
        return [l for l in net.layer if l.type == "Python" or l.type.endswith("Loss")]

    def sigmoid(net):
        loss_layers(net)[0].python_param.layer = "WeightedSigmoidCrossEntropyLoss"

    def caffe_softmax(net):
        loss_layers(net)[0].type = "SoftmaxWithLoss"

    def no_loss(net):
        for l in loss_layers(net):
            net.layer.remove(l)

    for edit, want in ((sigmoid, "loss WeightedSigmoidCrossEntropyLoss is not eq. 1's"),
                       (caffe_softmax, "loss SoftmaxWithLoss is not eq. 1's"), (no_loss, "no loss layer")):
        rows = fidelity.check(ds, net=_edited(tmp_path, edit, edit.__name__ + ".prototxt"), caffe_check=False)
        assert _status(rows)["eq1_loss"] == fidelity.FAIL and want in _evidence(rows, "eq1_loss"), edit.__name__


def test_eq1_and_eq2_checks_name_a_missing_file(tmp_path):
    """A missing class_prior.txt or per_image.csv is the check's own FAIL naming the file, not a crash."""
    ds = make_tiny_dataset(str(tmp_path / "ds"), n_train=2, n_val=1, height=4, width=4)[0]
    os.remove(os.path.join(ds, "class_prior.txt"))
    ev = str(tmp_path / "eval")
    _write_eval(ev, PER_IMAGE, GOOD_TABLE)
    os.remove(os.path.join(ev, "per_image.csv"))
    rows = fidelity.check(ds, eval_dir=ev, caffe_check=False)
    assert _status(rows)["eq1_loss"] == _status(rows)["eq2_rms"] == fidelity.FAIL
    assert _evidence(rows, "eq1_loss").startswith("class weights v(Y) unreadable: ")
    assert "class_prior.txt" in _evidence(rows, "eq1_loss")
    assert _evidence(rows, "eq2_rms").endswith("per_image.csv: no such evaluation CSV")


def test_eq1_and_eq2_checks_name_a_malformed_file(tmp_path):
    ds = make_tiny_dataset(str(tmp_path / "ds"), n_train=2, n_val=1, height=4, width=4)[0]
    with open(os.path.join(ds, "class_weights.txt"), "w") as f:
        f.write("1.0\n2.0\n")
    ev = str(tmp_path / "eval")
    _write_eval(ev, [("a", "human", "ten")], [("human", 1, 10.0)])
    rows = fidelity.check(ds, eval_dir=ev, caffe_check=False)
    assert _evidence(rows, "eq1_loss").startswith("class weights v(Y) unreadable: ")
    assert "need 32 positive weights, got 2 values" in _evidence(rows, "eq1_loss")
    assert _status(rows)["eq2_rms"] == fidelity.FAIL
    assert not _evidence(rows, "eq2_rms").startswith("check raised")
    assert "could not convert string to float: 'ten'" in _evidence(rows, "eq2_rms")


# ---- the data checks' edges (found by make mutation: fidelity_data) ----------------------------------

def _write_split_manifest(ds, n_train, n_test):
    with open(os.path.join(ds, "manifest.csv"), "w") as f:
        f.write("id,split\n" + "".join("tr%d,train\n" % i for i in range(n_train))
                + "".join("te%d,test\n" % i for i in range(n_test)))


def test_split_counts_mirrored_pairs_and_the_manifest_test_rows(tmp_path):
    ds = make_tiny_dataset(str(tmp_path / "ds"), n_train=2000, n_val=100, height=2, width=2)[0]
    _set_info(ds, mirror=True)                    # two entries per pair: 2000 entries = 1000 pairs
    _write_split_manifest(ds, 1000, 100)
    rows = fidelity.check(ds, caffe_check=False)
    assert _status(rows)["split_1000_100"] == fidelity.PASS
    assert _evidence(rows, "split_1000_100") == ("train_db/features 2000 entries (1000 pairs mirrored), "
                                                 "val_db/features 100, manifest test rows 100")
    _write_split_manifest(ds, 1000, 99)           # the manifest disagrees with the LMDB
    rows = fidelity.check(ds, caffe_check=False)
    assert _status(rows)["split_1000_100"] == fidelity.FAIL
    assert _evidence(rows, "split_1000_100").endswith("manifest test rows 99; the paper has 1000 / 100")
    _set_info(ds, mirror=False)                   # 2000 unmirrored pairs are not the paper's 1000
    os.remove(os.path.join(ds, "manifest.csv"))   # no manifest: the LMDBs alone decide
    rows = fidelity.check(ds, caffe_check=False)
    assert _status(rows)["split_1000_100"] == fidelity.FAIL
    assert "2000 entries, val_db" in _evidence(rows, "split_1000_100")


def test_split_of_an_unreadable_lmdb_is_a_fail_naming_it(tmp_path):
    ds = make_tiny_dataset(str(tmp_path / "ds"), n_train=2, n_val=1, height=2, width=2)[0]
    shutil.rmtree(os.path.join(ds, layout.VAL_DB))
    rows = fidelity.check(ds, caffe_check=False)
    assert _status(rows)["split_1000_100"] == fidelity.FAIL
    assert _evidence(rows, "split_1000_100").startswith("cannot count the LMDBs of %s (" % ds)


def test_table1_sizes_evidence_edges(tmp_path, monkeypatch):
    ds = make_tiny_dataset(str(tmp_path / "ds"), n_train=2, n_val=1, height=4, width=4)[0]
    rows = fidelity.check(ds, caffe_check=False)                         # no manifest at all
    assert _status(rows)["table1_sizes"] == fidelity.NOT_RUN
    # five source sizes: the evidence names the four commonest, SYNTHETIC data says so
    _write_manifest(ds, [("a%d" % i, 480, 640, 120, 160) for i in range(5)]
                    + [("b%d" % i, 100 + i, 200, 120, 160) for i in range(4)])
    ev = _evidence(fidelity.check(ds, caffe_check=False), "table1_sizes")
    assert ev.startswith("manifest.csv: 9 SYNTHETIC pair(s): 5 visible 640x480 / IR 160x120, 1 visible 200x100")
    assert ev.count("visible") == 4 + 1 and "4 of 9 source pairs differ" in ev       # 4 listed + Table 1's
    _set_info(ds, synthetic=False)
    _write_manifest(ds, [("a", 480, 640, 120, 160)])
    ev = _evidence(fidelity.check(ds, caffe_check=False), "table1_sizes")
    assert ev == "manifest.csv: 1 pair(s): 1 visible 640x480 / IR 160x120; all 1 match Table 1"
    # a FLIR file from another camera fails even at the FLIR ONE's IR size
    _write_manifest(ds, [("a", 301, 402, 120, 160)], models={"a": "FLIR AX8"})
    assert _status(fidelity.check(ds, caffe_check=False))["table1_sizes"] == fidelity.FAIL
    _write_manifest(ds, [("a", 301, 402, 120, 160)], models={"a": "FLIR ONE Pro"})
    ev = _evidence(fidelity.check(ds, caffe_check=False), "table1_sizes")
    assert ev.endswith("all 1 match Table 1 (visible size of FLIR files not recorded: cropped to the IR field "
                       "of view)")
    # five cameras: the four commonest are named
    cams = {"c%d" % i: "FLIR ONE Gen %d" % (i if i < 4 else 9) for i in range(6)}
    _write_manifest(ds, [(k, 301, 402, 120, 160) for k in cams], models=cams)
    ev = _evidence(fidelity.check(ds, caffe_check=False), "table1_sizes")
    assert ev.startswith("manifest.csv: FLIR files (alignment.csv): 2 x FLIR ONE Gen 9 IR 160x120, 1 x FLIR ONE Gen 0")
    assert ev.count(" x FLIR ONE") == 4 and "Gen 3" not in ev
    monkeypatch.setattr(fidelity.spec, "FLIR_ONE_VISIBLE_SIZE", (480, 641))
    rows = fidelity.check(ds, caffe_check=False)
    assert _status(rows)["table1_sizes"] == fidelity.FAIL
    assert _evidence(rows, "table1_sizes") == "spec.FLIR_ONE_* say visible 641x480, IR 160x120"


def test_epochs_evidence_by_hand(tmp_path):
    ds = make_tiny_dataset(str(tmp_path / "ds"), n_train=2, n_val=1, height=4, width=4)[0]
    run = tmp_path / "run"
    run.mkdir()
    # no iterations recorded: 0; a time budget of 5370 s is 89.5 min, printed as 90
    (run / "train_summary.json").write_text(json.dumps({"dataset": ds, "epochs": 1000, "iters_per_epoch": 125,
                                                        "max_seconds": 5370}))
    rows = fidelity.check(str(run), net=NET, caffe_check=False)
    assert _status(rows)["epochs_1000"] == fidelity.FAIL
    assert _evidence(rows, "epochs_1000") == ("train_summary.json: 0 iterations / 125 per epoch = 0.0 epochs "
                                              "(planned 1000, time budget 90 min)")
