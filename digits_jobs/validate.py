"""DIGITS' rules for a custom Caffe network, applied here, then checked in the real Caffe.

    python -m digits_jobs.validate prototxt/thermalnet_v1_1.prototxt --dataset DS [--out DIR]

DIGITS (6.x, digits/model/tasks/caffe_train.py, save_files_generic) does not run the
network file it is given. It splits it by NetState into three nets and writes its
own files into the job folder; a network that trains with `caffe train` can still
fail there, hours into a queue. This module reproduces that step so the failure
shows up here, with the layer named:

* train = phase TRAIN + stage "train", val = phase TEST + stage "val",
  deploy = phase TEST + stage "deploy" (Caffe's own NetState rules, including
  min/max level and not_stage).
* Layers whose type contains "Data" are data layers; only type Data is allowed for
  generic models. Their role comes from the top name: one containing "data" is the
  feature layer, else one containing "label" is the label layer. DIGITS rewrites
  them: type Data, include {phase} only, source = the dataset's LMDB, backend LMDB,
  batch_size = the job's (or the layer's, or 16), and on the *feature* layer only
  the mean (mean_file for "image", mean_value for "pixel") and crop_size. If the
  network has no such layer DIGITS silently adds one named data/label (batch 16).
* Input layers are dropped; the deploy net gets `input: "data"` with
  input_shape 1 x C x H x W (H x W = crop x crop when cropping).
* Every other layer goes into train_val (with an include {phase} rule when it is in
  only one of train/val) and, when included in the deploy state, into deploy with
  all rules removed.
* Each net must pass DIGITS' sanity check: every bottom produced at that phase.
* solver.prototxt: solver_type (the old enum), net: train_val.prototxt, snapshot
  prefix "snapshot", iter_size = batch accumulation, and DIGITS' arithmetic (epochs
  to iterations, intervals, lr policies, momentum, weight_decay, display) from
  thermalnet.solver, which the kit's trainer uses too.

On top of DIGITS' own checks the kit rejects what DIGITS lets through but breaks
later or silently: a loss layer left in deploy, a Python layer whose module is not
`digits_python_layers` (DIGITS saves the uploaded file under that name) or whose
class the file lacks, a missing explicit Data layer, transforms on the label layer,
crop/mirror on the feature layer only (labels would no longer line up), a deploy
without the kit's `prob` output, a relative mean_file DIGITS would keep.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from thermalnet import solver as digits_solver, cli, layout, spec
from thermalnet.solver import LR_POLICIES, SOLVER_TYPES
from thermalnet.atomic import atomic_dir
from thermalnet.caffe_env import PROTOTXT_DIR, caffe_pb2

# File names in a DIGITS model job folder (digits/model/tasks/caffe_train.py).
ORIGINAL_FILE = "original.prototxt"
TRAIN_VAL_FILE = "train_val.prototxt"
DEPLOY_FILE = "deploy.prototxt"
SOLVER_FILE = "solver.prototxt"
SNAPSHOT_PREFIX = "snapshot"
PYTHON_LAYER_FILE = "digits_python_layers.py"
PYTHON_MODULE = "digits_python_layers"
DIGITS_DEFAULT_BATCH_SIZE = 16          # digits/utils/constants.py
OUTPUT_BLOB = "prob"                    # the kit's deploy output (N, Q, H, W)
USE_MEAN = ("none", "image", "pixel")
STAGES = ("train", "val", "deploy")


class DigitsRuleError(ValueError):
    """A network DIGITS would refuse, or accept and then fail on; the message names the layer."""


# ---------------------------------------------------------------------------------
# Job settings and dataset facts (what DIGITS' form and dataset job provide)
# ---------------------------------------------------------------------------------
@dataclass
class JobSettings:
    """The model form's fields that shape the written files (digits/model/forms.py names)."""
    train_epochs: int = 30
    batch_size: Optional[int] = None
    batch_accumulation: Optional[int] = None
    learning_rate: float = 0.01
    solver_type: str = "SGD"
    lr_policy: Dict = field(default_factory=lambda: {"policy": "step", "stepsize": 33.0, "gamma": 0.1})
    use_mean: str = "image"
    crop_size: Optional[int] = None
    snapshot_interval: float = 1.0
    val_interval: float = 1.0
    random_seed: Optional[int] = None
    gpu: bool = True
    rms_decay: float = 0.99

    @classmethod
    def from_form(cls, form: Dict) -> "JobSettings":
        """Settings from the REST fields of POST /models/images/generic.json (strings or numbers)."""
        def num(key, kind, default=None):
            v = form.get(key)
            if v is None or v == "":
                return default
            try:
                return kind(v)
            except (TypeError, ValueError):
                raise DigitsRuleError("job field %s=%r is not a %s" % (key, v, kind.__name__))
        policy = str(form.get("lr_policy", "step"))
        lr = {"policy": policy}
        for name, key, default in digits_solver.LR_FORM_FIELDS.get(policy, ()):
            lr[name] = str(form.get(key, default)) if isinstance(default, str) else num(key, float, default)
        rates = str(form.get("learning_rate", "0.01")).split(",")
        batches = [b for b in str(form.get("batch_size", "") or "").split(",") if b.strip()]
        if len(rates) > 1 or len(batches) > 1:
            raise DigitsRuleError("learning_rate/batch_size sweeps make several DIGITS jobs; validate one value")
        s = cls(train_epochs=num("train_epochs", int, 30),
                batch_size=int(batches[0]) if batches else None,
                batch_accumulation=num("batch_accumulation", int),
                learning_rate=float(rates[0]),
                solver_type=str(form.get("solver_type", "SGD")),
                lr_policy=lr,
                use_mean=str(form.get("use_mean", "image")),
                crop_size=num("crop_size", int),
                snapshot_interval=num("snapshot_interval", float, 1.0),
                val_interval=num("val_interval", float, 1.0),
                random_seed=num("random_seed", int),
                rms_decay=num("rms_decay", float, 0.99))
        s.check()
        return s

    def check(self) -> None:
        if self.train_epochs < 1:
            raise DigitsRuleError("train_epochs must be >= 1 (DIGITS' NumberRange), got %d" % self.train_epochs)
        if self.batch_size is not None and self.batch_size < 1:
            raise DigitsRuleError("batch_size must be >= 1, got %d" % self.batch_size)
        if self.solver_type not in SOLVER_TYPES:
            raise DigitsRuleError("solver_type %r is not one of DIGITS' %s" % (self.solver_type, ", ".join(SOLVER_TYPES)))
        if self.lr_policy.get("policy") not in LR_POLICIES:
            raise DigitsRuleError("lr_policy %r is not one of %s" % (self.lr_policy.get("policy"), ", ".join(LR_POLICIES)))
        if self.use_mean not in USE_MEAN:
            raise DigitsRuleError("use_mean %r is not one of %s" % (self.use_mean, ", ".join(USE_MEAN)))
        if self.learning_rate < 0:
            raise DigitsRuleError("learning_rate must be >= 0, got %g" % self.learning_rate)


