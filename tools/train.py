"""Train Thermalnet on a dataset folder, DIGITS-style, with pycaffe or the `caffe` tool.

    python -m tools.train --dataset DS --net prototxt/thermalnet_v1_1.prototxt \
        --out runs/NAME --epochs E --batch-size B [--base-lr LR] [--resume runs/NAME/snap_iter_N.solverstate]
        [--weights squeezenet_v1.1.caffemodel[,B.caffemodel]]

The run folder gets what DIGITS would keep for a job: train_val.prototxt (the
all-in-one net with this dataset's LMDBs, mean and class weights filled in),
solver.prototxt, snapshots snap_iter_N.caffemodel/.solverstate (Caffe's naming),
train.log in Caffe's glog format whichever back-end ran, train.csv / val.csv / loss.png
parsed from it, and train_summary.json. best.caffemodel + best.json hold the weights with the
lowest validation loss so far (with a few hundred pairs the validation loss turns up after
tens of epochs, so the last snapshot is often not the best one); the summary's "best" names
its iteration and loss, and pick_snapshot() gives the evaluation either model.

--weights: Caffe's -weights (fine-tuning): each caffemodel is copied into the net by layer
name, in order; layers whose names are not in the file keep their fillers. Each file is
checked first (thermalnet.nets.check_weights), so one that does not fit is a one-line error
instead of Caffe's abort; the summary records the files and which layers came from them.

pycaffe back-end: solver.step(1) in a loop so the loss of every iteration is seen
(NaN stops at once) and a tqdm bar shows the ETA; the validation loss (Fig. 8 of the
paper) is the TEST net run over the whole val_db at iteration 0 and after every epoch.
caffe back-end: `caffe train -solver ... [-snapshot ...]` as a child process whose glog
output is streamed into train.log and watched for NaN/divergence. To keep the best model
it snapshots at every validation (solver_caffe.prototxt) and deletes the extra snapshots
once a newer one exists.
A resumed run appends to train.log and keeps Caffe's iteration numbering.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import signal
import subprocess
import sys
import time
from typing import Dict, List, Optional

import numpy as np

from thermalnet.lmdb_io import check_lmdb  # noqa: F401 -- one home; tools.train.check_lmdb as before
from thermalnet import caffe_log, cli, layout, nets, spec
from thermalnet.atomic import atomic_file, write_text
from thermalnet.caffe_env import REPO_ROOT

# This module's import name for the worker processes: tools.train from the repository, thermalnet.tools.train
# when installed (under python -m, __name__ is "__main__" but __spec__ keeps the real name).
_MODULE = __spec__.name if __spec__ is not None else "tools.train"
SNAPSHOT_PREFIX = "snap"
LOG_FILE = "train.log"
SUMMARY_FILE = "train_summary.json"
TRAIN_VAL_FILE = "train_val.prototxt"
SOLVER_FILE = "solver.prototxt"
PYCAFFE_SOLVER_FILE = "solver_pycaffe.prototxt"
CAFFE_SOLVER_FILE = "solver_caffe.prototxt"
BEST_MODEL = "best.caffemodel"
BEST_INFO = "best.json"
SNAPSHOT_CHOICES = ("best", "last")
# Divergence: the displayed loss above DIVERGE_FACTOR x the first displayed loss on
# DIVERGE_PATIENCE consecutive displays. A softmax loss starts near ln(Q) x mean weight
# and only falls when training works; 5x that is far outside any healthy curve.
DIVERGE_FACTOR = 5.0
DIVERGE_PATIENCE = 3
# Optimiser of the demo and the default: Adam at 1e-3 (Kingma & Ba's default rate); a
# --solver-template or --base-lr overrides. lr_policy fixed keeps resumed runs simple.
DEFAULT_SOLVER = {"solver_type": "ADAM", "base_lr": 1e-3, "lr_policy": "fixed", "momentum": 0.9}
DEFAULT_NET = nets.network(nets.DEFAULT_NETWORK).net
PAPER_NET = nets.network(nets.PAPER_NETWORK).net


class TrainingError(RuntimeError):
    """Training stopped: NaN/divergent loss, a failed caffe process, an interruption."""

    def __init__(self, message: str, result: Optional[Dict] = None):
        super().__init__(message)
        self.result = result or {}


class ClassCountMismatch(ValueError):
    """The network's output classes differ from the dataset's bins."""


# -- checks ----------------------------------------------------------------------------
def check_class_count(net_path: str, dataset: str) -> int:
    """The score layer's (nets.SCORE_LAYER) num_output must equal the dataset's num_bins; returns it."""
    info = layout.read_dataset_info(dataset)
    q_net = int(nets.num_classes(net_path))
    q_ds = int(info["num_bins"])
    if q_net != q_ds:
        raise ClassCountMismatch(
            "%s: the network predicts %d classes (%s num_output) but %s has num_bins %d "
            "(%s); rebuild the dataset with %d bins or use a network with num_output %d"
            % (net_path, q_net, nets.SCORE_LAYER, dataset, q_ds, layout.DATASET_INFO_FILE, q_net, q_ds))
    return q_net


def _solver_param(path: str):
    from google.protobuf import text_format
    from thermalnet.caffe_env import caffe_pb2
    sp = caffe_pb2().SolverParameter()
    with open(path) as f:
        text_format.Merge(f.read(), sp)
    return sp


def learning_rate(sp, it: int) -> float:
    """Caffe's SGDSolver::GetLearningRate for the policies Caffe 1.0 knows."""
    policy, base = sp.lr_policy or "fixed", sp.base_lr
    if policy == "fixed":
        return base
    if policy == "step":
        return base * sp.gamma ** (it // sp.stepsize)
    if policy == "exp":
        return base * sp.gamma ** it
    if policy == "inv":
        return base * (1 + sp.gamma * it) ** (-sp.power)
    if policy == "multistep":
        return base * sp.gamma ** sum(1 for s in sp.stepvalue if it >= s)
    if policy == "poly":
        return base * (1 - float(it) / sp.max_iter) ** sp.power
    if policy == "sigmoid":
        return base / (1 + math.exp(-sp.gamma * (it - sp.stepsize)))
    raise ValueError("unknown lr_policy %r" % policy)


def snapshot_paths(run_dir: str, iteration: int) -> Dict[str, str]:
    stem = os.path.join(run_dir, "%s_iter_%d" % (SNAPSHOT_PREFIX, iteration))
    return {"caffemodel": stem + ".caffemodel", "solverstate": stem + ".solverstate"}


def latest_snapshot(run_dir: str) -> Optional[Dict]:
    """The highest-iteration snapshot pair in a run folder, or None."""
    best = None
    for f in os.listdir(run_dir) if os.path.isdir(run_dir) else []:
        if f.startswith(SNAPSHOT_PREFIX + "_iter_") and f.endswith(".caffemodel"):
            try:
                it = int(f[len(SNAPSHOT_PREFIX) + 6:-len(".caffemodel")])
            except ValueError:
                continue
            if best is None or it > best:
                best = it
    if best is None:
        return None
    return dict(snapshot_paths(run_dir, best), iteration=best)


# -- the best snapshot -----------------------------------------------------------------
class BestSnapshot:
    """Keeps the weights with the lowest validation loss: best.caffemodel + best.json.

    Each is written to a temporary file and renamed, caffemodel first, so a reader never
    sees half a file. A resumed run keeps comparing against the best of the earlier part.
    """

    def __init__(self, run_dir: str, keep_existing: bool = False):
        self.model = os.path.join(run_dir, BEST_MODEL)
        self.info = os.path.join(run_dir, BEST_INFO)
        self.best = read_best(run_dir) if keep_existing else None

    def offer(self, iteration: int, val_loss: float, write) -> bool:
        """write(tmp_path) saves the candidate weights; called only when val_loss is a new best."""
        if val_loss is None or not math.isfinite(val_loss):
            return False
        if self.best is not None and val_loss >= self.best["val_loss"]:
            return False
        with atomic_file(self.model) as tmp:
            write(tmp)
        self.best = {"iteration": int(iteration), "val_loss": float(val_loss), "caffemodel": self.model}
        write_text(self.info, json.dumps(self.best, indent=1))
        return True

    def forget_after(self, iteration: int) -> None:
        """A run resumed from an earlier snapshot abandons the later best (and its files)."""
        if self.best is not None and self.best["iteration"] > iteration:
            self.best = None
            for p in (self.info, self.model):
                if os.path.isfile(p):
                    os.remove(p)


def read_best(run_dir: str) -> Optional[Dict]:
    """The run's best snapshot {iteration, val_loss, caffemodel} or None (no validation yet)."""
    info, model = os.path.join(run_dir, BEST_INFO), os.path.join(run_dir, BEST_MODEL)
    if not (os.path.isfile(info) and os.path.isfile(model)):
        return None
    try:
        with open(info) as f:
            best = json.load(f)
        return {"iteration": int(best["iteration"]), "val_loss": float(best["val_loss"]),
                "caffemodel": os.path.abspath(model)}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def pick_snapshot(summary: Dict, which: str = "best") -> Dict:
    """The model to evaluate, named: {"which", "caffemodel", "iteration", "val_loss"}.

    "best" is the lowest validation loss (falls back to the last snapshot, and says so,
    when the run never validated); "last" is the final snapshot.
    """
    if which not in SNAPSHOT_CHOICES:
        raise ValueError("unknown snapshot %r (choose from %s)" % (which, ", ".join(SNAPSHOT_CHOICES)))
    best = summary.get("best")
    if which == "best" and best:
        return {"which": "best", "caffemodel": best["caffemodel"], "iteration": best["iteration"],
                "val_loss": best["val_loss"]}
    if not summary.get("final_caffemodel"):
        raise ValueError("%s: the run has no snapshot to evaluate" % summary.get("out", "run"))
    return {"which": "last" if which == "last" else "last (no validation, so no best)",
            "caffemodel": summary["final_caffemodel"], "iteration": summary.get("iterations"),
            "val_loss": summary.get("last_val_loss")}


def record_evaluated(run_dir: str, picked: Dict) -> Dict:
    """Note in train_summary.json which snapshot an evaluation used (the report reads it)."""
    path = os.path.join(run_dir, SUMMARY_FILE)
    with open(path) as f:
        summary = json.load(f)
    summary["evaluated_snapshot"] = picked
    write_text(path, json.dumps(summary, indent=1))
    return summary


# -- the dataset's LMDBs ------------------------------------------------------------------
def check_dataset_lmdbs(dataset: str) -> Dict[str, int]:
    """{"train": n, "val": n} after checking all four LMDBs; features and labels must pair up."""
    counts = {}
    for split, feats, labels in layout.lmdb_pairs(dataset):
        for p in (feats, labels):
            if not os.path.isdir(p):
                raise FileNotFoundError("%s: missing LMDB (build the dataset with python -m dataset_builder)" % p)
        nf, nl = check_lmdb(feats), check_lmdb(labels)
        if nf != nl:
            raise ValueError("%s: %d feature images but %d label images in %s; rebuild the dataset"
                             % (os.path.dirname(feats), nf, nl, layout.LABELS))
        counts[split] = nf
    return counts


def check_mean_file(dataset: str, height: int, width: int) -> str:
    """The training mean (train_db/mean.binaryproto) must parse and be 3 x H x W: Caffe's
    DataTransformer aborts the whole process otherwise. A bad one is a one-line ValueError."""
    from google.protobuf.message import DecodeError
    from thermalnet.caffe_env import caffe_pb2
    path = os.path.join(dataset, layout.TRAIN_DB, layout.MEAN_FILE)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ValueError("%s: cannot read the mean image (%s); rebuild the dataset" % (path, exc.strerror or exc)) \
            from None
    blob = caffe_pb2().BlobProto()
    try:
        blob.ParseFromString(data)
    except (DecodeError, ValueError, RuntimeError):
        raise ValueError("%s: not a Caffe mean image (BlobProto); rebuild the dataset" % path) from None
    dims = list(blob.shape.dim) if blob.HasField("shape") else [blob.num, blob.channels, blob.height, blob.width]
    want = 3 * int(height) * int(width)
    if tuple(dims[-3:]) != (3, int(height), int(width)) or len(blob.data) != want:
        raise ValueError("%s: mean image is %s with %d values, the dataset's images are 3x%dx%d; rebuild the dataset"
                         % (path, "x".join(str(d) for d in dims) or "empty", len(blob.data), height, width))
    return path


def check_solverstate(path: str, net: str) -> None:
    """A .solverstate must parse, hold one or two history blobs per weight blob of the net at
    their shapes (SGD one, Adam two), and name a learned_net that fits the net: Caffe's
    Solver::Restore aborts the whole process otherwise. A bad one is a one-line ValueError."""
    from google.protobuf.message import DecodeError
    from thermalnet import nets as _nets
    from thermalnet.caffe_env import caffe_pb2
    state = caffe_pb2().SolverState()
    try:
        with open(path, "rb") as f:
            state.ParseFromString(f.read())
    except OSError as exc:
        raise ValueError("%s: cannot read the solver state (%s)" % (path, exc.strerror or exc)) from None
    except (DecodeError, ValueError, RuntimeError):
        raise ValueError("%s: not a Caffe solver state (.solverstate)" % path) from None
    shapes = [s for blobs in _nets.net_param_shapes(net).values() for s in blobs]
    have = [tuple(int(d) for d in b.shape.dim) for b in state.history]
    if not have or len(have) % len(shapes) or len(have) // len(shapes) > 2 \
            or any(h != s for h, s in zip(have, shapes * 2)):
        raise ValueError("%s: not a solver state of %s (%d history blobs; the net has %d weight blobs)"
                         % (path, net, len(have), len(shapes)))
    if state.learned_net and not os.path.isfile(state.learned_net):    # Caffe opens it as written
        raise ValueError("%s: its weights file %s is missing (was the run folder moved?)" % (path, state.learned_net))


# -- the glog-format log ----------------------------------------------------------------
class GlogWriter:
    """Appends lines in `caffe train`'s log format, so thermalnet.caffe_log parses both back-ends."""

    def __init__(self, path: str):
        self.f = open(path, "a", buffering=1)

    def __call__(self, msg: str, level: str = "I") -> None:
        src = "train.py:%d" % sys._getframe(1).f_lineno
        self.f.write("%s %s\n" % (caffe_log.glog_prefix(source=src, level=level), msg))

    def raw(self, line: str) -> None:
        self.f.write(line if line.endswith("\n") else line + "\n")

    def close(self) -> None:
        self.f.close()


def cpu_model() -> str:
    """The CPU's marketing name (Linux /proc/cpuinfo), for the report's machine line."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class DivergenceWatch:
    """NaN at once, or DIVERGE_PATIENCE displays in a row above DIVERGE_FACTOR x the first one."""

    def __init__(self, factor: float = DIVERGE_FACTOR, patience: int = DIVERGE_PATIENCE):
        self.factor, self.patience = factor, patience
        self.first = None
        self.bad = 0

    def check(self, it: int, loss: float, lr: Optional[float] = None) -> Optional[str]:
        hint = " (lr %g); lower --base-lr" % lr if lr is not None else "; lower --base-lr"
        if not math.isfinite(loss):
            return "training stopped: loss is %s at iteration %d%s" % (loss, it, hint)
        if self.first is None:
            self.first = max(loss, 1e-12)
            return None
        if loss > self.factor * self.first:
            self.bad += 1
            if self.bad >= self.patience:
                return ("training stopped: loss diverged (%.4g at iteration %d, > %g x the first loss %.4g for %d "
                        "checks)%s" % (loss, it, self.factor, self.first, self.bad, hint))
        else:
            self.bad = 0
        return None


# -- set-up ----------------------------------------------------------------------------
def prepare_run(dataset: str, net: str, out: str, epochs: float, batch_size: int,
                base_lr: Optional[float] = None, solver_template: Optional[str] = None,
                snapshot_epochs: Optional[float] = None, display: Optional[int] = None,
                seed: int = spec.SEED, gpu: Optional[int] = None, weights=None) -> Dict:
    """Check inputs (LMDBs whole, class count, pretrained weights fit), then write
    train_val.prototxt + solver.prototxt into the run folder; return the plan."""

    counts = check_dataset_lmdbs(dataset)
    if not os.path.isfile(net):
        raise FileNotFoundError("%s: no such network prototxt" % net)
    if batch_size < 1:
        raise ValueError("--batch-size must be >= 1, got %d" % batch_size)
    if not epochs > 0:
        raise ValueError("--epochs must be > 0, got %g" % epochs)
    info = layout.read_dataset_info(dataset)
    check_mean_file(dataset, int(info["height"]), int(info["width"]))
    q = check_class_count(net, dataset)
    n_train, n_val = counts["train"], counts["val"]
    given = nets.split_weights(weights)
    fit = nets.check_weights(given, net) if given else None        # errors name the files as given
    weight_files = [os.path.abspath(w) for w in given]
    if n_train == 0:
        raise ValueError("%s: the training LMDB is empty" % os.path.join(dataset, layout.TRAIN_DB, layout.FEATURES))
    # The val batch divides n_val, so test_iter batches cover val_db exactly once per pass.
    val_batch = max(d for d in range(1, min(batch_size, n_val) + 1) if n_val % d == 0) if n_val else None
    snapshot_epochs = snapshot_epochs or max(1.0, epochs / 5.0)
    sched = nets.solver_schedule(n_train, batch_size, epochs, n_val=n_val, val_batch=val_batch,
                                 snapshot_every_epochs=snapshot_epochs)
    if display:
        sched["display"] = int(display)
    opts = solver_options(solver_template, base_lr)       # a bad template fails before anything is written
    os.makedirs(out, exist_ok=True)
    out = os.path.abspath(out)
    train_val = os.path.join(out, TRAIN_VAL_FILE)
    nets.materialize(net, dataset, train_val, batch_size=batch_size, val_batch_size=val_batch)
    solver = os.path.join(out, SOLVER_FILE)
    nets.write_solver(solver, train_val, sched, snapshot_prefix=os.path.join(out, SNAPSHOT_PREFIX),
                      mode="GPU" if gpu is not None else "CPU", random_seed=seed, test_initialization=True, **opts)
    iters_per_epoch, max_iter, test_iter = sched["iters_per_epoch"], sched["max_iter"], sched["test_iter"]
    display, snap_every = sched["display"], sched["snapshot"]
    return {"dataset": os.path.abspath(dataset), "net": os.path.abspath(net), "out": out, "num_bins": q,
            "height": int(info["height"]), "width": int(info["width"]), "synthetic": bool(info.get("synthetic")),
            "n_train": n_train, "n_val": n_val, "batch_size": batch_size, "val_batch_size": val_batch,
            "test_iter": test_iter, "iters_per_epoch": iters_per_epoch, "epochs": epochs, "max_iter": max_iter,
            "display": display, "snapshot_every": snap_every, "train_val": train_val, "solver": solver,
            "seed": seed, "weights": weight_files,
            "weights_layers": {"from_weights": fit["from_weights"], "from_fillers": fit["from_fillers"]}
            if fit else None}


def solver_options(template: Optional[str], base_lr: Optional[float]) -> Dict:
    """write_solver's optimiser settings: the template's (if given), base_lr overridden."""
    opts = dict(DEFAULT_SOLVER)
    if template:
        if not os.path.isfile(template):
            raise FileNotFoundError("%s: no such solver template" % template)
        try:
            sp = _solver_param(template)
        except Exception as exc:  # protobuf ParseError
            raise ValueError("%s: not a valid solver prototxt (%s)" % (template, str(exc).splitlines()[0])) from exc
        if sp.type:
            opts["solver_type"] = sp.type
        for field, key in (("base_lr", "base_lr"), ("lr_policy", "lr_policy"), ("momentum", "momentum"),
                           ("weight_decay", "weight_decay"), ("gamma", "gamma"), ("power", "power")):
            if sp.HasField(field):
                opts[key] = getattr(sp, field)
    if base_lr is not None:
        opts["base_lr"] = float(base_lr)
    return opts


def _pycaffe_solver_file(plan: Dict) -> str:
    """The same solver without Caffe's own test/display: the Python loop does those (and logs them)."""
    from google.protobuf import text_format
    sp = _solver_param(plan["solver"])
    sp.test_interval = 2147483647      # Caffe requires > 0 when there are test nets
    sp.test_initialization = False
    sp.display = 0
    sp.snapshot = 0
    sp.snapshot_after_train = False
    path = os.path.join(plan["out"], PYCAFFE_SOLVER_FILE)
    write_text(path, "# Written by tools.train: solver.prototxt with testing, display and snapshots\n"
                      "# left to the pycaffe loop (which logs them in Caffe's format).\n"
                + text_format.MessageToString(sp))
    return path


def _loss_blob(net) -> str:
    outs = list(net.outputs)
    if not outs:
        raise TrainingError("the train net has no output blob (no loss layer?)")
    return "loss" if "loss" in outs else outs[0]


# -- back-ends ------------------------------------------------------------------------
def _pycaffe_loop(plan: Dict, log: GlogWriter, resume: Optional[str], gpu: Optional[int],
                  progress: bool, watch: DivergenceWatch) -> Dict:
    """The training loop itself; runs in the child process of _train_pycaffe."""
    from tqdm import tqdm
    from thermalnet.caffe_env import use_device
    caffe = use_device(gpu)
    sp = _solver_param(plan["solver"])
    solver_file = _pycaffe_solver_file(plan)
    log("Initializing solver from parameters: %s (pycaffe loop, solver %s)" % (plan["solver"], solver_file))
    solver = caffe.get_solver(solver_file)
    net = solver.net
    loss_name = _loss_blob(net)
    tnet = solver.test_nets[0] if (len(solver.test_nets) and plan["test_iter"]) else None
    tloss_name = _loss_blob(tnet) if tnet is not None else None
    log("Solving %s" % (nets.load_net(plan["train_val"]).name or "net"))
    log("Learning Rate Policy: %s" % (sp.lr_policy or "fixed"))
    for w in plan.get("weights") or []:
        log("Finetuning from %s" % w)          # caffe train -weights: in order, by layer name
        net.copy_from(w)
    if resume:
        log("Restoring previous solver status from %s" % resume)
        solver.restore(resume)
    best = BestSnapshot(plan["out"], keep_existing=bool(resume))
    start = int(solver.iter)
    best.forget_after(start)
    if start >= plan["max_iter"]:
        log("Iteration %d >= max_iter %d: nothing to train" % (start, plan["max_iter"]))
    ipe, display, max_iter = plan["iters_per_epoch"], plan["display"], plan["max_iter"]
    val_rows: List[Dict] = []
    train_seconds = 0.0
    window: List[float] = []
    last_loss = None

    def validate(it: int) -> float:
        log("Iteration %d, Testing net (#0)" % it)
        tnet.share_with(net)
        total = 0.0
        for _ in range(plan["test_iter"]):
            tnet.forward()
            total += float(np.asarray(tnet.blobs[tloss_name].data).sum())
        v = total / plan["test_iter"]
        log("    Test net output #0: %s = %g (* 1 = %g loss)" % (tloss_name, v, v))
        val_rows.append({"iteration": it, "loss": v})
        if best.offer(it, v, net.save):
            log("Best validation loss so far: %g at iteration %d, saved to %s" % (v, it, best.model))
        return v

    def snapshot(it: int) -> None:
        paths = snapshot_paths(plan["out"], it)
        solver.snapshot()
        log("Snapshotting to binary proto file %s" % paths["caffemodel"])
        log("Snapshotting solver state to binary proto file %s" % paths["solverstate"])

    state = _LOOP_STATE
    bar = tqdm(total=max_iter, initial=start, desc="train", unit="it", disable=not progress,
               dynamic_ncols=True)
    it = start
    budget, t_loop = plan.get("max_seconds"), time.time()
    if tnet is not None and start == 0 and max_iter > 0:
        validate(0)
    state["snapshot"] = lambda: snapshot(int(solver.iter))
    state["iter"] = lambda: int(solver.iter)
    state["start"] = start
    while it < max_iter:
        lr = learning_rate(sp, it)
        t = time.time()
        solver.step(1)
        train_seconds += time.time() - t
        loss = float(np.asarray(net.blobs[loss_name].data).sum())
        window.append(loss)
        if not math.isfinite(loss):
            log("Iteration %d, loss = %s" % (it, loss))
            msg = watch.check(it, loss, lr)
            log(msg, level="E")
            raise TrainingError(msg)
        if it % display == 0:
            shown = float(np.mean(window))
            window = []
            log("Iteration %d, loss = %g" % (it, shown))
            log("    Train net output #0: %s = %g (* 1 = %g loss)" % (loss_name, loss, loss))
            log("Iteration %d, lr = %g" % (it, lr))
            last_loss = shown
            msg = watch.check(it, shown, lr)
            if msg:
                log(msg, level="E")
                raise TrainingError(msg)
        it = int(solver.iter)
        bar.update(1)
        bar.set_postfix(loss="%.4f" % loss, epoch="%.2f" % (it / float(ipe)))
        if it % plan["snapshot_every"] == 0 or it == max_iter:
            snapshot(it)
        if tnet is not None and (it % ipe == 0 or it == max_iter):
            validate(it)
        if budget and it < max_iter and time.time() - t_loop >= budget:
            log("Stopping at iteration %d (epoch %.2f): time budget of %.0f s reached" % (it, it / float(ipe), budget))
            if not os.path.isfile(snapshot_paths(plan["out"], it)["caffemodel"]):
                snapshot(it)
            if tnet is not None and not (val_rows and val_rows[-1]["iteration"] == it):
                validate(it)
            break
    bar.close()
    if it == max_iter and not os.path.isfile(snapshot_paths(plan["out"], it)["caffemodel"]):
        snapshot(it)
    log("Optimization Done.")
    return {"start_iter": start, "iterations": int(solver.iter), "train_seconds": train_seconds,
            "last_train_loss": last_loss, "last_val_loss": val_rows[-1]["loss"] if val_rows else None}


_LOOP_STATE: Dict = {}


def _worker_main(job_path: str) -> None:
    """Child-process entry: run the pycaffe loop, write the result JSON, exit without C++ teardown.

    Why a child: after a NaN, Caffe's max-pooling backward indexes with its unset mask
    (-1) and writes before its buffer, so the heap is corrupt and the process aborts on
    the next free(); the parent keeps running and reports the NaN cleanly.
    """
    with open(job_path) as f:
        job = json.load(f)
    log = GlogWriter(job["log"])
    res = {"status": "done", "error": None, "result": {}}
    try:
        res["result"] = _pycaffe_loop(job["plan"], log, job["resume"], job["gpu"], job["progress"],
                                      DivergenceWatch(job["diverge_factor"], job["diverge_patience"]))
    except TrainingError as exc:
        res.update(status="stopped", error=str(exc))
    except KeyboardInterrupt:
        it = _LOOP_STATE["iter"]() if "iter" in _LOOP_STATE else None
        if "snapshot" in _LOOP_STATE and it:
            _LOOP_STATE["snapshot"]()
        msg = "training interrupted at iteration %s%s" % (
            it, "; snapshot written, continue with --resume %s" % snapshot_paths(job["plan"]["out"], it)["solverstate"]
            if it else "")
        log(msg, level="W")
        res.update(status="interrupted", error=msg)
    except Exception as exc:  # noqa: BLE001 -- reported to the parent as one line
        res.update(status="failed", error="%s: %s" % (type(exc).__name__, exc))
    if res["status"] != "done" and "iter" in _LOOP_STATE:
        res["result"] = {"iterations": _LOOP_STATE["iter"](), "start_iter": _LOOP_STATE.get("start", 0)}
    log.close()
    write_text(job["result"], json.dumps(res))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _train_pycaffe(plan: Dict, log: GlogWriter, resume: Optional[str], gpu: Optional[int],
                   progress: bool, watch: DivergenceWatch) -> Dict:
    """The pycaffe loop in a child Python process (see _worker_main); its log lines go to the same file."""
    log.f.flush()
    job = {"plan": plan, "log": log.f.name, "resume": resume, "gpu": gpu, "progress": progress,
           "diverge_factor": watch.factor, "diverge_patience": watch.patience,
           "result": os.path.join(plan["out"], ".worker_result.json")}
    job_path = os.path.join(plan["out"], ".worker_job.json")
    write_text(job_path, json.dumps(job))
    if os.path.exists(job["result"]):
        os.remove(job["result"])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([REPO_ROOT, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from %s import _worker_main; "
                             "_worker_main(sys.argv[1])" % _MODULE, job_path], env=env, cwd=plan["out"])
    try:
        rc = proc.wait()
    except KeyboardInterrupt:
        rc = proc.wait()     # the child got the same SIGINT: it snapshots and reports
    if not os.path.isfile(job["result"]):
        raise TrainingError("the pycaffe training process died (exit status %d) without a result; see %s"
                            % (rc, log.f.name))
    with open(job["result"]) as f:
        res = json.load(f)
    for p in (job_path, job["result"]):
        os.remove(p)
    if res["status"] != "done":
        raise TrainingError(res["error"], res.get("result"))
    return res["result"]


def _caffe_tool_solver_file(plan: Dict) -> str:
    """solver.prototxt with a snapshot at every validation, so the best one can be kept."""
    from google.protobuf import text_format
    sp = _solver_param(plan["solver"])
    if not (plan["test_iter"] and sp.test_interval):
        return plan["solver"]
    sp.snapshot = math.gcd(int(sp.test_interval), int(sp.snapshot or sp.test_interval))
    path = os.path.join(plan["out"], CAFFE_SOLVER_FILE)
    write_text(path, "# Written by tools.train: solver.prototxt with a snapshot at every validation, so the\n"
                      "# snapshot with the lowest validation loss can be kept (best.caffemodel); the extra\n"
                      "# snapshots are deleted once a newer one exists.\n" + text_format.MessageToString(sp))
    return path


class _CaffeToolBest:
    """Reads `caffe train`'s test passes as they stream by: keeps the best snapshot, prunes extras."""

    def __init__(self, plan: Dict, keep_existing: bool):
        self.plan = plan
        self.best = BestSnapshot(plan["out"], keep_existing)
        self.block: Optional[List[str]] = None
        self.last_val: Optional[float] = None
        self.started = False

    def line(self, line: str, ev) -> None:
        if ev is not None and not self.started and ev[0] in ("testing", "train", "lr"):
            self.started = True
            self.best.forget_after(ev[1])          # where caffe (re)started
        if ev is not None and ev[0] == "test_output":
            if self.block is not None:
                self.block.append(line)
            return
        if ev is not None:
            self.close()
            if ev[0] == "testing" and ev[2] == 0:
                self.block = [line]

    def close(self) -> None:
        block, self.block = self.block, None
        if not block:
            return
        for row in caffe_log.parse_log(block)[1]:
            it, loss = row["iteration"], row["loss"]
            self.last_val = loss
            snap = snapshot_paths(self.plan["out"], it)
            if os.path.isfile(snap["caffemodel"]):     # (none at iteration 0: caffe tests before it saves)
                import shutil
                self.best.offer(it, loss, lambda tmp: shutil.copyfile(snap["caffemodel"], tmp))
                self.prune(it)

    def prune(self, newest: int) -> None:
        """Delete snapshots outside the user's schedule older than `newest` (judged by now;
        the newest one may still be caffe's last)."""
        out, every = self.plan["out"], self.plan["snapshot_every"]
        for f in os.listdir(out):
            if not (f.startswith(SNAPSHOT_PREFIX + "_iter_") and f.endswith(".caffemodel")):
                continue
            try:
                it = int(f[len(SNAPSHOT_PREFIX) + 6:-len(".caffemodel")])
            except ValueError:
                continue
            if it < newest and it % every and it != self.plan["max_iter"]:
                for p in snapshot_paths(out, it).values():
                    if os.path.isfile(p):
                        os.remove(p)

    def finish(self) -> None:
        self.close()
        final = latest_snapshot(self.plan["out"])
        if final:
            self.prune(final["iteration"])


_PROBE_NET = """layer { name: "data" type: "DummyData" top: "data" top: "label"
  dummy_data_param { shape { dim: 1 dim: 2 } shape { dim: 1 dim: 1 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 1 } }
layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "label" top: "loss" }
"""
_READS_WEIGHTS: Dict[str, bool] = {}


def caffe_tool_reads_weights(tool: str) -> bool:
    """Whether `caffe train -weights` copies the weights (BVLC 1.0, NVCaffe, the kit's build
    with its patch 0008) or silently ignores the flag (an rc3-lineage Caffe without it: its
    train() never calls CopyLayers), so that --weights with such a tool is refused, not
    trained from the fillers.

    Probe: train 0 iterations of a one-layer net with -weights naming a missing file; a
    Caffe that reads the flag fails on it. About a tenth of a second, once per tool.
    """
    import tempfile
    if tool not in _READS_WEIGHTS:
        with tempfile.TemporaryDirectory(prefix="weights-probe-") as d:
            net, solver = os.path.join(d, "net.prototxt"), os.path.join(d, "solver.prototxt")
            write_text(net, _PROBE_NET)
            write_text(solver, 'net: "%s"\nbase_lr: 0.01\nlr_policy: "fixed"\nmax_iter: 0\ndisplay: 0\n'
                                'snapshot_after_train: false\nsolver_mode: CPU\n' % net)
            missing = os.path.join(d, "missing-probe.caffemodel")
            r = subprocess.run([tool, "train", "-solver", solver, "-weights", missing], capture_output=True,
                               text=True, cwd=d)
            _READS_WEIGHTS[tool] = r.returncode != 0 and "missing-probe" in (r.stdout + r.stderr)
    return _READS_WEIGHTS[tool]


def _train_caffe_tool(plan: Dict, log: GlogWriter, resume: Optional[str], gpu: Optional[int],
                      progress: bool, watch: DivergenceWatch) -> Dict:
    from tqdm import tqdm
    from thermalnet.caffe_env import caffe_tool, python_layer_env
    solver_file = _caffe_tool_solver_file(plan)
    cmd = [caffe_tool(), "train", "-solver", solver_file]
    if resume:
        cmd += ["-snapshot", resume]
    elif plan.get("weights"):
        cmd += ["-weights", ",".join(plan["weights"])]     # train() checked that this tool reads it
    if gpu is not None:
        cmd += ["-gpu", str(gpu)]
    env = python_layer_env()
    env["GLOG_logtostderr"] = "1"
    env["GLOG_minloglevel"] = "0"
    log("Running %s" % " ".join(cmd))
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            cwd=plan["out"], bufsize=1)
    bar = tqdm(total=plan["max_iter"], desc="caffe train", unit="it", disable=not progress, dynamic_ncols=True)
    start, last_iter, last_loss, error = None, 0, None, None
    keeper = _CaffeToolBest(plan, keep_existing=bool(resume))
    tail: List[str] = []
    budget, interrupted = plan.get("max_seconds"), False
    for line in proc.stdout:
        log.raw(line)
        # SIGINT only once solving has begun: before that caffe has no handler and just dies.
        if budget and not interrupted and start is not None and time.time() - t0 >= budget:
            proc.send_signal(signal.SIGINT)      # caffe's -sigint_effect stop: snapshot, then exit
            interrupted = True
            log("Stopping: time budget of %.0f s reached (SIGINT to caffe)" % budget)
        tail = (tail + [line.rstrip()])[-15:]
        _, ev = caffe_log.parse_line(line)
        keeper.line(line, ev)
        if ev is None:
            continue
        if ev[0] == "train":
            if start is None:
                start = ev[1]
                bar.update(ev[1] - bar.n)
            bar.update(max(0, ev[1] - bar.n))
            bar.set_postfix(loss="%.4f" % ev[2])
            last_iter, last_loss = ev[1], ev[2]
            error = watch.check(ev[1], ev[2])
            if error:
                proc.terminate()
                break
    proc.wait()
    keeper.finish()
    bar.close()
    if error:
        log(error, level="E")
        raise TrainingError(error, {"start_iter": start or 0, "iterations": last_iter})
    if proc.returncode != 0:
        raise TrainingError("caffe train exited with status %d; last lines:\n  %s"
                            % (proc.returncode, "\n  ".join(tail)))
    final = latest_snapshot(plan["out"])
    return {"start_iter": start or 0, "iterations": final["iteration"] if final else last_iter,
            "train_seconds": time.time() - t0,
            "last_train_loss": last_loss, "last_val_loss": keeper.last_val}


