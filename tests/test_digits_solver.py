"""One solver arithmetic (thermalnet/solver.py) for the trainer and the DIGITS validator.

The trainer's copy (thermalnet/nets.py) and the validator's (digits_jobs/validate.py) used
to differ: display every epoch/4 vs DIGITS' 8 per epoch or every 5,000 images, `Adam` vs
`ADAM`, 5 vs DIGITS' 7 lr policies, inv's gamma unscaled. DIGITS' values won; these tests
pin them with numbers worked out by hand and check both writers field by field.
"""
from __future__ import annotations

import os

import pytest
from google.protobuf import text_format

from thermalnet import nets, spec
from thermalnet import solver as S
from thermalnet.caffe_env import PROTOTXT_DIR, caffe_pb2
from digits_jobs import validate as v

GOOD = os.path.join(PROTOTXT_DIR, "thermalnet_%s.prototxt" % spec.DEFAULT_BASE)   # batch 8 train and val


def _read_solver(path):
    s = caffe_pb2().SolverParameter()
    with open(path) as f:
        text_format.Merge(f.read(), s)
    return s


def test_display_is_digits_eight_per_epoch_or_every_5000_images():
    # Paper: 1000 pairs, batch 8, 1000 epochs -> 125 iterations an epoch; 125/8 = 15.6 -> 15
    # (the trainer's old epoch/4 gave 31); 5000 images at batch 8 = 625 iterations, later.
    paper = nets.solver_schedule(spec.PAPER_TRAIN, 8, 1000, n_val=spec.PAPER_TEST, val_batch=8)
    assert paper["display"] == 15
    # A large set: 2000 iterations an epoch (250 at 8 per epoch), 5000 images = 100 iterations.
    assert nets.solver_schedule(100000, 50, 2)["display"] == 100
    assert nets.solver_schedule(100000, 25, 2, iter_size=2)["display"] == 100   # images, not iterations
    # Fewer than 8 iterations an epoch: every iteration.
    assert nets.solver_schedule(64, 8, 10)["display"] == 1


def test_intervals_round_like_digits():
    # 10 iterations an epoch, 3 epochs = 30: every 0.05 epoch = 0.5 iteration -> 1 (not 0);
    # every 1.25 epochs = 12.5 -> 12 (truncated, not rounded to 13); every 3 epochs -> at the end.
    assert S.snapshot_interval(0.05, 10, 30) == 1 and S.val_interval(0.05, 10, 30) == 1
    assert S.snapshot_interval(1.25, 10, 30) == 12 and S.val_interval(1.25, 10, 30) == 12
    assert S.snapshot_interval(3, 10, 30) == 0 and S.val_interval(3, 10, 30) == 30
    sched = nets.solver_schedule(100, 10, 3, n_val=10, val_every_epochs=1.25, snapshot_every_epochs=1.25)
    assert (sched["test_interval"], sched["snapshot"]) == (12, 12)
    # DIGITS' "only at the end" snapshot is the trainer's period max_iter.
    assert nets.solver_schedule(100, 10, 3)["snapshot"] == 30


def test_intervals_truncate_worked_by_hand():
    """DIGITS' caffe_train.py: `solver.snapshot = int(snapshot_interval)` for 1 < n < max_iter.
    Products whose fraction is not .5, where truncating, rounding and the ceiling all differ."""
    # 10 iterations an epoch, 30 in all
    for every, want in ((1.27, 12), (0.19, 1), (2.96, 29), (0.1, 1), (0.14, 1), (0.2, 2)):
        assert S.snapshot_interval(every, 10, 30) == want, every
        assert S.val_interval(every, 10, 30) == want, every
    # at or past max_iter: snapshots only at the end (0), validation once at the end (max_iter)
    for every in (3, 3.5):
        assert (S.snapshot_interval(every, 10, 30), S.val_interval(every, 10, 30)) == (0, 30)
    assert S.snapshot_interval(0, 10, 30) == 0            # 0 epochs: DIGITS' "only at the end"
    assert S.val_interval(0, 10, 30) == 30                # the trainer's 0: validate once, at the end
    # 125 iterations an epoch (1000 pairs, batch 8), 375 in all: 1.27 * 125 = 158.75 -> 158,
    # 0.55 * 125 = 68.75 -> 68
    sched = nets.solver_schedule(spec.PAPER_TRAIN, 8, 3, n_val=spec.PAPER_TEST, val_batch=8,
                                 val_every_epochs=0.55, snapshot_every_epochs=1.27)
    assert (sched["max_iter"], sched["snapshot"], sched["test_interval"]) == (375, 158, 68)