@dataclass
class DatasetFacts:
    """What DIGITS' dataset job knows: LMDB paths (as the server sees them), dims, entry counts."""
    height: int
    width: int
    channels: int
    train_count: int
    val_count: int
    train_images: str
    train_labels: str
    val_images: Optional[str]
    val_labels: Optional[str]
    mean_file: Optional[str]
    num_bins: int = spec.NUM_BINS
    class_weights: Optional[str] = None

    @classmethod
    def from_dataset_dir(cls, root: str, server_root: Optional[str] = None) -> "DatasetFacts":
        """Read a kit dataset folder like DIGITS' AnalyzeDbTask: first Datum's shape, entry counts.

        server_root: the same folder as the DIGITS server sees it (a container mount);
        the paths written into the nets use it, the facts come from `root`.
        """
        from thermalnet.lmdb_io import lmdb_count, read_lmdb

        info = layout.read_dataset_info(root)
        feats = os.path.join(root, layout.TRAIN_DB, layout.FEATURES)
        if not os.path.isdir(feats):
            raise FileNotFoundError("%s: missing training features LMDB" % feats)
        first = next(read_lmdb(feats), None)
        if first is None:
            raise ValueError("%s: the training features LMDB is empty" % feats)
        c, h, w = first[1].shape
        if (h, w) != (int(info.get("height", h)), int(info.get("width", w))):
            raise ValueError("%s says %sx%s but %s holds %dx%d Datums"
                             % (os.path.join(root, layout.DATASET_INFO_FILE), info.get("height"), info.get("width"), feats, h, w))
        srv = server_root or os.path.abspath(root)
        path = lambda *p: os.path.join(srv, *p)   # noqa: E731
        have = lambda *p: os.path.exists(os.path.join(root, *p))   # noqa: E731
        val_feats = os.path.join(root, layout.VAL_DB, layout.FEATURES)
        return cls(height=h, width=w, channels=c,
                   train_count=lmdb_count(feats),
                   val_count=lmdb_count(val_feats) if os.path.isdir(val_feats) else 0,
                   train_images=path(layout.TRAIN_DB, layout.FEATURES),
                   train_labels=path(layout.TRAIN_DB, layout.LABELS),
                   val_images=path(layout.VAL_DB, layout.FEATURES) if os.path.isdir(val_feats) else None,
                   val_labels=path(layout.VAL_DB, layout.LABELS) if have(layout.VAL_DB, layout.LABELS) else None,
                   mean_file=path(layout.TRAIN_DB, layout.MEAN_FILE) if have(layout.TRAIN_DB, layout.MEAN_FILE) else None,
                   num_bins=int(info.get("num_bins", spec.NUM_BINS)),
                   class_weights=path(layout.CLASS_WEIGHTS_FILE) if have(layout.CLASS_WEIGHTS_FILE) else None)

    @classmethod
    def nominal(cls, height: int = spec.DEFAULT_HEIGHT, width: int = spec.DEFAULT_WIDTH,
                train_count: int = spec.PAPER_TRAIN, val_count: int = spec.PAPER_TEST,
                root: str = "DATASET") -> "DatasetFacts":
        """Facts of a dataset that is not at hand (structure checks and solver arithmetic only)."""
        p = lambda *a: os.path.join(root, *a)   # noqa: E731
        return cls(height=height, width=width, channels=3, train_count=train_count, val_count=val_count,
                   train_images=p(layout.TRAIN_DB, layout.FEATURES), train_labels=p(layout.TRAIN_DB, layout.LABELS),
                   val_images=p(layout.VAL_DB, layout.FEATURES), val_labels=p(layout.VAL_DB, layout.LABELS),
                   mean_file=p(layout.TRAIN_DB, layout.MEAN_FILE), class_weights=p(layout.CLASS_WEIGHTS_FILE))


