"""The Thermalnet networks in prototxt/ as the tools use them: paths, dataset binding, solvers.

The prototxt files stay hand-written and DIGITS-ready (relative LMDB sources, a
relative class-weights file); this module makes the copies a plain `caffe train`
or pycaffe needs: the same network pointed at one dataset folder (materialize),
a deploy file for another input size (deploy_for_size), and a solver whose
iteration counts follow DIGITS' epoch arithmetic (solver_schedule, write_solver, both
on thermalnet.solver).

    python -m thermalnet.nets --counts        # parameter counts of every network
    python -m thermalnet.nets --net v1_1 --check-weights squeezenet_v1.1.caffemodel   # would it load?
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
from typing import Dict, Optional, Sequence, Tuple

from thermalnet import solver as digits_solver, layout, spec
from thermalnet.atomic import write_text
from thermalnet.caffe_env import PROTOTXT_DIR, caffe_pb2

Network = collections.namedtuple("Network", "net deploy base loss")

# name -> all-in-one (train/val/deploy stages) and stand-alone deploy prototxt.
NETWORKS: Dict[str, Network] = {
    "v1_1": Network(os.path.join(PROTOTXT_DIR, "thermalnet_v1_1.prototxt"),
                    os.path.join(PROTOTXT_DIR, "thermalnet_v1_1_deploy.prototxt"), "v1_1", "softmax"),
    "v1_0": Network(os.path.join(PROTOTXT_DIR, "thermalnet_v1_0.prototxt"),
                    os.path.join(PROTOTXT_DIR, "thermalnet_v1_0_deploy.prototxt"), "v1_0", "softmax"),
    "v1_1_sigmoid": Network(os.path.join(PROTOTXT_DIR, "thermalnet_v1_1_sigmoid.prototxt"),
                            os.path.join(PROTOTXT_DIR, "thermalnet_v1_1_sigmoid_deploy.prototxt"),
                            "v1_1", "sigmoid"),
}
DEFAULT_NETWORK = spec.DEFAULT_BASE
PAPER_NETWORK = spec.PAPER_BASE

# SqueezeNet's published parameter counts minus its 1000-class conv10 (512*1000 + 1000):
# v1.0 1,248,424 and v1.1 1,235,496 in total. Thermalnet keeps that body unchanged.
SQUEEZENET_BODY_PARAMS = {"v1_0": 735424, "v1_1": 722496}
# The score layer. Not SqueezeNet's name "conv10" (1000 outputs there): Caffe copies weights
# by layer name, and a different name lets the ImageNet caffemodels load (tools.train --weights).
SCORE_LAYER = "conv10_thermal"
UPSAMPLE_LAYERS = ("upscore1", "upscore2")
LOSS_MODULE = "digits_python_layers"


def network(name: str) -> Network:
    """Look a network up by name (v1_1, v1_0, v1_1_sigmoid) with a helpful error."""
    try:
        return NETWORKS[name]
    except KeyError:
        raise ValueError("unknown network %r (known: %s)" % (name, ", ".join(sorted(NETWORKS)))) from None


def deploy_for(net_path: str, required: bool = True) -> Optional[str]:
    """The stand-alone deploy prototxt that goes with an all-in-one network: a kit network's
    own pair, else NAME_deploy.prototxt beside it (None, or FileNotFoundError if required)."""
    for n in NETWORKS.values():
        if os.path.abspath(n.net) == os.path.abspath(net_path):
            return n.deploy
    guess = net_path.replace(".prototxt", "_deploy.prototxt")
    if os.path.isfile(guess):
        return guess
    if required:
        raise FileNotFoundError("%s: no matching deploy prototxt (give --deploy)" % net_path)
    return None


def load_net(path: str):
    """Parse a prototxt into a NetParameter; a bad file is a one-line error naming it."""
    from google.protobuf import text_format

    net = caffe_pb2().NetParameter()
    try:
        with open(path) as f:
            text_format.Merge(f.read(), net)
    except OSError as exc:
        raise ValueError("%s: cannot read network (%s)" % (path, exc.strerror or exc)) from None
    except text_format.ParseError as exc:
        raise ValueError("%s: not a valid Caffe prototxt (%s)" % (path, str(exc).splitlines()[0])) from None
    return net


def save_net(net, out_path: str, header: str = "") -> None:
    from google.protobuf import text_format

    lines = "".join("# %s\n" % line for line in header.splitlines())
    write_text(out_path, lines + text_format.MessageToString(net))


def num_classes(net_path: str) -> int:
    """Q of a network: the score layer's num_output (must equal spec.NUM_BINS for the kit's datasets)."""
    for layer in load_net(net_path).layer:
        if layer.name == SCORE_LAYER:
            return int(layer.convolution_param.num_output)
    raise ValueError("%s: no %s layer, so the number of thermal bins is unknown" % (net_path, SCORE_LAYER))


def _stages(layer) -> set:
    return {s for rule in layer.include for s in rule.stage}


def _set_input_shape(net, height: int, width: int, batch: Optional[int] = None, path: str = "") -> int:
    """Resize every Input layer whose top is `data`; returns how many were changed."""
    changed = 0
    for layer in net.layer:
        if layer.type == "Input" and "data" in layer.top:
            if not layer.input_param.shape:
                layer.input_param.shape.add()
            shape = layer.input_param.shape[0]
            old = list(shape.dim) or [1, 3, height, width]
            n = batch if batch is not None else old[0]
            channels = old[1] if len(old) > 1 else 3
            shape.ClearField("dim")
            shape.dim.extend([int(n), int(channels), int(height), int(width)])
            changed += 1
    return changed


def materialize(net_path: str, dataset_dir: str, out_path: str, batch_size: Optional[int] = None,
                val_batch_size: Optional[int] = None) -> str:
    """Copy an all-in-one network bound to one dataset folder: absolute LMDB sources, mean
    file and class weights, optional batch sizes, deploy Input sized like the dataset.

    The shipped prototxt keeps DIGITS' relative names (DIGITS fills in its own paths);
    `caffe train` and pycaffe need real ones, and this is the only place they are made.
    """
    ds = os.path.abspath(dataset_dir)
    if not os.path.isdir(ds):
        raise ValueError("%s: no dataset folder" % dataset_dir)
    net = load_net(net_path)
    info = layout.read_dataset_info(ds, missing_ok=True)
    q = None
    for layer in net.layer:
        if layer.name == SCORE_LAYER:
            q = int(layer.convolution_param.num_output)
    if info.get("num_bins") is not None and q is not None and int(info["num_bins"]) != q:
        raise ValueError("%s: dataset has %s thermal bins but %s scores %d (%s num_output)"
                         % (os.path.join(ds, layout.DATASET_INFO_FILE), info["num_bins"], net_path, q, SCORE_LAYER))
    weights = os.path.join(ds, layout.CLASS_WEIGHTS_FILE)
    data_layers = 0
    for layer in net.layer:
        if layer.type == "Data":
            data_layers += 1
            source = layer.data_param.source
            if not source:
                raise ValueError("%s: Data layer %r has no source" % (net_path, layer.name))
            resolved = source if os.path.isabs(source) else os.path.join(ds, source)
            if not os.path.isdir(resolved):
                raise ValueError("%s: LMDB %s (source of %s in %s) does not exist"
                                 % (ds, resolved, layer.name, os.path.basename(net_path)))
            layer.data_param.source = resolved
            mean = layer.transform_param.mean_file
            if mean:
                mean = mean if os.path.isabs(mean) else os.path.join(ds, mean)
                if not os.path.isfile(mean):
                    raise ValueError("%s: mean file %s (of %s) does not exist" % (ds, mean, layer.name))
                layer.transform_param.mean_file = mean
            stages = _stages(layer)
            if batch_size is not None and "train" in stages:
                layer.data_param.batch_size = int(batch_size)
            if val_batch_size is not None and "val" in stages:
                layer.data_param.batch_size = int(val_batch_size)
        elif layer.type == "Python" and layer.python_param.module == LOSS_MODULE:
            params = json.loads(layer.python_param.param_str or "{}")
            params["class_weights"] = weights
            layer.python_param.param_str = json.dumps(params, sort_keys=True)
    if data_layers == 0:
        raise ValueError("%s: no Data layers to bind to a dataset (is it a deploy file?)" % net_path)
    if any(layer.type == "Python" for layer in net.layer) and not os.path.isfile(weights):
        raise ValueError("%s: class weights file missing (the loss layer needs it)" % weights)
    if info.get("height") and info.get("width"):
        _set_input_shape(net, int(info["height"]), int(info["width"]))
    save_net(net, out_path, "%s bound to dataset %s by thermalnet/nets.py materialize()"
             % (os.path.basename(net_path), ds))
    return out_path


def deploy_for_size(deploy_path: str, height: int, width: int, out_path: str, batch: int = 1) -> str:
    """Copy of a deploy (or all-in-one) file whose Input `data` is batch x 3 x height x width."""
    if height < 1 or width < 1 or batch < 1:
        raise ValueError("deploy_for_size: need positive sizes, got %dx%d batch %d" % (height, width, batch))
    net = load_net(deploy_path)
    if not _set_input_shape(net, height, width, batch):
        raise ValueError("%s: no Input layer with top \"data\" to resize" % deploy_path)
    save_net(net, out_path, "%s with input %dx3x%dx%d (thermalnet/nets.py deploy_for_size)"
             % (os.path.basename(deploy_path), batch, height, width))
    return out_path


def param_counts(net) -> Tuple["collections.OrderedDict[str, int]", int]:
    """(layer -> number of parameters, total) of a caffe.Net, in layer order."""
    counts = collections.OrderedDict()
    for name, blobs in net.params.items():
        counts[name] = int(sum(b.data.size for b in blobs))
    return counts, int(sum(counts.values()))


def count_summary(net) -> Dict[str, int]:
    """Split the total into SqueezeNet body, the score layer (SCORE_LAYER) and the bilinear upsampling."""
    counts, total = param_counts(net)
    score = counts.get(SCORE_LAYER, 0)
    upsample = sum(counts.get(n, 0) for n in UPSAMPLE_LAYERS)
    return {"body": total - score - upsample, "score": score, "upsample": upsample, "total": total}


# -- Solver -------------------------------------------------------------------------------

def solver_schedule(n_train: int, batch: int, epochs: float, iter_size: int = 1, n_val: int = 0,
                    val_batch: Optional[int] = None, val_every_epochs: float = 1.0,
                    snapshot_every_epochs: Optional[float] = None, step_percent: float = 33.0) -> Dict[str, int]:
    """Iteration counts from epochs by DIGITS' arithmetic (thermalnet.solver, shared with
    digits_jobs.validate), so a run here and the same job in DIGITS count alike.

    Paper: 1000 training pairs, 1000 epochs; at batch 8 that is 125 iterations per epoch,
    125,000 in all. stepsize is step_percent % of max_iter (DIGITS' "step size (% of
    total)"). DIGITS' snapshot 0 ("only at the end") is max_iter here: the trainer uses
    the value as a period.
    """
    if n_train < 1 or batch < 1 or iter_size < 1 or epochs <= 0:
        raise ValueError("solver_schedule: need n_train, batch, iter_size >= 1 and epochs > 0 "
                         "(got %r, %r, %r, %r)" % (n_train, batch, iter_size, epochs))
    per_epoch = digits_solver.iters_per_epoch(n_train, batch, iter_size)
    max_iter = digits_solver.max_iter(per_epoch, epochs)
    out = {"iters_per_epoch": per_epoch, "max_iter": max_iter, "iter_size": int(iter_size),
           "batch": int(batch),
           "test_interval": digits_solver.val_interval(val_every_epochs, per_epoch, max_iter),
           "test_iter": 0, "step_percent": float(step_percent),
           "stepsize": digits_solver.lr_fields("step", {"stepsize": step_percent}, max_iter)["stepsize"],
           "display": digits_solver.display_interval(max_iter, epochs, batch, iter_size)}
    if n_val > 0:
        out["test_iter"] = digits_solver.val_iters(n_val, val_batch or batch)
    snap = snapshot_every_epochs if snapshot_every_epochs is not None else epochs
    out["snapshot"] = digits_solver.snapshot_interval(snap, per_epoch, max_iter) or max_iter
    return out


def write_solver(out_path: str, net_path: str, schedule: Dict[str, int], base_lr: float,
                 lr_policy: str = "fixed", solver_type: str = "ADAM", momentum: float = digits_solver.MOMENTUM,
                 weight_decay: Optional[float] = None, snapshot_prefix: str = "snapshot",
                 mode: str = "CPU", gamma: Optional[float] = None, power: Optional[float] = None,
                 random_seed: Optional[int] = spec.SEED, test_initialization: bool = False,
                 stepvalue: Optional[str] = None) -> str:
    """A solver.prototxt for an all-in-one net (train_state "train", test_state "val").

    DIGITS' conventions (thermalnet.solver): solver_type in DIGITS' spelling (ADAM) or
    Caffe's (Adam), written as Caffe's `type`; momentum left out for AdaGrad and RMSprop;
    weight_decay = base_lr / 100 unless given; every DIGITS lr policy, its gamma, power
    and stepvalue (percent of max_iter) in DIGITS' form units, None = the form default.
    """
    caffe_type = digits_solver.caffe_type(solver_type)
    lr_given = {"gamma": gamma, "power": power, "stepvalue": stepvalue}
    if lr_policy == "step":
        lr_given["stepsize"] = schedule.get("step_percent")
    digits_solver.lr_params(lr_policy)          # an unknown policy fails before anything is built
    if mode not in ("CPU", "GPU"):
        raise ValueError("mode must be CPU or GPU, got %r" % mode)
    if not base_lr > 0:
        raise ValueError("base_lr must be positive, got %r" % base_lr)
    pb = caffe_pb2()
    s = pb.SolverParameter()
    s.net = os.path.abspath(net_path)
    s.train_state.stage.append("train")
    if schedule.get("test_iter", 0) > 0:
        s.test_state.add().stage.append("val")
        s.test_iter.append(int(schedule["test_iter"]))
        s.test_interval = int(schedule["test_interval"])
        s.test_initialization = bool(test_initialization)
    else:
        s.test_interval = int(schedule["max_iter"]) + 1   # no validation set: never test
        s.test_initialization = False
    s.max_iter = int(schedule["max_iter"])
    s.iter_size = int(schedule.get("iter_size", 1))
    s.display = int(schedule.get("display", 1))
    s.snapshot = int(schedule.get("snapshot", schedule["max_iter"]))
    s.snapshot_prefix = snapshot_prefix
    s.type = caffe_type
    s.base_lr = float(base_lr)
    digits_solver.set_lr_fields(s, lr_policy, lr_given)
    if digits_solver.uses_momentum(solver_type):   # Caffe refuses momentum for AdaGrad and RMSprop
        s.momentum = float(momentum)
    s.weight_decay = float(digits_solver.weight_decay(base_lr) if weight_decay is None else weight_decay)
    s.solver_mode = getattr(pb.SolverParameter, mode)
    if random_seed is not None:
        s.random_seed = int(random_seed)
    from google.protobuf import text_format

    write_text(out_path, "# written by thermalnet/nets.py write_solver(); iterations: %s\n%s"
               % (json.dumps(schedule, sort_keys=True), text_format.MessageToString(s)))
    return out_path


# -- Pretrained weights (Caffe's -weights) ---------------------------------------------------
# Caffe copies a caffemodel into a net layer by layer, BY NAME, and aborts the whole
# process (glog CHECK) when a same-named layer has another number of blobs or another
# blob shape. These functions read the file with protobuf and compare first, so a file
# that does not fit is a one-line WeightsError naming the file, the layer and both shapes.

class WeightsError(ValueError):
    """A pretrained caffemodel that is missing, unreadable or does not fit the network."""


def split_weights(weights) -> list:
    """Caffe's -weights list: "A.caffemodel,B.caffemodel" (or a list) -> [A, B]; None/"" -> []."""
    if not weights:
        return []
    items = weights.split(",") if isinstance(weights, str) else list(weights)
    return [w.strip() for w in items if w and w.strip()]


