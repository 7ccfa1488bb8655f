"""Paper-fidelity register: every claim of Kniaz et al. 2017 and every assumption of the kit, checked on artifacts.

    python -m tools.fidelity RUN_OR_DATASET [--net PROTOTXT] [--deploy PROTOTXT] [--json OUT] [--strict]

A reviewer asks two questions of a reproduction: does it do what the paper says, and
what did it have to guess? REGISTER answers both, one row per claim or assumption,
each with where it lives in the kit and a check that reads the ARTIFACTS of a run (the
train_val.prototxt the run trained, its solver.prototxt, train_summary.json, the
dataset's LMDB counts and dataset.json, eval.json / per_image.csv) or, given a dataset
folder, the default network on that dataset. Networks are parsed, never looked up by
layer name: Deconvolution layers by type, the score layer as the producer of the first
deconvolution's input, fire modules by their squeeze -> expand 1x1 + 3x3 -> Concat shape;
output sizes and parameter counts come from the real Caffe (in a child process, so a
broken network cannot abort the caller).

Status: PASS (the artifact agrees with the paper), FAIL (it does not, with the evidence),
ASSUMED (the paper is silent; the kit's choice, the value read from the artifact and the
measurement behind the choice), NOT RUN (cannot be checked from these artifacts, and why).

A third kind of row, `result`, holds the paper's FINDINGS (Table 2's relations, Sec. 5.1's
high-frequency components, Sec. 5.2, the final loss): the paper's value, the run's value,
the tolerance written in the row (thermalnet.findings) and REPRODUCED / NOT REPRODUCED /
NOT RUN / NOT COMPARABLE (a value that depends on the paper's own data or unknown units),
each saying whether it is a relation within one run or an absolute value.

REGISTER is the one table to extend: add an Item and, if it needs a new check, a
function `check_<name>(ctx) -> (status, evidence)`. The "behind" text of assumptions
says what measurement (docs/ablations.md, results/ablate/) or reason supports the choice.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from thermalnet import findings, layout, metrics, nets, spec

PASS, FAIL, ASSUMED, NOT_RUN = "PASS", "FAIL", "ASSUMED", "NOT RUN"
STATUSES = (PASS, FAIL, ASSUMED, NOT_RUN) + tuple(s for s in findings.STATUSES if s != NOT_RUN)

# kind: "claim" (the paper says so), "assumption" (the paper is silent; the kit chose) or
# "result" (a finding of the paper, checked against the run's numbers).
# check: name of a function check_<check>(ctx) in this module; a result's returns
# (status, evidence, run's value).
# behind: for assumptions, the measurement (or reason) behind the choice; for results, which
# reading of the paper gives the finding (README "Ablations").
# Results only: paper_value, tolerance, comparable ("relation within one run" or "absolute value").
Item = collections.namedtuple("Item", "key kind statement paper where check behind paper_value tolerance comparable",
                              defaults=("", "", ""))
RELATION, ABSOLUTE = "relation within one run", "absolute value"


def _paper_values(values: Dict[str, float], fmt: str) -> str:
    return ", ".join("%s %s" % (c.replace("_", " "), fmt % v) for c, v in values.items())

# Which reading of the paper gives its findings (measured: README "Ablations", results/ablate/).
GS_GAIN_BEHIND = (
    "per-pixel sampling from the predicted distribution at T 0.5 (--decoding sample --temperature 0.5; ablation "
    "arm h-sample-t0.5): GS gain 24.8 / 21.1 / 25.7 % and HF 18x the real IR's on SYNTHETIC pairs (2000 "
    "iterations), 18.9 % and HF 4.3x on RoadScene (2500 iterations), at RMS 39.1 against the default's 26.6 "
    "(SYNTHETIC); the default mmse estimate (0.1 %, HF 0.27), argmax at Q 32 and 8, DIGITS' segmentation view, "
    "learned kernel = stride deconvolutions and the sigmoid loss do not give it (docs/ablations.md, 'Which reading "
    "of the paper gives its findings'; results/ablate/hypotheses-*)")

REGISTER: Tuple[Item, ...] = (
    # ---- claims of the paper ----------------------------------------------------------------
    Item("table1_sizes", "claim", "FLIR ONE pairs: visible 640x480, infrared 160x120", "Table 1",
         "thermalnet/spec.py FLIR_ONE_*; manifest.csv vis_h/vis_w/ir_h/ir_w", "table1_sizes", ""),
    Item("table2_classes", "claim", "Test objects: human, microwave oven, computer", "Table 2",
         "thermalnet/spec.py OBJECT_CLASSES; dataset.json class_counts", "table2_classes", ""),
    Item("squeezenet_fire", "claim", "SqueezeNet body built of fire modules (8, as in SqueezeNet)", "Sec. 3.2",
         "prototxt/thermalnet_*.prototxt", "fire_modules", ""),
    Item("squeezenet_body", "claim", "The SqueezeNet body is unchanged (parameter count of SqueezeNet minus its "
         "classifier)", "Sec. 3.2", "prototxt/thermalnet_*.prototxt; thermalnet/nets.py SQUEEZENET_BODY_PARAMS",
         "body_params", ""),
    Item("avgpool_removed", "claim", "Global average pooling removed", "Sec. 3.2", "prototxt/thermalnet_*.prototxt",
         "no_global_pool", ""),
    Item("two_deconv", "claim", "Two deconvolution layers restore the input resolution", "Sec. 3.2",
         "prototxt/thermalnet_*.prototxt (Deconvolution layers)", "two_deconv", ""),
    Item("output_size", "claim", "Output size = input size (H x W)", "Sec. 3.1",
         "prototxt/*.prototxt Crop layer; checked in Caffe", "output_size", ""),
    Item("eq1_loss", "claim", "Eq. 1: per-pixel multinomial cross-entropy weighted by v(Y)", "Sec. 3.1, eq. 1",
         "prototxt/digits_python_layers.py WeightedSoftmaxLoss; class_weights.txt", "eq1_loss", ""),
    Item("split_1000_100", "claim", "1000 training pairs, 100 test pairs", "Sec. 4.1, 5.1",
         "thermalnet/spec.py PAPER_TRAIN/PAPER_TEST; train_db/, val_db/", "split", ""),
    Item("epochs_1000", "claim", "Trained for 1000 epochs", "Sec. 5", "tools/train.py; train_summary.json",
         "epochs", ""),
    Item("digits_titanx", "claim", "Trained in NVIDIA DIGITS on a Titan X (Pascal) GPU", "Sec. 3.3, 5",
         "digits_jobs/; tools/train.py --gpu", "digits", ""),
    Item("eq2_rms", "claim", "Eq. 2 RMS of brightness, averaged per object class", "Sec. 5.1, eq. 2, Table 2",
         "thermalnet/spec.py rms; tools/evaluate.py", "eq2_rms", ""),
    Item("gaussian_3x3", "claim", "TN + GS: 3x3 Gaussian smoothing", "Table 2", "thermalnet/postprocess.py gaussian3x3",
         "gaussian_3x3", ""),
    Item("gatys_vgg16", "claim", "TN + PP: Gatys style reconstruction with VGG-16, the real IR image as style",
         "Sec. 3.4, 5.2", "thermalnet/gatys.py; tools/evaluate.py --vgg-weights", "gatys", ""),
    # ---- assumptions of the kit ---------------------------------------------------------------
    Item("q_bins", "assumption", "Q thermal bins (the paper does not give Q)", "—",
         "thermalnet/spec.py NUM_BINS; score layer num_output", "q_bins", "Q = 32: the quantisation alone costs 8/sqrt(12) = 2.3 RMS; measured Q 16 / 32 / 64: 26.3 / 26.0 / 25.7 RMS (SSIM 0.816 / 0.822 / 0.820), SYNTHETIC 1100 pairs, 2000 iterations each (docs/ablations.md)"),
    Item("lambda", "assumption", "v(Y): Zhang et al.'s rebalancing, lambda (paper: v(Y) without values)", "—",
         "thermalnet/spec.py REBALANCE_LAMBDA; dataset.json lambda", "rebalance_lambda", "lambda 0.5 (Zhang et al.'s value); measured lambda 0 / 0.5 / 1: 26.6 / 26.0 / 26.2 RMS (SSIM 0.826 / 0.822 / 0.819), SYNTHETIC 1100 pairs, 2000 iterations each (docs/ablations.md); the mmse decoding divides v(Y) back out"),
    Item("input_size", "assumption", "Network input size (the paper does not give it)", "—",
         "thermalnet/spec.py DEFAULT_HEIGHT/WIDTH, PAPER_HEIGHT/WIDTH; dataset.json", "input_size", "datasets 120x160 by default (FLIR ONE's IR resolution, Table 1; about a third of the cost of 240x320 per image); make demo at 240x320 (tools/demo.py DEMO_HEIGHT/WIDTH): measured at 2000 iterations 26.0 (120x160) against 23.5 RMS (240x320), SSIM above every baseline in every class at 240x320, and the objects' shapes drawn (results/ablate/size-240x320/)"),
    Item("squeezenet_version", "assumption", "SqueezeNet version (the paper does not say v1.0 or v1.1)", "—",
         "prototxt/thermalnet_v1_1.prototxt, thermalnet_v1_0.prototxt", "squeezenet_version", "v1.1 by default: 2.4x less computation than v1.0 at SqueezeNet's published accuracy; v1.0 at 240x320 is the paper-scale network (--paper-scale); not compared in an ablation here"),
    Item("deconv_learned", "assumption", "Deconvolutions fixed bilinear or learned; kernel and stride", "—",
         "prototxt/thermalnet_*.prototxt Deconvolution param lr_mult", "deconv_kind", "fixed bilinear (lr_mult 0): measured fixed / learned per bin / learned mixing bins: 26.0 / 26.3 / 28.8 RMS, SSIM 0.822 / 0.815 / 0.816, SYNTHETIC 1100 pairs, 2000 iterations each (docs/ablations.md); none of them shows the paper's high-frequency components at this budget, nor learned deconvolutions with kernel = stride (GS gain 0.1-0.3 %, HF 0.79 of the real IR's; results/ablate/hypotheses-synthetic)"),
    Item("crop", "assumption", "Crop back to the input size and its offset", "—",
         "prototxt/thermalnet_*.prototxt Crop (offset derived in the file's header)", "crop", "offset derived from Caffe's coordinate mapping in each prototxt header and checked by an impulse test (tests/test_prototxt.py); not a measured choice"),
    Item("loss_normalisation", "assumption", "Loss normalised by the number of pixels (paper: 'unnormalised')",
         "Sec. 3.1", "prototxt/digits_python_layers.py (SoftmaxWithLoss' VALID normalisation)", "loss_norm",
         "normalised like Caffe's SoftmaxWithLoss (VALID) so DIGITS' default learning rates apply; equal to SoftmaxWithLoss with all weights 1 (tests/test_loss_layer.py); not ablated"),
    Item("dropout", "assumption", "SqueezeNet's dropout kept before the score layer", "—",
         "prototxt/thermalnet_*.prototxt Dropout", "dropout", "kept as in SqueezeNet (its weights load by name); not ablated"),
    Item("init", "assumption", "Initial weights: ImageNet-pretrained SqueezeNet or random fillers", "—",
         "tools/train.py (train_summary.json 'weights'); prototxt fillers", "init", "random fillers in every run measured here: the ImageNet SqueezeNet caffemodels cannot be downloaded on the kit's machines; --weights loads them (plumbing tested with stand-in files, effect not measured)"),
    Item("solver", "assumption", "Solver, learning rate and policy, batch size (the paper gives none)", "—",
         "prototxt/solver_*.prototxt; tools/train.py; the run's solver.prototxt", "solver", "demo: Adam 1e-3, batch 4 (an earlier measurement: 2e-3 worse per epoch, batch 4 faster per epoch of progress than 8); paper job: DIGITS' default SGD 0.01, step 33% (assumed, not measured)"),
    Item("mirror", "assumption", "Mirror augmentation of the training pairs", "—",
         "dataset_builder/build.py BuildConfig.mirror; dataset.json mirror", "mirror", "off by default (dataset_builder --mirror, make demo --mirror); measured with / without mirrored pairs: SYNTHETIC 27.0 / 26.0 RMS (1100 pairs, 2000 iterations), RoadScene 44.1 / 43.6 RMS (each beside its own mean-image baseline, 43.6 / 43.0) (201 real pairs, 2500 iterations, best snapshots); but at 40 passes over the SYNTHETIC pairs mirroring kept the validation loss down (2.49 vs 2.53 best, 2.59 vs 3.17 last) and its best snapshot beat every baseline in every class on RMS and SSIM (results/mirror-40epochs); --mirror keeps it one flag away"),
    Item("window", "assumption", "Temperature -> brightness 0..255 window", "—",
         "thermalnet/spec.py WINDOW_MODES; dataset.json window", "window", "'dataset' window from the training split's 0.5..99.5 temperature percentiles so RMS is comparable across images; 8-bit IR (RoadScene) is taken as brightness 0..255; not ablated"),
    Item("val_is_test", "assumption", "Validation loss (Fig. 8) computed on the test split", "Fig. 8",
         "dataset_builder/build.py (val_db = test split)", "val_is_test", "DIGITS' validation set is the paper's 100 test pairs (the paper has no third split): best-snapshot numbers are chosen on the pairs they are scored on and are optimistic; last-snapshot numbers are not"),
    Item("decoding", "assumption", "Decoding of the per-pixel distribution into brightness", "—",
         "thermalnet/spec.py decode; tools/evaluate.py --decoding", "decoding", "mmse: measured on the default arm's model, mmse / expectation / argmax / annealed: 26.0 / 28.4 / 35.2 / 28.2 RMS, SSIM 0.822 / 0.783 / 0.718 / 0.782, SYNTHETIC 1100 pairs, 2000 iterations (docs/ablations.md); the decoding that gives the paper's GS gain and high-frequency components, one draw per pixel at T 0.5, scores 39.1 against mmse's 26.6 in a later run (results/ablate/hypotheses-synthetic), so it is an option (--decoding sample), not the default"),
    Item("gs_sigma", "assumption", "TN + GS sigma (the paper gives only 3x3)", "—",
         "thermalnet/postprocess.py GAUSSIAN_SIGMA", "gs_sigma", "sigma 0.8 (the paper gives only 3x3); not ablated: with the default decoding TN + GS differs from TN by under 0.3 RMS in every run here; on the sample decoding (the paper's reading, docs/ablations.md) it removes 19-26 % of TN's RMS"),
    Item("snapshot", "assumption", "Which snapshot is evaluated (final or best validation loss)", "—",
         "tools/train.py (train_summary.json 'best'); eval.json model", "snapshot", "the best-validation-loss snapshot (best.caffemodel) in the demo; best and last both in ablations; with few pairs the validation loss turns up (RoadScene: lowest at iteration 1122 of 2500)"),
    Item("gatys_impl", "assumption", "TN + PP in pycaffe with the VGG-16 Caffe model (paper: Torch7)", "Sec. 3.4",
         "thermalnet/gatys.py", "gatys_impl", "pycaffe with the VGG-16 Caffe model, so the kit needs no Torch7; not run here without the VGG-16 weights"),
    # ---- results of the paper (its findings), checked on the run's numbers -----------------------
    Item("gs_gain", "result", "TN + GS lowers TN's RMS in every class (3x3 Gaussian gain)", "Table 2",
         "thermalnet/findings.py GS_GAIN_RANGE; eval.json relations", "result_gs_gain", GS_GAIN_BEHIND,
         _paper_values(findings.PAPER_GS_GAIN, "%.1f %%"),
         "gain %g..%g %% in every class" % findings.GS_GAIN_RANGE, RELATION),
    Item("high_frequency", "result", "TN's output holds high-frequency components absent on the real IR",
         "Sec. 5.1", "thermalnet/metrics.py high_frequency; eval.json relations", "result_high_frequency",
         GS_GAIN_BEHIND, "'a significant presence of high frequency components that were absent on [the] original "
         "thermal image'", "HF(TN) / HF(real IR) > %g in every class; HF = %s" % (
             findings.HF_RATIO_MIN, metrics.HIGH_FREQUENCY_FILTER), RELATION),
    Item("pp_worse", "result", "TN + PP (style reconstruction) raises TN's RMS in every class", "Table 2",
         "thermalnet/gatys.py; eval.json relations", "result_pp_worse", "",
         _paper_values(findings.PAPER_PP_RATIO, "%.2fx"), "TN + PP / TN > %g in every class" % findings.PP_RATIO_MIN,
         RELATION),
    Item("pp_smoothness", "result", "Style reconstruction fails to imitate the real IR's smoothness", "Sec. 5.2",
         "thermalnet/gatys.py; eval.json relations", "result_pp_smoothness", "",
         "'failed to imitate the smoothness and distortion present in original thermal images'",
         "HF(TN + PP) / HF(real IR) > %g in every class" % findings.HF_RATIO_MIN, RELATION),
    Item("class_order", "result", "TN's RMS orders the classes human < computer < microwave oven", "Table 2",
         "eval.json table", "result_class_order", "", "TN 9.1 < 16.7 < 37.8",
         "the same order of the three classes' TN RMS", RELATION),
    Item("table2_absolute", "result", "Table 2's TN RMS per class", "Table 2", "eval.json table",
         "result_table2_absolute", "", _paper_values({c: v[0] for c, v in findings.PAPER_TABLE2.items()}, "%.1f"),
         "none: absolute RMS depends on the data (the paper's FLIR ONE pairs are not public)", ABSOLUTE),
    Item("final_loss", "result", "The final training loss", "Sec. 6", "train_summary.json last_train_loss",
         "result_final_loss", "", findings.PAPER_FINAL_LOSS, "none: the paper gives no unit or definition",
         ABSOLUTE),
    Item("val_curve", "result", "The validation loss over training", "Fig. 8", "val.csv; train_summary.json",
         "result_val_curve", "", "Fig. 8 (the figure is not in the text the kit has: its shape is unknown)",
         "none without the figure", RELATION),
)


# ---- artifacts ---------------------------------------------------------------------------------

class Context:
    """What the checks read: a run folder (train_summary.json) or a dataset folder (dataset.json)."""

    def __init__(self, path: str, net: Optional[str] = None, deploy: Optional[str] = None,
                 eval_dir: Optional[str] = None, caffe_check: bool = True):
        path = os.path.abspath(path)
        self.path = path
        self.summary: Dict = {}
        self.run: Optional[str] = None
        if os.path.isfile(os.path.join(path, "eval.json")) and \
                os.path.isfile(os.path.join(os.path.dirname(path), "train_summary.json")):
            eval_dir, path = eval_dir or path, os.path.dirname(path)
        if os.path.isfile(os.path.join(path, "train_summary.json")):
            self.run = path
            self.summary = layout.read_json(os.path.join(path, "train_summary.json"))
            self.dataset = self.summary.get("dataset") or ""
        elif os.path.isfile(os.path.join(path, layout.DATASET_INFO_FILE)):
            self.dataset = path
        else:
            raise FileNotFoundError("%s: neither a run folder (train_summary.json) nor a dataset folder (%s)"
                                    % (path, layout.DATASET_INFO_FILE))
        self.info = layout.read_dataset_info(self.dataset) if os.path.isdir(self.dataset) else {}
        self.eval_dir = eval_dir or (os.path.join(self.run, "eval") if self.run else None)
        self.eval: Dict = {}
        if self.eval_dir and os.path.isfile(os.path.join(self.eval_dir, "eval.json")):
            self.eval = layout.read_json(os.path.join(self.eval_dir, "eval.json"))
        # The network the run trained (its materialised train_val.prototxt), or the default one.
        if net is None and self.summary:
            # the run's own copy first: the summary's absolute paths go stale when a run folder is moved
            here = os.path.join(self.run, os.path.basename(self.summary.get("train_val") or "train_val.prototxt"))
            tv = self.summary.get("train_val")
            net = here if os.path.isfile(here) else (tv if tv and os.path.isfile(tv) else self.summary.get("net"))
        if net is None:
            net = nets.network(nets.DEFAULT_NETWORK).net
        self.net_path = net
        self.net = nets.load_net(net)
        self.deploy_path = deploy or self.eval.get("deploy") or nets.deploy_for(self.summary.get("net") or net, required=False)
        self.solver_path = None
        if self.summary:
            here = os.path.join(self.run, os.path.basename(self.summary.get("solver") or "solver.prototxt"))
            self.solver_path = here if os.path.isfile(here) else self.summary.get("solver")
        self.caffe_check = caffe_check
        self._shapes = None

    @property
    def height(self) -> int:
        return int(self.info.get("height") or spec.DEFAULT_HEIGHT)

    @property
    def width(self) -> int:
        return int(self.info.get("width") or spec.DEFAULT_WIDTH)

    def layers(self, stage: str) -> List:
        """Layers of the training network in a DIGITS stage (train: TRAIN phase, val/deploy: TEST)."""
        return stage_layers(self.net, "TRAIN" if stage == "train" else "TEST", stage)

    def caffe_shapes(self) -> Dict:
        """Blob and parameter shapes of the net's deploy stage and the deploy file, from the real Caffe."""
        if self._shapes is None:
            files = {"net (deploy stage)": (self.net, self.net_path)}
            if self.deploy_path and os.path.isfile(self.deploy_path):
                files["deploy"] = (nets.load_net(self.deploy_path), self.deploy_path)
            self._shapes = caffe_shapes(files, self.height, self.width) if self.caffe_check else \
                {"error": "Caffe check switched off"}
        return self._shapes