def test_iteration_counts_worked_by_hand():
    # ceil(1001 / 8) = 126 an epoch; ceil(1001 / (4 * 2)) with iter_size 2 = 126; 100 / 8 -> 13 test batches
    assert S.iters_per_epoch(1001, 8) == 126 and S.iters_per_epoch(1000, 8) == 125
    assert S.iters_per_epoch(1001, 4, iter_size=2) == 126 and S.iters_per_epoch(1000, 4, iter_size=2) == 125
    assert S.val_iters(100, 8) == 13 and S.val_iters(96, 8) == 12
    assert S.max_iter(125, 3) == 375 and S.max_iter(125, 2.5) == 313     # 312.5 rounds up
    assert S.weight_decay(0.01) == pytest.approx(1e-4)
    # display: min(floor(375 / (3 * 8)) = 15, ceil(5000 / 8) = 625) = 15
    assert S.display_interval(375, 3, 8) == 15
    # min(floor(20000 / (1 * 8)) = 2500, ceil(5000 / (10 * 3)) = 167) = 167
    assert S.display_interval(20000, 1, 10, iter_size=3) == 167
    assert S.display_interval(5, 1, 8) == 1
    # 5000 images at batch 8 = exactly 625 iterations (not 626): min(floor(10^6 / 8) = 125000, 625)
    assert S.display_interval(1000000, 1, 8) == 625
    assert S.display_interval(10 ** 7, 1, 1) == 5000                   # batch 1: every 5000 iterations
    # momentum 0.9 but for AdaGrad / RMSprop; weight decay = base_lr / 100 (caffe_train.py)
    assert (S.MOMENTUM, S.WEIGHT_DECAY_OVER_LR, S.NO_MOMENTUM) == (0.9, 100.0, ("ADAGRAD", "RMSPROP"))


def test_step_sizes_take_the_ceiling_worked_by_hand():
    """DIGITS: stepsize / stepvalue = int(math.ceil(percent * max_iter / 100)). max_iter 37
    (scale 0.37): step 33 % -> 12.21 -> 13; multistep 50,85 % -> 18.5, 31.45 -> 19, 32;
    sigmoid 50 % -> 18.5 -> 19, gamma -0.1 / 0.37. Exact products stay: 50 % of 200 = 100."""
    assert S.lr_fields("step", None, 37) == {"stepsize": 13, "gamma": 0.1}
    assert S.lr_fields("multistep", None, 37) == {"stepvalue": [19, 32], "gamma": 0.5}
    sig = S.lr_fields("sigmoid", None, 37)
    assert sig["stepsize"] == 19 and sig["gamma"] == pytest.approx(-0.1 / 0.37)
    assert S.lr_fields("multistep", {"stepvalue": "40,70,90"}, 375)["stepvalue"] == [150, 263, 338]
    assert S.lr_fields("step", {"stepsize": 50}, 200)["stepsize"] == 100
    assert S.lr_fields("sigmoid", {"stepsize": 25, "gamma": 0.5}, 200) == {"stepsize": 50, "gamma": -0.25}
    # gamma per 1 % of training: exp gamma^(1/scale), inv gamma / scale
    assert S.lr_fields("exp", {"gamma": 0.5}, 400)["gamma"] == pytest.approx(0.5 ** 0.25)
    assert S.lr_fields("inv", {"gamma": 0.3, "power": 0.75}, 300) == {"gamma": pytest.approx(0.1), "power": 0.75}


def test_form_defaults_are_digits_forms():
    """digits/model/forms.py (v6.1.1): lr_step_size 33, lr_step_gamma 0.1, lr_multistep_values "50,85",
    lr_multistep_gamma 0.5, lr_exp_gamma 0.95, lr_inv_gamma 0.1, lr_inv_power 0.5, lr_poly_power 3,
    lr_sigmoid_step 50, lr_sigmoid_gamma 0.1 -- copied from the form, not from solver.py."""
    digits_form = {"lr_step_size": 33, "lr_step_gamma": 0.1, "lr_multistep_values": "50,85",
                   "lr_multistep_gamma": 0.5, "lr_exp_gamma": 0.95, "lr_inv_gamma": 0.1, "lr_inv_power": 0.5,
                   "lr_poly_power": 3, "lr_sigmoid_step": 50, "lr_sigmoid_gamma": 0.1}
    seen = {field: default for fields in S.LR_FORM_FIELDS.values() for _, field, default in fields}
    assert seen == digits_form
    assert set(S.LR_FORM_FIELDS) == set(S.LR_POLICIES) == {"fixed", "step", "multistep", "exp", "inv", "poly",
                                                            "sigmoid"}


