"""DIGITS' solver arithmetic, in one place: the trainer (thermalnet.nets) and the DIGITS
validator (digits_jobs.validate) both import it, so a job run here and the same job
queued in DIGITS get the same iteration counts and learning-rate schedule.

The rules are those of DIGITS 6.x, digits/model/tasks/caffe_train.py (save_files_generic,
the solver half), with the form's defaults from digits/model/forms.py:

* iterations per epoch = ceil(N_train / (batch * iter_size)); max_iter = that * epochs.
* snapshot / test_interval = the epoch interval * iterations per epoch, truncated; an
  interval of one iteration or less is 1 ("don't round down"); one that reaches max_iter
  is 0 for snapshots (only the final one) and max_iter for testing (test once, at the end).
* test_iter = ceil(N_val / val batch).
* learning-rate policies: the form gives step sizes in percent of max_iter and gammas per
  1% of training; they are scaled to iterations here (scale = max_iter / 100).
* momentum 0.9, except AdaGrad and RMSprop (Caffe refuses it there); weight_decay =
  base_lr / 100 (the learning rate over 100, not Caffe's usual 5e-4).
* display: 8 times per epoch or every 5,000 images, whichever is more often.

Solver types are spelled as DIGITS' form and Caffe's old `solver_type` enum spell them
(SGD, NESTEROV, ..., ADAM); CAFFE_TYPES gives Caffe's `type` string for each (the
spelling of Caffe's own upgrade_proto and of the kit's solver templates), and either
spelling is accepted where a solver type is read.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

# DIGITS' choices (digits/model/forms.py) = Caffe's SolverParameter.SolverType enum names.
SOLVER_TYPES = ("SGD", "NESTEROV", "ADAGRAD", "RMSPROP", "ADADELTA", "ADAM")
# Caffe's `type` string of each (caffe/util/upgrade_proto.cpp UpgradeSolverType).
CAFFE_TYPES = {"SGD": "SGD", "NESTEROV": "Nesterov", "ADAGRAD": "AdaGrad", "RMSPROP": "RMSProp",
               "ADADELTA": "AdaDelta", "ADAM": "Adam"}
NO_MOMENTUM = ("ADAGRAD", "RMSPROP")
MOMENTUM = 0.9
WEIGHT_DECAY_OVER_LR = 100.0
DISPLAY_PER_EPOCH = 8
DISPLAY_IMAGES = 5000
LR_POLICIES = ("fixed", "step", "multistep", "exp", "inv", "poly", "sigmoid")
# policy -> (parameter, DIGITS form field, form default); stepsize/stepvalue in % of max_iter.
LR_FORM_FIELDS: Dict[str, Tuple[Tuple[str, str, object], ...]] = {
    "fixed": (),
    "step": (("stepsize", "lr_step_size", 33.0), ("gamma", "lr_step_gamma", 0.1)),
    "multistep": (("stepvalue", "lr_multistep_values", "50,85"), ("gamma", "lr_multistep_gamma", 0.5)),
    "exp": (("gamma", "lr_exp_gamma", 0.95),),
    "inv": (("gamma", "lr_inv_gamma", 0.1), ("power", "lr_inv_power", 0.5)),
    "poly": (("power", "lr_poly_power", 3.0),),
    "sigmoid": (("stepsize", "lr_sigmoid_step", 50.0), ("gamma", "lr_sigmoid_gamma", 0.1)),
}


def solver_type(name: str) -> str:
    """DIGITS' spelling (ADAM) of a solver type given in either spelling (ADAM or Adam)."""
    if name in CAFFE_TYPES:
        return name
    for digits_name, caffe_name in CAFFE_TYPES.items():
        if name == caffe_name:
            return digits_name
    raise ValueError("unknown solver type %r (known: %s, or Caffe's %s)"
                     % (name, ", ".join(SOLVER_TYPES), ", ".join(CAFFE_TYPES[t] for t in SOLVER_TYPES)))


def caffe_type(name: str) -> str:
    """Caffe's `type` string (Adam) of a solver type given in either spelling."""
    return CAFFE_TYPES[solver_type(name)]