BACKENDS = {"pycaffe": _train_pycaffe, "caffe": _train_caffe_tool}


def train(dataset: str, net: Optional[str] = None, out: str = "runs/train", epochs: float = 10,
          batch_size: int = 8, base_lr: Optional[float] = None, solver_template: Optional[str] = None,
          gpu: Optional[int] = None, resume: Optional[str] = None, backend: str = "pycaffe",
          paper_scale: bool = False, snapshot_epochs: Optional[float] = None, display: Optional[int] = None,
          seed: int = spec.SEED, progress: bool = True, overwrite: bool = False,
          diverge_factor: float = DIVERGE_FACTOR, diverge_patience: int = DIVERGE_PATIENCE,
          max_minutes: Optional[float] = None, weights=None) -> Dict:
    """Train; returns (and writes) the run summary. Raises TrainingError on NaN/divergence.

    max_minutes: a wall-clock budget; training stops at the first iteration past it
    (snapshot + validation there), so a demo fits its time whatever the machine's speed.
    weights: caffemodel(s) to fine-tune from ("A,B" or a list; Caffe's -weights), checked
    against the network first (thermalnet.nets.WeightsError, a ValueError, when one does not fit).
    """
    if backend not in BACKENDS:
        raise ValueError("unknown backend %r (choose from %s)" % (backend, ", ".join(BACKENDS)))
    net = net or (PAPER_NET if paper_scale else DEFAULT_NET)
    if paper_scale:
        info = layout.read_dataset_info(dataset)
        if (int(info["height"]), int(info["width"])) != (spec.PAPER_HEIGHT, spec.PAPER_WIDTH):
            raise ValueError("%s is %dx%d but --paper-scale trains at %dx%d: build the dataset at paper scale"
                             % (dataset, info["height"], info["width"], spec.PAPER_HEIGHT, spec.PAPER_WIDTH))
    log_path = os.path.join(out, LOG_FILE)
    if resume and nets.split_weights(weights):
        # caffe train refuses the pair too: a restored .solverstate would overwrite the weights.
        raise ValueError("give --resume to continue training or --weights to fine-tune, not both")
    if resume:
        if not os.path.isfile(resume) or not resume.endswith(".solverstate"):
            raise FileNotFoundError("%s: no such .solverstate to resume from" % resume)
        check_solverstate(resume, net)
    elif os.path.exists(log_path) and not overwrite:
        raise FileExistsError("%s exists: resume with --resume %s/%s_iter_N.solverstate, or pass --overwrite"
                              % (log_path, out, SNAPSHOT_PREFIX))
    if backend == "caffe" and not resume and nets.split_weights(weights):
        from thermalnet.caffe_env import caffe_tool
        if not caffe_tool_reads_weights(caffe_tool()):
            raise ValueError("%s: this caffe tool ignores -weights (its train() never copies them; the kit's "
                             "build copies them since its patch 0008): rebuild with `make setup`, or train "
                             "with --backend pycaffe" % caffe_tool())
    if gpu is not None:
        # Before anything is written, and before `caffe train -gpu` could abort with a stack trace.
        from thermalnet.caffe_env import check_gpu_available
        check_gpu_available(gpu)
    plan = prepare_run(dataset, net, out, epochs, batch_size, base_lr=base_lr, solver_template=solver_template,
                       snapshot_epochs=snapshot_epochs, display=display, seed=seed, gpu=gpu, weights=weights)
    plan["max_seconds"] = 60.0 * max_minutes if max_minutes else None
    if not resume:
        for f in os.listdir(plan["out"]):
            if f.startswith(SNAPSHOT_PREFIX + "_iter_") or f in (LOG_FILE, "train.csv", "val.csv", "loss.png",
                                                                   SUMMARY_FILE, BEST_MODEL, BEST_INFO):
                os.remove(os.path.join(plan["out"], f))
    log = GlogWriter(os.path.join(plan["out"], LOG_FILE))
    watch = DivergenceWatch(diverge_factor, diverge_patience)
    t0 = time.time()
    status, error = "done", None
    try:
        result = BACKENDS[backend](plan, log, os.path.abspath(resume) if resume else None, gpu, progress, watch)
    except TrainingError as exc:
        status, error, result = "stopped", str(exc), exc.result
    finally:
        log.close()
    wall = time.time() - t0
    summary = dict(plan, backend=backend, resume=os.path.abspath(resume) if resume else None, status=status,
                   error=error, wall_seconds=wall, cpu_cores=os.cpu_count(), machine=platform.machine(),
                   processor=cpu_model(), gpu=gpu, **result)
    if result.get("iterations") is not None and result.get("train_seconds"):
        done = result["iterations"] - result.get("start_iter", 0)
        summary["images_per_second"] = done * batch_size / result["train_seconds"] if done > 0 else None
    snap = latest_snapshot(plan["out"])
    summary["final_caffemodel"] = snap["caffemodel"] if snap else None
    summary["best"] = read_best(plan["out"])
    try:
        train_csv, val_csv = caffe_log.log_to_csv(os.path.join(plan["out"], LOG_FILE))
        from thermalnet import plots
        plots.plot_loss_csv(train_csv, val_csv, os.path.join(plan["out"], "loss.png"), plan["iters_per_epoch"],
                            title="Thermalnet %s, %dx%d, Q=%d%s" % (
                                os.path.basename(plan["net"]).replace(".prototxt", ""), plan["height"],
                                plan["width"], plan["num_bins"], " (SYNTHETIC data)" if plan["synthetic"] else ""))
    except ValueError:
        pass   # a run stopped before its first logged iteration has no curve
    write_text(os.path.join(plan["out"], SUMMARY_FILE), json.dumps(summary, indent=1))
    if error:
        raise TrainingError(error)
    return summary


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools.train",
                                description="Train Thermalnet on a dataset folder (DIGITS-style run folder: "
                                            "train_val.prototxt, solver.prototxt, snapshots, train.log in Caffe's "
                                            "format, train.csv/val.csv, loss.png).")
    p.add_argument("--dataset", required=True, help="dataset folder built by dataset_builder")
    p.add_argument("--net", help="all-in-one network prototxt (default prototxt/thermalnet_%s.prototxt, "
                                 "or _%s with --paper-scale)" % (spec.DEFAULT_BASE, spec.PAPER_BASE))
    p.add_argument("--solver-template", help="solver prototxt to start from (default: thermalnet.nets' template)")
    p.add_argument("--out", required=True, help="run folder, e.g. runs/NAME")
    p.add_argument("--epochs", type=float, required=True, help="passes over the training split")
    cli.add_batch_size(p, required=True, help="images per iteration")
    p.add_argument("--base-lr", type=float, help="override the template's base_lr")
    cli.add_gpu(p)
    p.add_argument("--resume", help="continue from runs/NAME/snap_iter_N.solverstate (log appended)")
    cli.add_backend(p, sorted(BACKENDS),
                    help="pycaffe loop (default) or the `caffe train` tool as a child process")
    p.add_argument("--paper-scale", action="store_true",
                   help="SqueezeNet v1.0 net at %dx%d (the dataset must be built at that size)"
                        % (spec.PAPER_HEIGHT, spec.PAPER_WIDTH))
    p.add_argument("--snapshot-epochs", type=float, help="epochs between snapshots (default: epochs/5, >= 1)")
    p.add_argument("--display", type=int, help="iterations between logged train losses")
    p.add_argument("--seed", type=int, default=spec.SEED, help="solver random_seed (weight init)")
    p.add_argument("--overwrite", action="store_true", help="start over in a run folder that has a train.log")
    p.add_argument("--max-minutes", type=float, help="wall-clock budget: stop (snapshot + validation) once past it")
    cli.add_weights(p)
    cli.add_quiet(p)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return cli.run(lambda: _main(args), outputs=[args.out])