def test_form_defaults_and_spellings_worked_by_hand():
    assert S.lr_params("step") == {"stepsize": 33.0, "gamma": 0.1}
    assert S.lr_params("step", {"gamma": 0.5, "stepsize": None, "power": 2}) == {"stepsize": 33.0, "gamma": 0.5}
    assert S.lr_params("fixed", {"gamma": 0.5}) == {}
    assert [S.uses_momentum(t) for t in S.SOLVER_TYPES] == [True, True, False, False, True, True]
    assert S.uses_momentum("AdaGrad") is False and S.uses_momentum("Adam") is True
    assert (S.solver_type("Nesterov"), S.solver_type("RMSPROP"), S.caffe_type("ADADELTA")) == \
        ("NESTEROV", "RMSPROP", "AdaDelta")
    with pytest.raises(ValueError, match="unknown solver type 'sgd'"):
        S.solver_type("sgd")


def test_lr_policies_scale_like_digits():
    # max_iter 200 -> scale 2 iterations per percent of training.
    assert S.lr_fields("step", {"stepsize": 33, "gamma": 0.1}, 200) == {"stepsize": 66, "gamma": 0.1}
    assert S.lr_fields("multistep", None, 200) == {"stepvalue": [100, 170], "gamma": 0.5}
    assert S.lr_fields("exp", {"gamma": 0.81}, 200)["gamma"] == pytest.approx(0.9)
    assert S.lr_fields("inv", None, 200) == {"gamma": pytest.approx(0.05), "power": 0.5}
    assert S.lr_fields("poly", None, 200) == {"power": 3.0}
    assert S.lr_fields("sigmoid", None, 200) == {"gamma": pytest.approx(-0.05), "stepsize": 100}
    assert S.lr_fields("fixed", {"gamma": 5}, 200) == {}
    # exp at fewer than 100 iterations: DIGITS does not clamp the scale (the trainer used to).
    assert S.lr_fields("exp", {"gamma": 0.5}, 50)["gamma"] == pytest.approx(0.25)
    with pytest.raises(ValueError, match="unknown lr_policy"):
        S.lr_fields("cosine", None, 200)


def test_solver_types_spelled_as_digits_and_written_as_caffe_type(tmp_path):
    pb = caffe_pb2()
    assert S.SOLVER_TYPES == ("SGD", "NESTEROV", "ADAGRAD", "RMSPROP", "ADADELTA", "ADAM")
    for name in S.SOLVER_TYPES:           # DIGITS' names are Caffe's old enum
        assert isinstance(getattr(pb.SolverParameter, name), int)
    sched = nets.solver_schedule(64, 8, 10, n_val=16)
    a = nets.write_solver(str(tmp_path / "a.prototxt"), "net.prototxt", sched, 0.001, solver_type="ADAM")
    b = nets.write_solver(str(tmp_path / "b.prototxt"), "net.prototxt", sched, 0.001, solver_type="Adam")
    assert open(a).read() == open(b).read() and _read_solver(a).type == "Adam"
    c = nets.write_solver(str(tmp_path / "c.prototxt"), "net.prototxt", sched, 0.01, solver_type="NESTEROV")
    assert _read_solver(c).type == "Nesterov"
    for bad in ("Sgd", "adam", "LBFGS"):
        with pytest.raises(ValueError, match="unknown solver type"):
            nets.write_solver(str(tmp_path / "x.prototxt"), "n", sched, 0.01, solver_type=bad)
    with pytest.raises(v.DigitsRuleError, match="solver_type"):
        v.JobSettings.from_form({"solver_type": "Adam"})   # DIGITS' form takes its own spelling only