# ---------------------------------------------------------------------------------
# NetState filtering (Caffe's Net::FilterNet / StateMeetsRule, as DIGITS copies them)
# ---------------------------------------------------------------------------------
def parse_net(text: str, where: str = "network"):
    """Prototxt text -> NetParameter; a one-line error naming the file otherwise."""
    from google.protobuf import text_format
    net = caffe_pb2().NetParameter()
    try:
        text_format.Merge(text, net)
    except text_format.ParseError as exc:
        raise DigitsRuleError("%s: not a valid NetParameter (DIGITS answers 'Bad network'): %s" % (where, exc))
    return net


def net_state(stage: str):
    pb = caffe_pb2()
    state = pb.NetState()
    state.phase = pb.TRAIN if stage == "train" else pb.TEST
    state.stage.append(stage)
    return state


def state_meets_rule(state, rule) -> bool:
    if rule.HasField("phase") and rule.phase != state.phase:
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        return False
    if any(s not in state.stage for s in rule.stage):
        return False
    if any(s in state.stage for s in rule.not_stage):
        return False
    return True


def layer_included(layer, state) -> bool:
    """Caffe's rule: no include -> in unless an exclude matches; with includes -> in if one matches."""
    included = len(layer.include) == 0
    if any(state_meets_rule(state, r) for r in layer.exclude):
        included = False
    if any(state_meets_rule(state, r) for r in layer.include):
        included = True
    return included


def stages_of(layer) -> Tuple[str, ...]:
    return tuple(s for s in STAGES if layer_included(layer, net_state(s)))


def _set_phase_rule(layer, phase) -> None:
    layer.ClearField("include")
    layer.ClearField("exclude")
    if phase is not None:
        layer.include.add().phase = phase


def _is_data_type(layer) -> bool:
    return "Data" in layer.type


def split_by_state(net):
    """DIGITS' filterLayersByState after cleanedUpGenericNetwork: (data, train_val, deploy) layer lists.

    Refinement: DIGITS deletes Input layers while enumerating, which skips the layer
    after each one; here every Input layer is dropped (what the code means to do).
    """
    pb = caffe_pb2()
    data_layers, train_val, deploy = [], [], []
    for layer in net.layer:
        if _is_data_type(layer) and layer.type != "Data":
            raise DigitsRuleError("layer '%s': data layer type %s is not supported by DIGITS generic models "
                                  "(only Data: LMDBs the dataset job provides)" % (layer.name, layer.type))
        if layer.type == "Input":
            continue
        if layer.type == "InnerProduct" and not layer.inner_product_param.HasField("num_output"):
            raise DigitsRuleError("layer '%s': InnerProduct without num_output (DIGITS refuses it in generic nets)"
                                  % layer.name)
        in_train = layer_included(layer, net_state("train"))
        in_val = layer_included(layer, net_state("val"))
        in_deploy = layer_included(layer, net_state("deploy"))
        phase = None
        if not in_train:
            phase = pb.TEST
        elif not in_val:
            phase = pb.TRAIN
        if _is_data_type(layer):
            copy = pb.LayerParameter()
            copy.CopyFrom(layer)
            _set_phase_rule(copy, phase)
            data_layers.append((layer, copy))
            continue
        if in_train or in_val:
            copy = pb.LayerParameter()
            copy.CopyFrom(layer)
            _set_phase_rule(copy, phase)
            train_val.append(copy)
        if in_deploy:
            copy = pb.LayerParameter()
            copy.CopyFrom(layer)
            _set_phase_rule(copy, None)
            deploy.append(copy)
    return data_layers, train_val, deploy