def _rule_matches(rule, phase: str, stages: Sequence[str]) -> bool:
    from thermalnet.caffe_env import caffe_pb2
    if rule.HasField("phase") and rule.phase != getattr(caffe_pb2(), phase):
        return False
    if any(s not in stages for s in rule.stage):
        return False
    return not any(s in stages for s in rule.not_stage)


def stage_layers(net, phase: str, stage: str) -> List:
    """Caffe's NetState filtering (include/exclude rules by phase and stage) on a parsed NetParameter."""
    out = []
    for layer in net.layer:
        if layer.include:
            keep = any(_rule_matches(r, phase, [stage]) for r in layer.include)
        else:
            keep = not any(_rule_matches(r, phase, [stage]) for r in layer.exclude)
        if keep:
            out.append(layer)
    return out


def deconvolutions(layers) -> List:
    return [l for l in layers if l.type == "Deconvolution"]


def score_layer(layers):
    """The layer producing the first deconvolution's input (conv10 in the shipped files), or None."""
    dec = deconvolutions(layers)
    if not dec:
        return None
    blob, producer = dec[0].bottom[0], None
    for l in layers:
        if l is dec[0]:
            break
        if blob in l.top and l.type not in ("ReLU", "Dropout"):
            producer = l
    return producer


def fire_modules(layers) -> List[str]:
    """Names of the Concat layers that close a fire module: squeeze 1x1 conv -> expand 1x1 + expand 3x3 -> Concat."""
    producer = {}
    for l in layers:
        for t in l.top:
            if not (l.type in ("ReLU", "Dropout") and t in l.bottom):      # in-place layers keep the producer
                producer[t] = l
    fires = []
    for l in layers:
        if l.type != "Concat" or len(l.bottom) != 2:
            continue
        a, b = (producer.get(x) for x in l.bottom)
        if not a or not b or a.type != "Convolution" or b.type != "Convolution":
            continue
        ks = sorted(int(x.convolution_param.kernel_size[0]) if x.convolution_param.kernel_size else 1
                    for x in (a, b))
        if ks != [1, 3] or a.bottom[0] != b.bottom[0]:
            continue
        sq = producer.get(a.bottom[0])
        if sq is not None and sq.type == "Convolution" and \
                (list(sq.convolution_param.kernel_size) or [1])[0] == 1:
            fires.append(l.name)
    return fires