def _blob_shape(blob) -> Tuple[Tuple[int, ...], bool]:
    """A BlobProto's shape, and whether it is the legacy 4-d num/channels/height/width form."""
    if blob.HasField("shape"):
        return tuple(int(d) for d in blob.shape.dim), False
    if blob.HasField("num") or blob.HasField("channels") or blob.HasField("height") or blob.HasField("width"):
        return (int(blob.num), int(blob.channels), int(blob.height), int(blob.width)), True
    return (int(len(blob.data) or len(blob.double_data)),), False


def read_caffemodel(path: str) -> "collections.OrderedDict[str, list]":
    """Layer name -> [(shape, legacy)] for each blob of a binary .caffemodel (V1 `layers` too)."""
    from google.protobuf.message import DecodeError

    if not os.path.exists(path):
        raise WeightsError("%s: no such caffemodel" % path)
    if os.path.isdir(path):
        raise WeightsError("%s: is a folder, not a caffemodel" % path)
    if path.endswith(".h5"):
        raise WeightsError("%s: HDF5 weights are not supported here; give the binary .caffemodel" % path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise WeightsError("%s: cannot read caffemodel (%s)" % (path, exc.strerror or exc)) from None
    net = caffe_pb2().NetParameter()
    try:
        net.ParseFromString(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise WeightsError("%s: not a binary Caffe model (.caffemodel): %s"
                           % (path, str(exc).splitlines()[0] if str(exc) else "protobuf cannot decode it")) from None
    out = collections.OrderedDict()
    for layer in list(net.layer) + list(net.layers):
        if layer.blobs:
            out[layer.name] = [_blob_shape(b) for b in layer.blobs]
    if not out:
        raise WeightsError("%s: not a binary Caffe model with weights (no layer holds any blob)" % path)
    return out


def net_param_shapes(net_path: str) -> "collections.OrderedDict[str, list]":
    """Layer name -> blob shapes of a network's deploy stage (the layers that hold weights).

    Built by Caffe itself (channel counts follow from the graph), on the deploy stage so
    no LMDB is opened; the train and val stages of the kit's networks hold the same layers.
    """
    from thermalnet.caffe_env import import_caffe

    caffe = import_caffe()
    caffe.set_mode_cpu()
    load_net(net_path)                        # a bad prototxt is a one-line error, not a glog abort
    net = caffe.Net(net_path, caffe.TEST, stages=["deploy"])
    shapes = collections.OrderedDict((name, [tuple(b.data.shape) for b in blobs])
                                     for name, blobs in net.params.items())
    del net
    return shapes


def _fits(shape: Tuple[int, ...], legacy: bool, target: Tuple[int, ...]) -> bool:
    # Caffe's Blob::ShapeEquals: a legacy blob compares as 4-d, the target padded with leading 1s.
    if legacy:
        return len(target) <= 4 and (1,) * (4 - len(target)) + tuple(target) == tuple(shape)
    return tuple(shape) == tuple(target)


def _fmt_shape(shape) -> str:
    return "x".join(str(d) for d in shape) if shape else "scalar"


def check_weights(weights, net_path: str, target: Optional[Dict[str, list]] = None) -> Dict:
    """Check that each caffemodel loads by name into the network, as Caffe's -weights would.

    Returns {"files": [{"file", "copied": [layers], "ignored": [layers]}],
    "from_weights": [layers], "from_fillers": [layers]}; raises WeightsError (one line)
    on a missing/unreadable/foreign file, a file no layer of which has a name in the
    network, or a same-named layer whose blob count or shape differs.
    """
    files = split_weights(weights)
    target = net_param_shapes(net_path) if target is None else target
    report = {"files": [], "from_weights": [], "from_fillers": []}
    covered = set()
    for path in files:
        src = read_caffemodel(path)
        copied, ignored = [], []
        for name, blobs in src.items():
            if name not in target:
                ignored.append(name)
                continue
            want = target[name]
            if len(blobs) != len(want):
                raise WeightsError("%s: layer '%s' has %d blobs in the file but %d in %s"
                                   % (path, name, len(blobs), len(want), net_path))
            for i, ((shape, legacy), t) in enumerate(zip(blobs, want)):
                if not _fits(shape, legacy, t):
                    raise WeightsError("%s: layer '%s' blob %d (%s) has shape %s in the file but %s in %s"
                                       % (path, name, i, "weights" if i == 0 else "bias" if i == 1 else "param",
                                          _fmt_shape(shape), _fmt_shape(t), net_path))
            copied.append(name)
        if not copied:
            raise WeightsError("%s: none of its %d weight layers (%s...) has a name in %s; nothing would be copied"
                               % (path, len(src), ", ".join(list(src)[:3]), net_path))
        covered.update(copied)
        report["files"].append({"file": os.path.abspath(path), "copied": copied, "ignored": ignored})
    report["from_weights"] = [n for n in target if n in covered]
    report["from_fillers"] = [n for n in target if n not in covered]
    return report


# -- CLI ------------------------------------------------------------------------------------

def print_counts(names: Sequence[str], stream=None) -> Dict[str, Dict[str, int]]:
    """Instantiate each deploy net (random weights) and print its parameter budget."""
    stream = stream or sys.stdout
    from thermalnet.caffe_env import import_caffe

    caffe = import_caffe()
    caffe.set_mode_cpu()
    result = {}
    for name in names:
        info = network(name)
        net = caffe.Net(info.deploy, caffe.TEST)
        summary = count_summary(net)
        result[name] = summary
        want = SQUEEZENET_BODY_PARAMS[info.base]
        stream.write("%-13s body %9s (SqueezeNet %s without conv10: %s, %s)  %s %s  "
                     "upsampling %s (fixed)  total %s\n"
                     % (name, format(summary["body"], ","), info.base.replace("_", "."), format(want, ","),
                        "match" if summary["body"] == want else "MISMATCH",
                        SCORE_LAYER, format(summary["score"], ","), format(summary["upsample"], ","),
                        format(summary["total"], ",")))
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m thermalnet.nets",
        description="Thermalnet networks: parameter counts, binding a network to a dataset, resizing deploy.")
    parser.add_argument("--counts", action="store_true", help="print parameter counts of the networks")
    parser.add_argument("--net", choices=sorted(NETWORKS), action="append",
                        help="network(s) for --counts (default: all)")
    parser.add_argument("--materialize", nargs=2, metavar=("DATASET", "OUT"),
                        help="write the --net network (one) bound to DATASET's LMDBs to OUT")
    parser.add_argument("--batch-size", type=int, help="train batch size for --materialize")
    parser.add_argument("--val-batch-size", type=int, help="val batch size for --materialize")
    parser.add_argument("--check-weights", metavar="A.caffemodel[,B.caffemodel]",
                        help="say whether these caffemodels load by name into the --net network (one), "
                             "as tools.train --weights would copy them")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not (args.counts or args.materialize or args.check_weights):
        parser.error("nothing to do: give --counts, --materialize or --check-weights")
    names = args.net or [DEFAULT_NETWORK]
    if (args.materialize or args.check_weights) and len(names) != 1:
        parser.error("--materialize and --check-weights take one --net")
    from thermalnet import cli
    return cli.run(lambda: _main(args))


def _main(args) -> None:
    names = args.net or [DEFAULT_NETWORK]
    if args.counts:
        print_counts(args.net or sorted(NETWORKS))
    if args.materialize:
        print(materialize(network(names[0]).net, args.materialize[0], args.materialize[1],
                          args.batch_size, args.val_batch_size))
    if args.check_weights:
        fit = check_weights(args.check_weights, network(names[0]).net)
        for f in fit["files"]:
            print("%s: %d layers copied by name%s" % (f["file"], len(f["copied"]), "; not in the network: "
                                                      + ", ".join(f["ignored"]) if f["ignored"] else ""))
        print("%s: from the weights %d layers; from fillers: %s"
              % (names[0], len(fit["from_weights"]), ", ".join(fit["from_fillers"]) or "none"))


if __name__ == "__main__":
    sys.exit(main())