def find_data_layers(data_layers) -> Dict[Tuple[str, str], object]:
    """{(phase 'train'|'val', role 'data'|'label'): original layer}, DIGITS' top-name matching."""
    pb = caffe_pb2()
    found: Dict[Tuple[str, str], object] = {}
    for orig, copy in data_layers:
        if len(copy.include) == 0:
            raise DigitsRuleError("layer '%s': Data layer included in both train and val; DIGITS takes a Data "
                                  "layer only when it is limited to one phase (include { stage: \"train\" } "
                                  "or { stage: \"val\" }) and would drop it for default layers" % orig.name)
        phase = "train" if copy.include[0].phase == pb.TRAIN else "val"
        if len(orig.top) != 1:
            raise DigitsRuleError("layer '%s': a generic dataset has separate feature and label LMDBs, so each "
                                  "Data layer has exactly one top (got %s)" % (orig.name, list(orig.top)))
        top = orig.top[0]
        role = "data" if "data" in top else "label" if "label" in top else None
        if role is None:
            raise DigitsRuleError("layer '%s': top '%s' contains neither 'data' nor 'label'; DIGITS would "
                                  "ignore this Data layer" % (orig.name, top))
        if (phase, role) in found:
            raise DigitsRuleError("layers '%s' and '%s': two %s %s Data layers (DIGITS: 'cannot specify two "
                                  "%s %s data layers')" % (found[(phase, role)].name, orig.name, phase,
                                                           "image" if role == "data" else "label", phase,
                                                           "image" if role == "data" else "label"))
        found[(phase, role)] = orig
    return found


# ---------------------------------------------------------------------------------
# The kit's extra rules (what DIGITS lets through but breaks later)
# ---------------------------------------------------------------------------------
def _python_layer_classes(path: str) -> Optional[set]:
    """Class names defined at the top of the Python-layer file (parsed, not imported)."""
    import ast
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    return {n.name for n in tree.body if isinstance(n, ast.ClassDef)}


def is_loss_layer(layer) -> bool:
    """Loss by type (Caffe's *Loss layers), or a Python layer with loss_weight (how Caffe sees it)."""
    return layer.type.endswith("Loss") or (layer.type == "Python" and any(w != 0 for w in layer.loss_weight))


def kit_checks(net, settings: JobSettings, python_layer_file: Optional[str]) -> None:
    """Rules beyond DIGITS' own asserts; each raises DigitsRuleError naming the layer."""
    classes = _python_layer_classes(python_layer_file) if python_layer_file else None
    for layer in net.layer:
        where = stages_of(layer)
        if layer.type == "Python":
            mod = layer.python_param.module
            if mod != PYTHON_MODULE:
                raise DigitsRuleError("layer '%s': python_param.module is '%s'; DIGITS saves the uploaded "
                                      "Python-layer file as %s, so the module must be '%s'"
                                      % (layer.name, mod, PYTHON_LAYER_FILE, PYTHON_MODULE))
            if classes is not None and layer.python_param.layer not in classes:
                raise DigitsRuleError("layer '%s': python_param.layer '%s' is not a class of %s (it has %s)"
                                      % (layer.name, layer.python_param.layer, python_layer_file,
                                         ", ".join(sorted(classes)) or "none"))
            ps = layer.python_param.param_str
            if ps.strip():
                try:
                    json.loads(ps)
                except ValueError as exc:
                    raise DigitsRuleError("layer '%s': param_str is not JSON (%s): %r" % (layer.name, exc, ps))
        if is_loss_layer(layer) and "deploy" in where:
            raise DigitsRuleError("layer '%s' (%s) is a loss but is in the deploy net too: its bottoms (the "
                                  "label) do not exist there; add exclude { stage: \"deploy\" }"
                                  % (layer.name, layer.type))
        if layer.type == "Data":
            top = layer.top[0] if len(layer.top) == 1 else ""
            tp = layer.transform_param
            if "label" in top and "data" not in top:
                bad = [f for f in ("mean_file", "crop_size", "mirror", "scale") if tp.HasField(f)]
                if tp.mean_value:
                    bad.append("mean_value")
                if bad:
                    raise DigitsRuleError("layer '%s': transform_param %s on the label layer: labels are bin "
                                          "indices and must stay as stored" % (layer.name, ", ".join(bad)))
            elif "data" in top:
                if tp.mirror:
                    raise DigitsRuleError("layer '%s': mirror: true flips the features but not the labels "
                                          "(two Data layers draw independently)" % layer.name)
                if tp.HasField("crop_size") or settings.crop_size:
                    raise DigitsRuleError("layer '%s': crop_size crops the features (DIGITS applies it to the "
                                          "layer named by role 'data' only) but not the labels" % layer.name)
                if settings.use_mean == "none" and tp.HasField("mean_file") and not os.path.isabs(tp.mean_file):
                    raise DigitsRuleError("layer '%s': with Subtract Mean = none DIGITS keeps mean_file '%s', "
                                          "a relative path that does not exist in the job folder; use "
                                          "use_mean=image" % (layer.name, tp.mean_file))