_SHAPES_SCRIPT = r"""
import json, sys
from thermalnet.caffe_env import import_caffe
caffe = import_caffe()
caffe.set_mode_cpu()
out = {}
for key, path in json.loads(sys.argv[1]).items():
    net = caffe.Net(path, caffe.TEST)
    out[key] = {"inputs": list(net.inputs), "outputs": list(net.outputs),
                "blobs": {k: list(v.data.shape) for k, v in net.blobs.items()},
                "params": {k: [list(b.data.shape) for b in v] for k, v in net.params.items()}}
print("SHAPES " + json.dumps(out))
"""


def caffe_shapes(files: Dict[str, Tuple], height: int, width: int, timeout: float = 300) -> Dict:
    """{key: blobs/params/outputs} of each (NetParameter, path) in its deploy stage at 1x3xHxW, built by Caffe.

    Runs in a child process: a network Caffe rejects ends in a glog abort, which must not
    take the report down with it. Returns {"error": message} when Caffe cannot build one.
    """
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with tempfile.TemporaryDirectory(prefix="fidelity-") as tmp:
        paths = {}
        for i, (key, (net, src)) in enumerate(files.items()):
            copy = type(net)()
            copy.CopyFrom(net)
            kept = [type(l)() for l in stage_layers(copy, "TEST", "deploy")]
            for new, old in zip(kept, stage_layers(copy, "TEST", "deploy")):
                new.CopyFrom(old)
                new.ClearField("include")        # already filtered: Caffe must keep every one
                new.ClearField("exclude")
            del copy.layer[:]
            copy.layer.extend(kept)
            if not nets._set_input_shape(copy, height, width, 1):
                return {"error": "%s: no Input layer with top \"data\" in the deploy stage" % src}
            paths[key] = os.path.join(tmp, "net%d.prototxt" % i)
            nets.save_net(copy, paths[key])
        env = dict(os.environ, GLOG_minloglevel="2", PYTHONPATH=repo + os.pathsep + os.environ.get("PYTHONPATH", ""))
        try:
            p = subprocess.run([sys.executable, "-c", _SHAPES_SCRIPT, json.dumps(paths)], capture_output=True,
                               text=True, env=env, cwd=repo, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"error": "Caffe did not build the network within %d s" % timeout}
    for line in p.stdout.splitlines():
        if line.startswith("SHAPES "):
            return json.loads(line[len("SHAPES "):])
    tail = [l for l in (p.stderr or "").splitlines() if l.strip()]
    return {"error": "Caffe could not build the network (%s)" % (tail[-1][:200] if tail else "exit %d" % p.returncode)}