def uses_momentum(name: str) -> bool:
    """DIGITS sets momentum 0.9 for every solver type but AdaGrad and RMSprop."""
    return solver_type(name) not in NO_MOMENTUM


def weight_decay(base_lr: float) -> float:
    return base_lr / WEIGHT_DECAY_OVER_LR


def iters_per_epoch(n_train: int, batch: int, iter_size: int = 1) -> int:
    return int(math.ceil(float(n_train) / (batch * iter_size)))


def max_iter(per_epoch: int, epochs: float) -> int:
    """DIGITS' per_epoch * epochs; a fractional epoch count (the trainer's) rounds up."""
    return int(math.ceil(per_epoch * epochs))


def snapshot_interval(every_epochs: float, per_epoch: int, total: int) -> int:
    """Iterations between snapshots; 0 = only the one at the end."""
    n = every_epochs * per_epoch
    return 1 if 0 < n <= 1 else int(n) if 1 < n < total else 0


def val_interval(every_epochs: float, per_epoch: int, total: int) -> int:
    """Caffe's test_interval: iterations between validations; max_iter = once, at the end."""
    n = every_epochs * per_epoch
    return 1 if 0 < n <= 1 else int(n) if 1 < n < total else total


def val_iters(n_val: int, val_batch: int) -> int:
    """Caffe's test_iter: batches for one pass over the validation set."""
    return int(math.ceil(float(n_val) / val_batch))


def display_interval(total: int, epochs: float, batch: int, iter_size: int = 1) -> int:
    """8 displays per epoch, or one every 5,000 images, whichever is more often (at least 1)."""
    return max(1, min(int(math.floor(float(total) / (epochs * DISPLAY_PER_EPOCH))),
                      int(math.ceil(float(DISPLAY_IMAGES) / (batch * iter_size)))))


def lr_params(policy: str, given: Optional[Dict] = None) -> Dict:
    """A policy's parameters in DIGITS' form units: the form defaults, then `given`
    (None values ignored); raises ValueError for a policy DIGITS does not offer."""
    if policy not in LR_FORM_FIELDS:
        raise ValueError("unknown lr_policy %r (known: %s)" % (policy, ", ".join(LR_POLICIES)))
    params = {name: default for name, _field, default in LR_FORM_FIELDS[policy]}
    params.update((k, v) for k, v in (given or {}).items() if k in params and v is not None)
    return params


def lr_fields(policy: str, params: Optional[Dict], total: int) -> Dict:
    """SolverParameter fields of an lr policy: form units (percent of max_iter, gamma per
    1% of training) scaled to `total` iterations as DIGITS scales them."""
    p = lr_params(policy, params)
    scale = float(total) / 100.0
    out: Dict = {}
    if policy == "step":
        out["stepsize"] = int(math.ceil(float(p["stepsize"]) * scale))
        out["gamma"] = float(p["gamma"])
    elif policy == "multistep":
        out["stepvalue"] = [int(math.ceil(float(v) * scale)) for v in str(p["stepvalue"]).split(",")]
        out["gamma"] = float(p["gamma"])
    elif policy == "exp":
        out["gamma"] = math.pow(float(p["gamma"]), 1.0 / scale)
    elif policy == "inv":
        out["gamma"] = float(p["gamma"]) / scale
        out["power"] = float(p["power"])
    elif policy == "poly":
        out["power"] = float(p["power"])
    elif policy == "sigmoid":
        out["gamma"] = -1.0 * float(p["gamma"]) / scale
        out["stepsize"] = int(math.ceil(float(p["stepsize"]) * scale))
    return out


def set_lr_fields(solver, policy: str, params: Optional[Dict]) -> None:
    """Write lr_policy and its scaled fields into a SolverParameter whose max_iter is set."""
    solver.lr_policy = policy
    for name, value in lr_fields(policy, params, solver.max_iter).items():
        if name == "stepvalue":
            solver.stepvalue.extend(value)
        else:
            setattr(solver, name, value)