def _sanity_check(layers: Sequence, inputs: Sequence[str], stage: str) -> None:
    """DIGITS' net_sanity_check, made as strict as Caffe: each bottom made by an EARLIER layer.

    Refinement: DIGITS accepts a bottom that any layer of the net makes, including the
    layer's own in-place top (ReLU conv1 -> conv1) or a later layer; Caffe then fails
    with "Unknown bottom blob". Checking in order catches that here.
    """
    made = set(inputs)
    for layer in layers:
        for bottom in layer.bottom:
            if bottom not in made:
                raise DigitsRuleError("layer '%s' references bottom '%s', which no earlier layer of the %s net "
                                      "makes (limit the layers with include/exclude stages)"
                                      % (layer.name, bottom, stage))
        made.update(layer.top)


# ---------------------------------------------------------------------------------
# The files DIGITS writes
# ---------------------------------------------------------------------------------
def mean_pixel(mean_file: str, channels: int, height: int, width: int) -> List[float]:
    """DIGITS' get_mean_pixel: the mean image (reshaped to C x H x W) averaged over H and W."""
    blob = caffe_pb2().BlobProto()
    with open(mean_file, "rb") as f:
        blob.ParseFromString(f.read())
    arr = np.asarray(blob.data, dtype=np.float64)
    if arr.size != channels * height * width:
        raise DigitsRuleError("%s: %d values, the dataset's images are %dx%dx%d"
                              % (mean_file, arr.size, channels, height, width))
    return [float(v) for v in arr.reshape(channels, height, width).mean(axis=(1, 2))]


def _make_data_layer(orig, db_path: str, role: str, phase_name: str, settings: JobSettings,
                     ds: DatasetFacts, mean_lookup: Optional[str]):
    """DIGITS' make_generic_data_layer."""
    pb = caffe_pb2()
    layer = pb.LayerParameter()
    if orig is not None:
        layer.CopyFrom(orig)
    layer.type = "Data"
    if not layer.name:
        layer.name = role
    if not len(layer.top):
        layer.top.append(role)
    _set_phase_rule(layer, pb.TRAIN if phase_name == "train" else pb.TEST)
    layer.data_param.source = db_path
    layer.data_param.backend = pb.DataParameter.LMDB
    if not layer.data_param.HasField("batch_size"):
        layer.data_param.batch_size = DIGITS_DEFAULT_BATCH_SIZE
    if settings.batch_size:
        layer.data_param.batch_size = settings.batch_size
    if role == "data" and ds.mean_file:
        if settings.use_mean in ("pixel", "image"):
            layer.transform_param.ClearField("mean_file")
            layer.transform_param.ClearField("mean_value")
        if settings.use_mean == "pixel":
            src = mean_lookup or ds.mean_file
            layer.transform_param.mean_value.extend(mean_pixel(src, ds.channels, ds.height, ds.width))
        elif settings.use_mean == "image":
            layer.transform_param.mean_file = ds.mean_file
    if role == "data" and settings.crop_size:
        if settings.crop_size > min(ds.height, ds.width):
            raise DigitsRuleError("crop_size %d is larger than the image size %dx%d"
                                  % (settings.crop_size, ds.height, ds.width))
        layer.transform_param.crop_size = settings.crop_size
    return layer


@dataclass
class DigitsFiles:
    original: object
    train_val: object
    deploy: object
    solver: object
    train_batch: int
    val_batch: Optional[int]
    notes: List[str]

    def texts(self) -> Dict[str, str]:
        from google.protobuf import text_format
        return {ORIGINAL_FILE: text_format.MessageToString(self.original),
                TRAIN_VAL_FILE: text_format.MessageToString(self.train_val),
                DEPLOY_FILE: text_format.MessageToString(self.deploy),
                SOLVER_FILE: text_format.MessageToString(self.solver)}