# ---- checks: each returns (status, evidence) ----------------------------------------------------

def _need_run(ctx, what: str) -> Optional[Tuple[str, str]]:
    if not ctx.summary:
        return NOT_RUN, "no training run given (%s is a dataset folder), so %s is not known" % (
            os.path.basename(ctx.path), what)
    return None


def _need_eval(ctx) -> Optional[Tuple[str, str]]:
    if not ctx.eval:
        return NOT_RUN, "no evaluation (eval.json) in %s" % (ctx.eval_dir or os.path.basename(ctx.path))
    return None


def _manifest(ctx) -> List[Dict]:
    import csv
    path = os.path.join(ctx.dataset, layout.MANIFEST_FILE)
    if not os.path.isfile(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _alignment_models(ctx) -> Dict[str, str]:
    """id -> camera model of the FLIR files (alignment.csv written by the dataset builder), if any."""
    import csv
    path = os.path.join(ctx.dataset, "alignment.csv")
    if not os.path.isfile(path):
        return {}
    with open(path, newline="") as f:
        return {r["id"]: r.get("model", "") for r in csv.DictReader(f)}


def check_table1_sizes(ctx):
    rows = _manifest(ctx)
    vh, vw = spec.FLIR_ONE_VISIBLE_SIZE
    ih, iw = spec.FLIR_ONE_IR_SIZE
    if (vw, vh, iw, ih) != (640, 480, 160, 120):
        return FAIL, "spec.FLIR_ONE_* say visible %dx%d, IR %dx%d" % (vw, vh, iw, ih)
    if not rows or "vis_w" not in rows[0]:
        return NOT_RUN, "no manifest.csv with source sizes in the dataset"
    models = _alignment_models(ctx)
    kind = "SYNTHETIC " if ctx.info.get("synthetic") else ""
    # FLIR files: the manifest's visible size is the photo cropped to the IR field of view, so the
    # camera (alignment.csv) and the IR size are what can be checked.
    flir = [r for r in rows if r["id"] in models]
    other = [r for r in rows if r["id"] not in models]
    bad = []
    text = []
    if flir:
        cams = collections.Counter((models[r["id"]], r["ir_w"], r["ir_h"]) for r in flir)
        text.append("FLIR files (alignment.csv): " + ", ".join("%d x %s IR %sx%s" % (n, *k)
                                                                 for k, n in cams.most_common(4)))
        bad += [r for r in flir if "FLIR ONE" not in models[r["id"]].upper()
                or (r["ir_w"], r["ir_h"]) != (str(iw), str(ih))]
    if other:
        sizes = collections.Counter((r["vis_w"], r["vis_h"], r["ir_w"], r["ir_h"]) for r in other)
        text.append("%d %spair(s): %s" % (len(other), kind, ", ".join(
            "%d visible %sx%s / IR %sx%s" % (n, *k) for k, n in sizes.most_common(4))))
        bad += [r for r in other if (r["vis_w"], r["vis_h"], r["ir_w"], r["ir_h"]) != (str(vw), str(vh), str(iw),
                                                                                     str(ih))]
    ev = "manifest.csv: " + "; ".join(text)
    if bad:
        return FAIL, ev + "; %d of %d source pairs differ from Table 1 (FLIR ONE, visible 640x480, IR 160x120)" % (
            len(bad), len(rows))
    return PASS, ev + "; all %d match Table 1%s" % (len(rows), " (visible size of FLIR files not recorded: "
                                                                 "cropped to the IR field of view)" if flir else "")


def check_table2_classes(ctx):
    cc = (ctx.info.get("class_counts") or {}).get("test") or {}
    missing = [c for c in spec.OBJECT_CLASSES if not cc.get(c)]
    text = ", ".join("%s %d" % (k, v) for k, v in sorted(cc.items()))
    if not cc:
        return NOT_RUN, "dataset.json has no test class counts"
    if missing:
        return FAIL, "test split has no %s (dataset.json class_counts: %s)" % (", ".join(missing), text)
    return PASS, "test split (dataset.json class_counts): %s" % text


def check_fire_modules(ctx):
    fires = fire_modules(ctx.layers("train"))
    if len(fires) == 8:
        return PASS, "%s: 8 fire modules (squeeze 1x1 -> expand 1x1 + 3x3 -> Concat): %s" % (
            os.path.basename(ctx.net_path), ", ".join(fires))
    return FAIL, "%s: %d fire modules found, SqueezeNet has 8" % (os.path.basename(ctx.net_path), len(fires))


def _count(shapes) -> int:
    return int(sum(int(np.prod(s)) for s in shapes))


def _squeezenet_base(layers) -> Optional[str]:
    conv = next((l for l in layers if l.type == "Convolution"), None)
    if conv is None:
        return None
    k = (list(conv.convolution_param.kernel_size) or [1])[0]
    n = conv.convolution_param.num_output
    return {(3, 64): "v1_1", (7, 96): "v1_0"}.get((int(k), int(n)))


def check_body_params(ctx):
    sh = ctx.caffe_shapes()
    if "error" in sh:
        return NOT_RUN, sh["error"]
    layers = ctx.layers("deploy")
    base = _squeezenet_base(layers)
    score = score_layer(layers)
    if base is None or score is None:
        return FAIL, "first convolution is not SqueezeNet's conv1 (v1.0 7x7/96, v1.1 3x3/64) or no score layer"
    params = sh["net (deploy stage)"]["params"]
    names = [l.name for l in layers]
    body = _count(s for name, ss in params.items() if names.index(name) < names.index(score.name) for s in ss)
    want = nets.SQUEEZENET_BODY_PARAMS[base]
    ok = body == want
    return (PASS if ok else FAIL), "Caffe: %s parameters before the score layer %s = %s SqueezeNet %s body " \
        "(SqueezeNet's total minus its 1000-class conv10)" % (
            "{:,}".format(body), score.name, "{:,}".format(want) if ok else "differs from the %s" % "{:,}".format(want),
            base.replace("_", "."))


def check_no_global_pool(ctx):
    from thermalnet.caffe_env import caffe_pb2
    pools = [l for l in ctx.layers("train") if l.type == "Pooling"]
    ave = caffe_pb2().PoolingParameter.AVE
    bad = [l.name for l in pools if l.pooling_param.global_pooling or l.pooling_param.pool == ave]
    desc = ", ".join("%s %s %s" % (l.name, "AVE" if l.pooling_param.pool == ave else "MAX",
                                   "global" if l.pooling_param.global_pooling else
                                   "%dx%d/%d" % (l.pooling_param.kernel_size, l.pooling_param.kernel_size,
                                                 l.pooling_param.stride or 1)) for l in pools)
    if bad:
        return FAIL, "%s: global or average pooling present: %s" % (os.path.basename(ctx.net_path), ", ".join(bad))
    return PASS, "%s: pooling layers %s (no global, no average pooling)" % (os.path.basename(ctx.net_path), desc)


def check_two_deconv(ctx):
    counts = {"train net": deconvolutions(ctx.layers("train"))}
    if ctx.deploy_path and os.path.isfile(ctx.deploy_path):
        counts["deploy"] = deconvolutions(stage_layers(nets.load_net(ctx.deploy_path), "TEST", "deploy"))
    text = "; ".join("%s %s: %d (%s)" % (k, os.path.basename(ctx.net_path if k == "train net" else ctx.deploy_path),
                                        len(v), ", ".join(l.name for l in v)) for k, v in counts.items())
    return (PASS if all(len(v) == 2 for v in counts.values()) else FAIL), "Deconvolution layers: " + text


def check_output_size(ctx):
    sh = ctx.caffe_shapes()
    if "error" in sh:
        return FAIL if "could not build" in sh["error"] else NOT_RUN, sh["error"]
    parts, ok = [], True
    for key, s in sh.items():
        data = s["blobs"].get("data")
        outs = {o: s["blobs"][o] for o in s["outputs"]}
        good = data is not None and outs and all(v[2:] == data[2:] for v in outs.values())
        ok = ok and bool(good)
        parts.append("%s: input %s -> %s" % (key, "x".join(map(str, data or [])),
                                             ", ".join("%s %s" % (o, "x".join(map(str, v))) for o, v in outs.items())))
    return (PASS if ok else FAIL), "Caffe at %dx%d: %s" % (ctx.height, ctx.width, "; ".join(parts))


def check_eq1_loss(ctx):
    losses = [l for l in ctx.layers("train") if l.type == "Python" or l.type.endswith("Loss")]
    if not losses:
        return FAIL, "%s: no loss layer in the train stage" % os.path.basename(ctx.net_path)
    l = losses[0]
    if l.type != "Python" or l.python_param.layer != "WeightedSoftmaxLoss":
        name = l.python_param.layer if l.type == "Python" else l.type
        return FAIL, "%s: loss %s is not eq. 1's weighted softmax cross-entropy" % (os.path.basename(ctx.net_path),
                                                                                   name)
    try:
        w = layout.read_class_weights(ctx.dataset, int(ctx.info.get("num_bins", spec.NUM_BINS)))
        prior = np.loadtxt(os.path.join(ctx.dataset, layout.CLASS_PRIOR_FILE)).ravel()
    except (OSError, ValueError) as exc:
        return FAIL, "class weights v(Y) unreadable: %s" % exc
    lam = float(ctx.info.get("lambda", spec.REBALANCE_LAMBDA))
    expect = spec.rebalance_weights(prior, lam)
    err = float(np.max(np.abs(w - expect) / expect))
    if err > 1e-5:
        return FAIL, "class_weights.txt differs from v(Y) of class_prior.txt (lambda %.2f) by %.1e" % (lam, err)
    return PASS, "%s: Python layer %s, class_weights.txt = v(Y) of class_prior.txt (lambda %.2f, %d bins, " \
        "weights %.2f..%.2f)" % (os.path.basename(ctx.net_path), l.python_param.layer, lam, w.size, w.min(), w.max())


def check_split(ctx):
    from thermalnet.lmdb_io import lmdb_count
    try:
        tr = lmdb_count(os.path.join(ctx.dataset, layout.TRAIN_DB, layout.FEATURES))
        va = lmdb_count(os.path.join(ctx.dataset, layout.VAL_DB, layout.FEATURES))
    except Exception as exc:  # lmdb.Error
        return FAIL, "cannot count the LMDBs of %s (%s)" % (ctx.dataset, exc)
    mirror = bool(ctx.info.get("mirror"))
    pairs = tr // 2 if mirror else tr
    test_rows = sum(1 for r in _manifest(ctx) if r.get("split") == "test")
    ev = "train_db/features %d entries%s, val_db/features %d, manifest test rows %d" % (
        tr, " (%d pairs mirrored)" % pairs if mirror else "", va, test_rows)
    ok = pairs == spec.PAPER_TRAIN and va == spec.PAPER_TEST and (not test_rows or test_rows == spec.PAPER_TEST)
    return (PASS if ok else FAIL), ev + ("" if ok else "; the paper has %d / %d" % (spec.PAPER_TRAIN,
                                                                                     spec.PAPER_TEST))


def check_epochs(ctx):
    miss = _need_run(ctx, "the number of epochs")
    if miss:
        return miss
    s = ctx.summary
    it, ipe = s.get("iterations") or 0, s.get("iters_per_epoch") or 0
    if not ipe:
        return NOT_RUN, "train_summary.json has no iters_per_epoch"
    ep = it / float(ipe)
    ev = "train_summary.json: %d iterations / %d per epoch = %.1f epochs (planned %s%s)" % (
        it, ipe, ep, s.get("epochs"), ", time budget %.0f min" % (s["max_seconds"] / 60.0) if s.get("max_seconds") else "")
    return (PASS if ep >= 1000 - 1e-9 else FAIL), ev


def check_digits(ctx):
    s = ctx.summary
    where = ("this run: %s back-end on %s" % (s.get("backend"), "GPU %s" % s["gpu"] if s.get("gpu") is not None
                                             else "%s CPU cores" % s.get("cpu_cores"))) if s else "no run given"
    return NOT_RUN, "%s; DIGITS and GPUs are not run here (the DIGITS job files are in digits_jobs/)" % where


def check_eq2_rms(ctx):
    miss = _need_eval(ctx)
    if miss:
        return miss
    from . import evaluate as ev
    try:
        per = ev.read_table_csv(os.path.join(ctx.eval_dir, "per_image.csv"))
        table = ev.read_table_csv(os.path.join(ctx.eval_dir, "table2.csv"))
    except (OSError, ValueError) as exc:
        return FAIL, str(exc)
    bad = []
    for r in table:
        sel = per if r["object_class"] == ev.OVERALL else [p for p in per if p["object_class"] == r["object_class"]]
        if len(sel) != r["n"] or (sel and abs(np.mean([p["tn"] for p in sel]) - r["tn"]) > 1e-3):
            bad.append(r["object_class"])
    classes = ", ".join("%s %d" % (r["object_class"], r["n"]) for r in table)
    if bad:
        return FAIL, "table2.csv class means differ from per_image.csv for %s" % ", ".join(bad)
    return PASS, "table2.csv TN = mean of per_image.csv eq. 2 RMS per class (%s; %s)" % (
        classes, ctx.eval.get("data", {}).get("label", "SYNTHETIC data" if ctx.eval.get("synthetic") else "real pairs"))


def check_gaussian_3x3(ctx):
    from thermalnet import postprocess
    impulse = np.zeros((9, 9))
    impulse[4, 4] = 1.0
    support = np.argwhere(np.abs(postprocess.gaussian3x3(impulse)) > 1e-12)
    size = tuple(int(x) for x in support.max(axis=0) - support.min(axis=0) + 1)
    if size != (3, 3):
        return FAIL, "thermalnet.postprocess.gaussian3x3 impulse response is %dx%d" % size
    ev = "impulse response of thermalnet.postprocess.gaussian3x3: 3x3 (sigma %.2f)" % postprocess.GAUSSIAN_SIGMA
    if not ctx.eval:
        return NOT_RUN, ev + "; no evaluation in this folder"
    return PASS, ev + "; eval.json TN + GS with sigma %s" % ctx.eval.get("gaussian_sigma")


def check_gatys(ctx):
    miss = _need_eval(ctx)
    if miss:
        return miss
    if ctx.eval.get("tn_pp") == "run":
        return PASS, ctx.eval.get("tn_pp_note", "TN + PP run") + "; style image: the real IR (tools.evaluate)"
    return NOT_RUN, ctx.eval.get("tn_pp_note") or "TN + PP not run"


def _assumed(ev: str, ok: bool = True, fail: str = "") -> Tuple[str, str]:
    return (ASSUMED, ev) if ok else (FAIL, ev + "; " + fail)


def check_q_bins(ctx):
    score = score_layer(ctx.layers("train"))
    q_net = int(score.convolution_param.num_output) if score is not None else None
    q_ds = ctx.info.get("num_bins")
    ev = "Q = %s: score layer %s num_output %s, dataset.json num_bins %s, spec.NUM_BINS %d" % (
        q_net, score.name if score is not None else "?", q_net, q_ds, spec.NUM_BINS)
    return _assumed(ev, q_net is not None and q_net == q_ds, "they disagree")


def check_rebalance_lambda(ctx):
    lam = ctx.info.get("lambda")
    if lam is None:
        return NOT_RUN, "dataset.json records no lambda (spec.REBALANCE_LAMBDA %s)" % spec.REBALANCE_LAMBDA
    return ASSUMED, "lambda = %s (dataset.json; spec.REBALANCE_LAMBDA %s)" % (lam, spec.REBALANCE_LAMBDA)


def check_input_size(ctx):
    shape = None
    for l in ctx.layers("deploy"):
        if l.type == "Input" and "data" in l.top and l.input_param.shape:
            shape = list(l.input_param.shape[0].dim)
    ev = "dataset %dx%d (dataset.json), net deploy Input %s; paper scale %dx%d, FLIR ONE IR %dx%d" % (
        ctx.height, ctx.width, "x".join(map(str, shape or [])), spec.PAPER_HEIGHT, spec.PAPER_WIDTH,
        spec.FLIR_ONE_IR_SIZE[0], spec.FLIR_ONE_IR_SIZE[1])
    return ASSUMED, ev


def check_squeezenet_version(ctx):
    base = _squeezenet_base(ctx.layers("train"))
    conv = next((l for l in ctx.layers("train") if l.type == "Convolution"), None)
    ev = "first convolution %s %dx%d/%d -> SqueezeNet %s" % (
        conv.name if conv else "?", *(2 * [(list(conv.convolution_param.kernel_size) or [0])[0]] if conv else [0, 0]),
        conv.convolution_param.num_output if conv else 0, base.replace("_", ".") if base else "unknown")
    return _assumed(ev, base is not None, "not a SqueezeNet conv1")


def check_deconv_kind(ctx):
    dec = deconvolutions(ctx.layers("train"))
    if not dec:
        return FAIL, "no Deconvolution layer"
    parts = []
    for l in dec:
        lr = l.param[0].lr_mult if l.param and l.param[0].HasField("lr_mult") else 1.0
        cp = l.convolution_param
        parts.append("%s %s (lr_mult %g, filler %s, kernel %s stride %s, group %s)" % (
            l.name, "fixed" if lr == 0 else "learned", lr, cp.weight_filler.type or "constant",
            (list(cp.kernel_size) or ["?"])[0], (list(cp.stride) or [1])[0], cp.group))
    return ASSUMED, "; ".join(parts)


def check_crop(ctx):
    crops = [l for l in ctx.layers("deploy") if l.type == "Crop"]
    if not crops:
        return FAIL, "no Crop layer: the output is not cut back to the input size"
    return ASSUMED, "; ".join("%s: axis %d offset %s (reference %s)" % (
        l.name, l.crop_param.axis, list(l.crop_param.offset), l.bottom[1] if len(l.bottom) > 1 else "?")
        for l in crops)


def check_loss_norm(ctx):
    losses = [l for l in ctx.layers("train") if l.type == "Python"]
    if not losses:
        return NOT_RUN, "no Python loss layer"
    l = losses[0]
    try:
        params = json.loads(l.python_param.param_str or "{}")
    except ValueError:
        params = {}
    params = {k: os.path.basename(v) if k == "class_weights" else v for k, v in params.items()}
    return ASSUMED, "%s %s (%s): the sum over pixels of v(y) x cross-entropy divided by the number of valid " \
        "pixels, SoftmaxWithLoss' VALID normalisation (prototxt/digits_python_layers.py)" % (
            l.python_param.module, l.python_param.layer, json.dumps(params, sort_keys=True))


def check_dropout(ctx):
    d = [l for l in ctx.layers("train") if l.type == "Dropout"]
    return ASSUMED, ", ".join("%s ratio %.2f" % (l.name, l.dropout_param.dropout_ratio) for l in d) or "no dropout"


def check_init(ctx):
    miss = _need_run(ctx, "the initial weights")
    fillers = collections.Counter(l.convolution_param.weight_filler.type for l in ctx.layers("train")
                                  if l.type in ("Convolution", "Deconvolution"))
    fill = ", ".join("%s x%d" % kv for kv in sorted(fillers.items()))
    if miss:
        return ASSUMED, "prototxt fillers: %s (no run given, so no pretrained weights recorded)" % fill
    w = ctx.summary.get("weights")
    if w:
        w = w if isinstance(w, list) else [w]
        return ASSUMED, "train_summary.json weights: %s (layers not in them from fillers: %s)" % (
            ", ".join(os.path.basename(str(x)) for x in w), fill)
    return ASSUMED, "random initialisation from the prototxt fillers (%s); train_summary.json records no " \
        "pretrained weights" % fill


def check_solver(ctx):
    miss = _need_run(ctx, "the solver")
    if miss:
        return ASSUMED, miss[1] + "; tools.train defaults apply"
    from google.protobuf import text_format
    from thermalnet.caffe_env import caffe_pb2
    try:
        sp = caffe_pb2().SolverParameter()
        with open(ctx.solver_path or "") as f:
            text_format.Merge(f.read(), sp)
    except Exception as exc:  # missing file or protobuf ParseError
        return NOT_RUN, "%s: unreadable solver (%s)" % (ctx.solver_path, exc)
    return ASSUMED, "%s: %s, base_lr %g, lr_policy %s, max_iter %d; batch %s (train_summary.json)" % (
        os.path.basename(ctx.solver_path), sp.type or "SGD", sp.base_lr, sp.lr_policy, sp.max_iter,
        ctx.summary.get("batch_size"))


def check_mirror(ctx):
    m = ctx.info.get("mirror")
    return ASSUMED, "dataset.json mirror: %s%s" % (m, " (training pairs and their mirror images)" if m else "")


def check_window(ctx):
    win = ctx.info.get("window")
    return ASSUMED, "dataset.json window_mode %s, window %s %s" % (
        ctx.info.get("window_mode"), "per image" if win is None else "%.2f..%.2f" % tuple(win),
        ctx.info.get("ir_units", ""))


def check_val_is_test(ctx):
    from thermalnet.lmdb_io import lmdb_count
    try:
        va = lmdb_count(os.path.join(ctx.dataset, layout.VAL_DB, layout.FEATURES))
    except Exception as exc:  # lmdb.Error
        return NOT_RUN, str(exc)
    rows = _manifest(ctx)
    if not rows:
        return NOT_RUN, "val_db/features %d entries; no manifest.csv to compare with the test split" % va
    test_rows = sum(1 for r in rows if r.get("split") == "test")
    return _assumed("val_db/features %d entries, manifest test rows %d" % (va, test_rows), va == test_rows,
                    "val_db is not the test split")


def check_decoding(ctx):
    miss = _need_eval(ctx)
    if miss:
        return ASSUMED, miss[1] + "; tools.evaluate default mmse"
    return ASSUMED, "eval.json decoding: %s" % ctx.eval.get("decoding")


def check_gs_sigma(ctx):
    from thermalnet import postprocess
    return ASSUMED, "sigma %s (eval.json), thermalnet.postprocess.GAUSSIAN_SIGMA %.1f" % (
        ctx.eval.get("gaussian_sigma", "—"), postprocess.GAUSSIAN_SIGMA)


def check_snapshot(ctx):
    miss = _need_run(ctx, "the evaluated snapshot") or _need_eval(ctx)
    if miss:
        return miss
    model = os.path.basename(ctx.eval.get("model", ""))
    picked = ctx.summary.get("evaluated_snapshot")
    if isinstance(picked, dict):
        model += " (%s, iteration %s)" % (picked.get("which"), picked.get("iteration"))
    final = os.path.basename(ctx.summary.get("final_caffemodel") or "")
    best = ctx.summary.get("best")
    ev = "evaluated %s; final snapshot %s" % (model, final or "—")
    if isinstance(best, dict):
        ev += "; best validation: iteration %s, loss %.4f" % (best.get("iteration"), float(best.get("val_loss")))
    return ASSUMED, ev


def check_gatys_impl(ctx):
    from thermalnet import gatys
    return ASSUMED, "thermalnet/gatys.py (%s)" % (gatys.__doc__ or "").strip().splitlines()[0]


# ---- results: each returns (status, evidence, the run's value) ------------------------------------

def _eval_data(ctx) -> str:
    return ctx.eval.get("data", {}).get("label") or ("SYNTHETIC data" if ctx.eval.get("synthetic") else "real pairs")


def _verdict(ctx, finding: str, fmt: str, what: str):
    """A relation of thermalnet.findings on the run's eval.json table: (status, evidence, run's value)."""
    miss = _need_eval(ctx)
    if miss:
        return miss + ("—",)
    v = findings.verdicts(ctx.eval.get("table") or [])[finding]
    value = ", ".join("%s %s" % (c.replace("_", " "), "—" if x is None else fmt % x) for c, x in v["values"].items())
    classes = "the paper's classes" if v["classes"] and v["classes"][0] in findings.PAPER_TABLE2 else \
        "all test images (no paper class in these pairs)"
    ev = "%s on %s, %s decoding, %s" % (what, classes, ctx.eval.get("decoding"), _eval_data(ctx))
    return v["status"], ev, value or "—"


def check_result_gs_gain(ctx):
    return _verdict(ctx, "gs_gain", "%.1f %%", "100 (TN - TN + GS) / TN from table2.csv")


def check_result_high_frequency(ctx):
    st, ev, value = _verdict(ctx, "hf", "%.2f", "HF(TN) / HF(real IR), means over the test images")
    if st == findings.NOT_RUN and ctx.eval:
        ev = "eval.json has no high-frequency measure (evaluated before it existed): run tools.evaluate again"
    return st, ev, value


def _pp_missing(ctx):
    miss = _need_eval(ctx)
    if miss:
        return miss + ("—",)
    if ctx.eval.get("tn_pp") != "run":
        return NOT_RUN, ctx.eval.get("tn_pp_note") or "TN + PP not run", "—"
    return None


def check_result_pp_worse(ctx):
    return _pp_missing(ctx) or _verdict(ctx, "pp", "%.2fx", "TN + PP / TN")


def check_result_pp_smoothness(ctx):
    return _pp_missing(ctx) or _verdict(ctx, "pp_hf", "%.2f", "HF(TN + PP) / HF(real IR)")


def check_result_class_order(ctx):
    st, ev, value = _verdict(ctx, "class_order", "%.1f", "TN RMS, lowest first")
    if st == findings.NOT_RUN and ctx.eval:
        ev = "the test pairs do not carry the paper's three classes"
    elif ctx.eval.get("synthetic"):
        ev += " (on SYNTHETIC data the classes' difficulty is the generator's, not the paper's scenes')"
    return st, ev, value


def check_result_table2_absolute(ctx):
    miss = _need_eval(ctx)
    if miss:
        return miss + ("—",)
    tn = {r["object_class"]: r.get("tn") for r in ctx.eval.get("table") or [] if r.get("n")}
    value = ", ".join("%s %.1f" % (c.replace("_", " "), tn[c]) for c in list(findings.PAPER_TABLE2) + ["overall"]
                      if tn.get(c) is not None)
    return findings.NOT_COMPARABLE, "%s, not the paper's FLIR ONE pairs: compare the relations above and the " \
        "baselines of the same run instead" % _eval_data(ctx), value or "—"


def _losses(ctx, name: str) -> List[Tuple[int, float]]:
    import csv
    path = os.path.join(ctx.run, name) if ctx.run else ""
    if not os.path.isfile(path):
        return []
    with open(path, newline="") as f:
        return [(int(float(r["iteration"])), float(r["loss"])) for r in csv.DictReader(f)]


def check_result_final_loss(ctx):
    miss = _need_run(ctx, "the final loss")
    if miss:
        return miss + ("—",)
    last = ctx.summary.get("last_train_loss")
    if last is None:
        return NOT_RUN, "train_summary.json has no last_train_loss", "—"
    value = "%.3f" % last
    train = _losses(ctx, "train.csv")
    if train and train[0][1] > 0:
        value += " (%.0f %% of the first logged loss, %.3f)" % (100.0 * last / train[0][1], train[0][1])
    return findings.NOT_COMPARABLE, ("the kit's loss is eq. 1's weighted cross-entropy in nats per pixel, "
                                     "normalised by the pixel count (SoftmaxWithLoss' VALID); the paper's '0.5%%' "
                                     "names no unit or definition (a loss of 0.005, a percentage of the first loss "
                                     "and a per-pixel error rate all fit it), and it is a training loss on its own "
                                     "pairs after 1000 epochs; this run: %d iterations" % ctx.summary.get(
                                         "iterations", 0)), value


def check_result_val_curve(ctx):
    miss = _need_run(ctx, "the validation loss")
    if miss:
        return miss + ("—",)
    val = _losses(ctx, "val.csv")
    if not val:
        return NOT_RUN, "no val.csv in the run folder", "—"
    best = min(val, key=lambda x: x[1])
    value = "first %.3f (iteration %d), lowest %.3f (iteration %d), last %.3f (iteration %d)" % (
        val[0][1], val[0][0], best[1], best[0], val[-1][1], val[-1][0])
    return findings.NOT_COMPARABLE, ("Fig. 8 is lost from the paper's text, so its shape cannot be compared; the "
                                     "run's validation set is the test split (val_is_test)"), value


# checks that read the dataset folder (NOT RUN when a run's dataset has gone)
DATASET_CHECKS = frozenset(("table1_sizes", "table2_classes", "eq1_loss", "split", "q_bins", "rebalance_lambda",
                            "input_size", "mirror", "window", "val_is_test", "output_size", "body_params"))


# ---- the register --------------------------------------------------------------------------------

def check(path: str, net: Optional[str] = None, deploy: Optional[str] = None, eval_dir: Optional[str] = None,
          caffe_check: bool = True) -> List[Dict]:
    """Run every REGISTER check on a run or dataset folder; one dict per item (the item's fields + status, evidence)."""
    ctx = Context(path, net=net, deploy=deploy, eval_dir=eval_dir, caffe_check=caffe_check)
    out = []
    for item in REGISTER:
        fn = globals().get("check_" + item.check)
        if item.check in DATASET_CHECKS and not os.path.isfile(os.path.join(ctx.dataset, layout.DATASET_INFO_FILE)):
            status, evidence = NOT_RUN, "the run's dataset %s is not here (moved or deleted)" % ctx.dataset
        elif fn is None:
            status, evidence = NOT_RUN, "no check function check_%s" % item.check
        else:
            try:
                status, evidence, *value = fn(ctx)
            except Exception as exc:  # a check must never hide the others
                status, evidence, value = FAIL, "check raised %s: %s" % (type(exc).__name__, exc), []
        if status not in STATUSES:
            raise ValueError("check_%s returned status %r" % (item.check, status))
        row = dict(item._asdict(), status=status, evidence=evidence)
        if item.kind == "result":
            row["run_value"] = value[0] if value else "—"
        else:
            for k in ("paper_value", "tolerance", "comparable"):
                del row[k]
        out.append(row)
    return out


def counts(rows: List[Dict]) -> Dict[str, int]:
    c = collections.Counter(r["status"] for r in rows)
    return {s: c.get(s, 0) for s in STATUSES}


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


REGISTER_COLUMNS = ("Kind", "Statement", "Paper", "Where", "Status", "Evidence (from the artifacts)")
FINDING_COLUMNS = ("Finding", "Paper", "Paper's value", "This run", "Tolerance", "Compared as", "Status", "Evidence")
FINDINGS_CAPTION = ("The paper's findings against this run (relations within one run carry over to other data; "
                    "absolute values do not):")


def summary_line(rows: List[Dict]) -> str:
    kind = lambda k, st=None: sum(1 for r in rows if r["kind"] == k and (st is None or r["status"] == st))  # noqa
    return ("Claims: %d PASS, %d FAIL, %d NOT RUN; assumptions: %d (%d FAIL); findings: %d REPRODUCED, %d NOT "
            "REPRODUCED, %d NOT RUN, %d NOT COMPARABLE." % (
                kind("claim", PASS), kind("claim", FAIL), kind("claim", NOT_RUN), kind("assumption"),
                kind("assumption", FAIL), kind("result", findings.REPRODUCED), kind("result", findings.NOT_REPRODUCED),
                kind("result", NOT_RUN), kind("result", findings.NOT_COMPARABLE)))


def table_cells(rows: List[Dict]) -> Tuple[List[List[str]], List[List[str]]]:
    """The cells of the two tables (REGISTER_COLUMNS: claims and assumptions; FINDING_COLUMNS: results)."""
    register, found = [], []
    for r in rows:
        if r["kind"] == "result":
            found.append([r["statement"], r["paper"], r["paper_value"], r["run_value"], r["tolerance"],
                          r["comparable"], r["status"],
                          r["evidence"] + (". Which reading gives it: %s" % r["behind"] if r["behind"] else "")])
        else:
            register.append([r["kind"], r["statement"], r["paper"], r["where"], r["status"],
                             r["evidence"] + (". Behind the choice: %s" % r["behind"] if r["behind"] else "")])
    return register, found


def _md_table(columns: Sequence[str], cells: List[List[str]]) -> List[str]:
    status = columns.index("Status")
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in cells:
        row = [("**%s**" % c) if i == status else c for i, c in enumerate(row)]
        out.append("| " + " | ".join(_md_cell(c) for c in row) + " |")
    return out


def markdown(rows: List[Dict]) -> str:
    """The register as markdown: claims and assumptions in one table, then the paper's findings in their own."""
    register, found = table_cells(rows)
    lines = [summary_line(rows), ""] + _md_table(REGISTER_COLUMNS, register)
    if found:
        lines += ["", FINDINGS_CAPTION, ""] + _md_table(FINDING_COLUMNS, found)
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools.fidelity",
                                description="Paper-fidelity register: each claim of Kniaz et al. 2017 and each "
                                            "assumption of the kit, checked on a run's or a dataset's artifacts "
                                            "(PASS / FAIL / ASSUMED / NOT RUN, with the evidence).")
    p.add_argument("path", metavar="RUN_OR_DATASET", help="run folder (train_summary.json) or dataset folder "
                                                          "(dataset.json)")
    p.add_argument("--net", help="network prototxt to check (default: the run's train_val.prototxt, or the "
                                 "default network for a dataset)")
    p.add_argument("--deploy", help="deploy prototxt (default: the evaluated one, or the network's)")
    p.add_argument("--eval", help="evaluation folder (default RUN/eval)")
    p.add_argument("--json", help="also write the register as JSON here")
    p.add_argument("--strict", action="store_true", help="exit 1 (one error line) when a check FAILs")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from thermalnet import cli
    return cli.run(lambda: _main(args))


def _main(args) -> None:
    from thermalnet import nets as _nets
    for given in (args.net, args.deploy):
        if given:
            _nets.load_net(given)     # a file the user names must parse: one error line, not a register of FAILs
    rows = check(args.path, net=args.net, deploy=args.deploy, eval_dir=args.eval)
    print(markdown(rows))
    if args.json:
        from thermalnet.atomic import write_json
        write_json(args.json, rows)
        print("wrote %s" % args.json)
    failed = [r for r in rows if r["status"] == FAIL]
    if args.strict and failed:
        raise ValueError("%s: %d check%s FAIL (%s); see the register above"
                         % (args.path, len(failed), "s" if len(failed) > 1 else "",
                            ", ".join(r.get("key") or r.get("statement", "?") for r in failed[:3])
                            + (", ..." if len(failed) > 3 else "")))


if __name__ == "__main__":
    sys.exit(main())