FORMS = [
    ({"lr_policy": "fixed", "solver_type": "ADAM", "learning_rate": 0.001}, {}),
    ({"lr_policy": "step", "lr_step_size": 33, "lr_step_gamma": 0.1}, {"gamma": 0.1}),
    ({"lr_policy": "multistep", "lr_multistep_values": "40,70,90", "lr_multistep_gamma": 0.3},
     {"stepvalue": "40,70,90", "gamma": 0.3}),
    ({"lr_policy": "exp", "lr_exp_gamma": 0.9, "solver_type": "RMSPROP"}, {"gamma": 0.9}),
    ({"lr_policy": "inv", "lr_inv_gamma": 0.2, "lr_inv_power": 0.75, "solver_type": "ADAGRAD"},
     {"gamma": 0.2, "power": 0.75}),
    ({"lr_policy": "poly", "lr_poly_power": 2.0, "solver_type": "NESTEROV"}, {"power": 2.0}),
    ({"lr_policy": "sigmoid", "lr_sigmoid_gamma": 0.2}, {"gamma": 0.2}),
]


# stepsize / stepvalue at max_iter 375 (scale 3.75), ceilings worked by hand: step 33 % -> 123.75 -> 124;
# multistep 40,70,90 % -> 150, 262.5 -> 263, 337.5 -> 338; sigmoid's default 50 % -> 187.5 -> 188.
HAND_STEPS = {"fixed": (0, []), "step": (124, []), "multistep": (0, [150, 263, 338]), "exp": (0, []),
              "inv": (0, []), "poly": (0, []), "sigmoid": (188, [])}


@pytest.mark.parametrize("form,kw", FORMS, ids=[f[0]["lr_policy"] for f in FORMS])
def test_trainer_and_digits_validator_write_the_same_numbers(form, kw, tmp_path):
    """The same job through nets.write_solver and DIGITS' save_files_generic (validate)."""
    epochs = 3
    form = dict(form, train_epochs=epochs, snapshot_interval=1.27, val_interval=0.55)
    with open(GOOD) as f:
        digits = v.digits_files(f.read(), v.DatasetFacts.nominal(), v.JobSettings.from_form(form)).solver
    sched = nets.solver_schedule(spec.PAPER_TRAIN, 8, epochs, n_val=spec.PAPER_TEST, val_batch=8,
                                 val_every_epochs=0.55, snapshot_every_epochs=1.27)
    path = nets.write_solver(str(tmp_path / "s.prototxt"), "net.prototxt", sched, float(form.get("learning_rate", 0.01)),
                             lr_policy=form["lr_policy"], solver_type=form.get("solver_type", "SGD"), **kw)
    mine = _read_solver(path)
    fields = ["max_iter", "test_interval", "snapshot", "display", "base_lr", "lr_policy", "gamma", "power",
              "momentum", "weight_decay", "stepsize"]
    for name in fields:
        assert getattr(mine, name) == pytest.approx(getattr(digits, name)), name
        assert mine.HasField(name) == digits.HasField(name), name
    assert list(mine.test_iter) == list(digits.test_iter) and list(mine.stepvalue) == list(digits.stepvalue)
    assert mine.type == S.caffe_type(caffe_pb2().SolverParameter.SolverType.Name(digits.solver_type))
    # 125 iterations an epoch, 375 in all; hand-worked: snapshot 1.27 * 125 = 158.75 -> 158,
    # test every 0.55 * 125 = 68.75 -> 68, display min(floor(375 / 24), ceil(5000 / 8)) = 15.
    assert (mine.max_iter, mine.snapshot, mine.test_interval, mine.display) == (375, 158, 68, 15)
    assert list(mine.test_iter) == [13]                       # ceil(100 / 8)
    assert (mine.stepsize, list(mine.stepvalue)) == HAND_STEPS[form["lr_policy"]]


@pytest.mark.parametrize("template,epochs,batch,val_batch", [
    ("solver_paper.prototxt", 1000, 8, 8), ("solver_demo.prototxt", 40, 8, 5)])
def test_solver_templates_display_like_digits(template, epochs, batch, val_batch):
    s = _read_solver(os.path.join(PROTOTXT_DIR, template))
    want = nets.solver_schedule(spec.PAPER_TRAIN, batch, epochs, n_val=spec.PAPER_TEST, val_batch=val_batch)
    assert s.display == want["display"] == 15
    assert S.solver_type(s.type) in S.SOLVER_TYPES       # Caffe's spelling in the file, DIGITS' known