def digits_files(net_text: str, ds: DatasetFacts, settings: Optional[JobSettings] = None,
                 python_layer_file: Optional[str] = os.path.join(PROTOTXT_DIR, PYTHON_LAYER_FILE),
                 where: str = "network", mean_lookup: Optional[str] = None) -> DigitsFiles:
    """The original/train_val/deploy/solver DIGITS would write for this network and dataset.

    mean_lookup: a local copy of the mean file when ds.mean_file is a server path
    (needed only for use_mean="pixel", which DIGITS computes from the file).
    """
    pb = caffe_pb2()
    settings = settings or JobSettings()
    settings.check()
    net = parse_net(net_text, where)
    original = pb.NetParameter()
    original.CopyFrom(net)
    kit_checks(net, settings, python_layer_file)
    data_layers, train_val_layers, deploy_layers = split_by_state(net)
    found = find_data_layers(data_layers)
    notes = []
    for key in (("train", "data"), ("train", "label"), ("val", "data"), ("val", "label")):
        if key not in found:
            raise DigitsRuleError("%s: no %s Data layer whose top names '%s' (DIGITS would add a default one "
                                  "named '%s' with batch %d; the kit's nets declare their own)"
                                  % (where, key[0], key[1], key[1], DIGITS_DEFAULT_BATCH_SIZE))
    train_val = pb.NetParameter()
    made = {}
    for phase_name, role, db in (("train", "data", ds.train_images), ("train", "label", ds.train_labels),
                                 ("val", "data", ds.val_images), ("val", "label", ds.val_labels)):
        if db is None:          # DIGITS: no such DB in the dataset -> no layer
            notes.append("dataset has no %s %s LMDB: DIGITS leaves that Data layer out" % (phase_name, role))
            continue
        layer = _make_data_layer(found[(phase_name, role)], db, role, phase_name, settings, ds, mean_lookup)
        train_val.layer.add().CopyFrom(layer)
        made[(phase_name, role)] = layer
    train_val.layer.extend(train_val_layers)
    has_val = ("val", "data") in made
    by_phase = {"train": [], "val": []}
    for layer in train_val.layer:
        ph = None if not len(layer.include) else ("train" if layer.include[0].phase == pb.TRAIN else "val")
        for name in ("train", "val"):
            if ph in (None, name):
                by_phase[name].append(layer)
    _sanity_check(by_phase["train"], [], "train")
    if has_val:
        _sanity_check(by_phase["val"], [], "val")

    deploy = pb.NetParameter()
    deploy.input.append("data")
    shape = deploy.input_shape.add()
    crop = made[("train", "data")].transform_param.crop_size if \
        made[("train", "data")].transform_param.HasField("crop_size") else None
    shape.dim.extend([1, ds.channels, crop or ds.height, crop or ds.width])
    deploy.layer.extend(deploy_layers)
    _sanity_check(deploy.layer, ["data"], "deploy")
    if not any(OUTPUT_BLOB in layer.top for layer in deploy.layer):
        raise DigitsRuleError("%s: the deploy net has no layer with top '%s' (the kit reads per-pixel bin "
                              "probabilities from it; add a Softmax limited to stage deploy)" % (where, OUTPUT_BLOB))

    train_batch = made[("train", "data")].data_param.batch_size
    val_batch = made[("val", "data")].data_param.batch_size if has_val else None
    solver = _solver(settings, ds, train_batch, val_batch)
    return DigitsFiles(original, train_val, deploy, solver, train_batch, val_batch, notes)


def _solver(settings: JobSettings, ds: DatasetFacts, train_batch: int, val_batch: Optional[int]):
    """save_files_generic's solver, field by field in DIGITS' order; the numbers from thermalnet.solver."""
    pb = caffe_pb2()
    s = pb.SolverParameter()
    s.solver_type = getattr(pb.SolverParameter, settings.solver_type)
    s.net = TRAIN_VAL_FILE
    s.solver_mode = pb.SolverParameter.GPU if settings.gpu else pb.SolverParameter.CPU
    s.snapshot_prefix = SNAPSHOT_PREFIX
    if settings.batch_accumulation:
        s.iter_size = settings.batch_accumulation
    train_iter = digits_solver.iters_per_epoch(ds.train_count, train_batch, s.iter_size)
    s.max_iter = digits_solver.max_iter(train_iter, settings.train_epochs)
    s.snapshot = digits_solver.snapshot_interval(settings.snapshot_interval, train_iter, s.max_iter)
    if val_batch:
        s.test_iter.append(digits_solver.val_iters(ds.val_count, val_batch))
        s.test_interval = digits_solver.val_interval(settings.val_interval, train_iter, s.max_iter)
    s.base_lr = settings.learning_rate
    p = settings.lr_policy
    digits_solver.set_lr_fields(s, p["policy"], p)
    if digits_solver.uses_momentum(settings.solver_type):
        s.momentum = digits_solver.MOMENTUM
    s.weight_decay = digits_solver.weight_decay(s.base_lr)
    s.display = digits_solver.display_interval(s.max_iter, settings.train_epochs, train_batch, s.iter_size)
    if settings.random_seed is not None:
        s.random_seed = settings.random_seed
    return s


def _class_weights_params(net):
    """(layer, param_str JSON) of each Python layer whose param_str names a class_weights file."""
    for layer in net.layer:
        if layer.type != "Python" or not layer.python_param.param_str.strip():
            continue
        try:
            params = json.loads(layer.python_param.param_str)
        except ValueError:
            continue
        if isinstance(params, dict) and isinstance(params.get("class_weights"), str):
            yield layer, params


def class_weights_files(net_text: str, where: str = "network") -> Dict[str, str]:
    """Layer name -> the class_weights path its param_str names (as written: relative or absolute)."""
    return {layer.name: params["class_weights"] for layer, params in _class_weights_params(parse_net(net_text, where))}