def _main(args) -> None:
    s = train(args.dataset, args.net, args.out, args.epochs, args.batch_size, base_lr=args.base_lr,
              solver_template=args.solver_template, gpu=args.gpu, resume=args.resume, backend=args.backend,
              paper_scale=args.paper_scale, snapshot_epochs=args.snapshot_epochs, display=args.display,
              seed=args.seed, overwrite=args.overwrite, max_minutes=args.max_minutes, weights=args.weights,
              progress=not args.quiet)
    print("trained %d iterations (%.1f epochs) in %.0f s, %.1f img/s; final model %s; log %s"
          % (s["iterations"], s["iterations"] / float(s["iters_per_epoch"]), s["wall_seconds"],
             s.get("images_per_second") or 0, s["final_caffemodel"], os.path.join(s["out"], LOG_FILE)))
    if s.get("best"):
        print("best model %s (iteration %d, validation loss %.4g)"
              % (s["best"]["caffemodel"], s["best"]["iteration"], s["best"]["val_loss"]))
    if s.get("weights"):
        print("fine-tuned from %s (%d layers from the weights, %s from fillers)"
              % (", ".join(s["weights"]), len(s["weights_layers"]["from_weights"]),
                 ", ".join(s["weights_layers"]["from_fillers"]) or "none"))


if __name__ == "__main__":
    sys.exit(main())