def rewrite_class_weights(net_text: str, class_weights_path: str) -> str:
    """Point the loss layers' relative class_weights at an absolute path (the job folder has none).

    DIGITS runs Caffe in the job folder, where a relative class_weights.txt does not
    exist; the Python layer would then try $THERMALNET_DATASET. Writing the server's
    absolute path into param_str removes that dependence. The one place the kit does
    this for DIGITS: the run flow (custom network) and the upload flow (pretrained archive).
    """
    from google.protobuf import text_format
    net = parse_net(net_text)
    changed = False
    for layer, params in _class_weights_params(net):
        if not os.path.isabs(params["class_weights"]):
            params["class_weights"] = class_weights_path
            layer.python_param.param_str = json.dumps(params, sort_keys=True)
            changed = True
    return text_format.MessageToString(net) if changed else net_text


def write_job_dir(files: DigitsFiles, out_dir: str, python_layer_file: Optional[str]) -> str:
    """Write the four prototxt files (+ the Python layer) like a DIGITS job folder; atomically."""
    out_dir = os.path.abspath(out_dir)
    with atomic_dir(out_dir) as tmp:   # swapped in whole, or deleted (thermalnet.atomic)
        for name, text in files.texts().items():
            with open(os.path.join(tmp, name), "w") as f:
                f.write(text)
        if python_layer_file:
            shutil.copyfile(python_layer_file, os.path.join(tmp, PYTHON_LAYER_FILE))
    return out_dir


@contextlib.contextmanager
def _in_dir(path: str):
    """cwd and sys.path as DIGITS runs Caffe: in the job folder, its Python layer importable."""
    old = os.getcwd()
    sys.path.insert(0, path)
    stale = sys.modules.pop(PYTHON_MODULE, None)
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)
        sys.path.remove(path)
        sys.modules.pop(PYTHON_MODULE, None)
        if stale is not None:
            sys.modules[PYTHON_MODULE] = stale


def instantiate(job_dir: str, caffe, num_bins: int) -> Dict:
    """Load the written files in the real Caffe and run one forward pass of each net.

    solver.prototxt through caffe.get_solver (so Caffe itself parses and upgrades the
    solver and builds train + val nets from train_val.prototxt), one forward of the
    train net and of the val net on the LMDBs, and deploy with a random input:
    'prob' must be (1, Q, H, W) with each pixel's probabilities summing to 1.
    """
    caffe.set_mode_cpu()
    out: Dict = {}
    with _in_dir(job_dir):
        solver = caffe.get_solver(SOLVER_FILE)
        train_out = solver.net.forward()
        out["train_outputs"] = {k: float(np.asarray(v).ravel()[0]) for k, v in train_out.items()}
        out["train_blobs"] = {k: tuple(v.data.shape) for k, v in solver.net.blobs.items()}
        if len(solver.test_nets):
            val_out = solver.test_nets[0].forward()
            out["val_outputs"] = {k: float(np.asarray(v).ravel()[0]) for k, v in val_out.items()}
        for name, val in list(out.get("train_outputs", {}).items()) + list(out.get("val_outputs", {}).items()):
            if not np.isfinite(val):
                raise DigitsRuleError("%s: output '%s' is %r after one forward pass" % (job_dir, name, val))
        del solver
        deploy = caffe.Net(DEPLOY_FILE, caffe.TEST)
        data = deploy.blobs["data"]
        rng = np.random.RandomState(spec.SEED)
        data.data[...] = rng.uniform(-128, 128, size=data.data.shape)
        res = deploy.forward()
        if OUTPUT_BLOB not in deploy.blobs:
            raise DigitsRuleError("%s: deploy net has no blob '%s'" % (job_dir, OUTPUT_BLOB))
        prob = deploy.blobs[OUTPUT_BLOB].data
        want = (data.data.shape[0], num_bins) + tuple(data.data.shape[2:])
        if tuple(prob.shape) != want:
            raise DigitsRuleError("%s: deploy '%s' is %s, the kit needs %s (N, Q, H, W at the input size)"
                                  % (job_dir, OUTPUT_BLOB, tuple(prob.shape), want))
        sums = prob.sum(axis=1)
        if not np.allclose(sums, 1.0, atol=1e-4):
            raise DigitsRuleError("%s: deploy '%s' does not sum to 1 over the %d bins (max error %.3g)"
                                  % (job_dir, OUTPUT_BLOB, num_bins, float(np.abs(sums - 1).max())))
        out["deploy_input"] = tuple(data.data.shape)
        out["deploy_prob"] = tuple(prob.shape)
        out["deploy_outputs"] = sorted(res)
    return out


def validate(net_path: str, dataset: Optional[str] = None, out: Optional[str] = None,
             settings: Optional[JobSettings] = None, run_caffe: bool = True,
             python_layer_file: str = os.path.join(PROTOTXT_DIR, PYTHON_LAYER_FILE)) -> Dict:
    """Apply DIGITS' rules to a network file; with a dataset, write the job files and run them in Caffe."""
    if not os.path.isfile(net_path):
        raise FileNotFoundError("%s: no such network prototxt" % net_path)
    with open(net_path) as f:
        text = f.read()
    ds = DatasetFacts.from_dataset_dir(dataset) if dataset else DatasetFacts.nominal()
    if ds.class_weights and dataset:
        text = rewrite_class_weights(text, ds.class_weights)
    try:
        files = digits_files(text, ds, settings, python_layer_file, where=net_path)
    except DigitsRuleError as exc:
        msg = str(exc)
        raise DigitsRuleError(msg if msg.startswith(net_path) else "%s: %s" % (net_path, msg)) from None
    report = {"net": net_path, "dataset": dataset, "train_batch": files.train_batch, "val_batch": files.val_batch,
              "max_iter": files.solver.max_iter, "test_iter": list(files.solver.test_iter),
              "weight_decay": files.solver.weight_decay, "momentum": files.solver.momentum,
              "deploy_input": list(files.deploy.input_shape[0].dim), "notes": files.notes,
              "layers": {"train_val": len(files.train_val.layer), "deploy": len(files.deploy.layer)}}
    if dataset:
        job_dir = out or tempfile.mkdtemp(prefix="digits-job-")
        write_job_dir(files, job_dir, python_layer_file)
        report["job_dir"] = os.path.abspath(job_dir)
        if run_caffe:
            from thermalnet.caffe_env import import_caffe
            try:
                report["caffe"] = instantiate(job_dir, import_caffe(), ds.num_bins)
            finally:
                if out is None:
                    shutil.rmtree(job_dir, ignore_errors=True)
                    report.pop("job_dir")
    return report


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m digits_jobs.validate",
        description="Apply NVIDIA DIGITS' custom-network rules (split by NetState, DIGITS' Data layers, "
                    "deploy input, solver arithmetic) to a Caffe all-in-one network; with --dataset write the "
                    "train_val/deploy/solver files DIGITS would write and run them in the real Caffe.")
    p.add_argument("nets", nargs="+", metavar="NET.prototxt", help="all-in-one network(s) to check")
    p.add_argument("--dataset", help="dataset folder (dataset.json, train_db/, val_db/): dims, counts, LMDB paths")
    p.add_argument("--out", help="write the job files here (one net only); default: a temporary folder")
    p.add_argument("--job", help="model job JSON (digits_jobs/jobs/model_*.json) whose form fields to apply")
    p.add_argument("--epochs", type=int, help="override train_epochs")
    p.add_argument("--batch-size", type=int, help="override batch_size")
    p.add_argument("--no-caffe", action="store_true", help="rules only; do not instantiate in Caffe")
    return p


def settings_from_job(path: Optional[str], epochs: Optional[int], batch: Optional[int]) -> JobSettings:
    """The form fields of a model job JSON (+ overrides); a bad file is one error naming it."""
    from digits_jobs.jobdefs import load_job
    form: Dict = dict(load_job(path)["form"]) if path else {}
    if epochs is not None:
        form["train_epochs"] = epochs
    if batch is not None:
        form["batch_size"] = batch
    try:
        return JobSettings.from_form(form)
    except DigitsRuleError as exc:
        raise DigitsRuleError("%s: %s" % (path, exc) if path else str(exc)) from None


def main(argv=None) -> int:
    """Exit 0 every network passes, 1 one is REJECTED (a line each, naming the file and the
    layer) or the job file is bad (one line `error: ...`), 2 argparse usage errors."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.out and len(args.nets) > 1:
        parser.error("--out takes one network")
    return cli.run(lambda: _validate_all(args))


def _validate_all(args: argparse.Namespace) -> int:
    settings = settings_from_job(args.job, args.epochs, args.batch_size)
    status = 0
    for net in args.nets:
        try:
            r = validate(net, args.dataset, args.out, JobSettings(**vars(settings)), run_caffe=not args.no_caffe)
        except (DigitsRuleError, OSError, ValueError) as exc:
            print("REJECTED %s" % exc)
            status = 1
            continue
        line = ("OK %s: train_val %d layers (batch %s/%s), deploy %d layers input %s, max_iter %d, "
                "test_iter %s, weight_decay %g"
                % (net, r["layers"]["train_val"], r["train_batch"], r["val_batch"], r["layers"]["deploy"],
                   "x".join(str(d) for d in r["deploy_input"]), r["max_iter"], r["test_iter"], r["weight_decay"]))
        print(line)
        if "caffe" in r:
            c = r["caffe"]
            print("   caffe: train %s, val %s, deploy %s -> prob %s"
                  % (_fmt(c.get("train_outputs")), _fmt(c.get("val_outputs")),
                     "x".join(map(str, c["deploy_input"])), "x".join(map(str, c["deploy_prob"]))))
        if r.get("job_dir"):
            print("   files: %s" % r["job_dir"])
        for n in r["notes"]:
            print("   note: %s" % n)
    return status


def _fmt(d: Optional[Dict]) -> str:
    return ", ".join("%s=%.4g" % kv for kv in sorted(d.items())) if d else "-"


if __name__ == "__main__":
    sys.exit(main())
