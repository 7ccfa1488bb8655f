"""The kit's single source of truth: sizes, thermal bins, brightness windows, splits.

Every other module (dataset builder, loss layer config, tools, DIGITS jobs, tests)
reads these numbers from here, so a dataset, the networks in prototxt/ and the
evaluation can never silently disagree. The hand-written prototxt files repeat
NUM_BINS in the score layer's (conv10_thermal) num_output; tests/test_prototxt.py checks they match.
"""
from __future__ import annotations

import numpy as np

# -- Thermal quantisation (eq. 1 classifies each pixel into one of Q bins) --------
# Brightness 0..255 (the paper's RMS unit, eq. 2) is cut into Q equal bins. Q = 32
# gives bins 8 levels wide: the quantisation alone costs 8/sqrt(12) = 2.3 RMS, well
# under the paper's best figure (7.5), while keeping the score layer and the loss cheap on CPU.
NUM_BINS = 32
BRIGHTNESS_LEVELS = 256
BIN_WIDTH = BRIGHTNESS_LEVELS / NUM_BINS

# Zhang et al.'s class rebalancing: mix the empirical prior with uniform (lambda),
# invert, normalise so that the expected weight under the prior is 1.
REBALANCE_LAMBDA = 0.5
# Annealed-mean decoding temperature (Zhang et al. use 0.38).
ANNEAL_T = 0.38

# -- Network input ----------------------------------------------------------------
# Default: FLIR ONE's native IR resolution (Table 1: 160x120), so labels are the
# camera's own pixels and a demo epoch is cheap on 2 CPU cores. Paper scale is one
# flag away (tools/train.py --paper-scale): SqueezeNet v1.0 at 240x320.
DEFAULT_HEIGHT, DEFAULT_WIDTH = 120, 160
PAPER_HEIGHT, PAPER_WIDTH = 240, 320
DEFAULT_BASE = "v1_1"      # prototxt/thermalnet_v1_1_*.prototxt
PAPER_BASE = "v1_0"        # prototxt/thermalnet_v1_0_*.prototxt

# -- FLIR ONE (Table 1 of the paper) ------------------------------------------------
FLIR_ONE_VISIBLE_SIZE = (480, 640)      # (H, W)
FLIR_ONE_IR_SIZE = (120, 160)           # (H, W), native sensor
FLIR_ONE_RANGE_C = (-20.0, 120.0)

# -- Brightness window (degC -> 0..255) -----------------------------------------------
# "dataset": one window for all images (RMS comparable across images); it is taken
# from the training split's temperature percentiles below and recorded in the
# manifest. "image": per-image min..max, like the FLIR app's auto range.
WINDOW_MODES = ("dataset", "image", "fixed")
DEFAULT_WINDOW_MODE = "dataset"
DATASET_WINDOW_PERCENTILES = (0.5, 99.5)

# -- Splits (the paper: 1000 train / 100 test) ----------------------------------------
PAPER_TRAIN, PAPER_TEST = 1000, 100
DEFAULT_TEST_FRACTION = 1 / 11          # used when fewer than 1100 pairs exist
SEED = 2017
OBJECT_CLASSES = ("human", "microwave_oven", "computer")   # Table 2 rows

# -- Dataset folder layout (DIGITS generic "prebuilt" LMDBs) ---------------------------
TRAIN_DB, VAL_DB = "train_db", "val_db"
FEATURES, LABELS, MEAN_FILE = "features", "labels", "mean.binaryproto"
CLASS_WEIGHTS_FILE = "class_weights.txt"
CLASS_PRIOR_FILE = "class_prior.txt"
MANIFEST_FILE = "manifest.csv"
DATASET_INFO_FILE = "dataset.json"
TEST_DIR = "test"          # test split as image files: test/visible, test/ir, test/ir_degC
LMDB_KEY_FORMAT = "%09d"


def lmdb_pairs(dataset_dir: str):
    """(split, features LMDB, labels LMDB) for train and val of a dataset folder, in that order."""
    import os
    return [(split, os.path.join(dataset_dir, sub, FEATURES), os.path.join(dataset_dir, sub, LABELS))
            for split, sub in (("train", TRAIN_DB), ("val", VAL_DB))]


def to_brightness(temp_c: np.ndarray, t_min: float, t_max: float) -> np.ndarray:
    """degC -> brightness 0..255 (float) through the window [t_min, t_max]."""
    if not t_max > t_min:
        raise ValueError("temperature window must have t_max > t_min, got %r..%r" % (t_min, t_max))
    b = (np.asarray(temp_c, dtype=np.float64) - t_min) / (t_max - t_min) * (BRIGHTNESS_LEVELS - 1)
    return np.clip(b, 0, BRIGHTNESS_LEVELS - 1)


def to_celsius(brightness: np.ndarray, t_min: float, t_max: float) -> np.ndarray:
    """Inverse of to_brightness (inside the window)."""
    return t_min + np.asarray(brightness, dtype=np.float64) / (BRIGHTNESS_LEVELS - 1) * (t_max - t_min)


def brightness_to_bins(brightness: np.ndarray, num_bins: int = NUM_BINS) -> np.ndarray:
    """Brightness 0..255 -> bin index 0..Q-1 (uint8)."""
    b = np.clip(np.asarray(brightness, dtype=np.float64), 0, BRIGHTNESS_LEVELS - 1)
    return np.minimum((b * num_bins / BRIGHTNESS_LEVELS).astype(np.int64), num_bins - 1).astype(np.uint8)


def bin_centers(num_bins: int = NUM_BINS) -> np.ndarray:
    """Brightness at the centre of each bin, used to decode predictions."""
    width = BRIGHTNESS_LEVELS / num_bins
    return (np.arange(num_bins) + 0.5) * width - 0.5


DECODINGS = ("mmse", "expectation", "argmax", "annealed")
# One default everywhere (evaluate, demo, run_flir, augment, ablate, the DIGITS client): mmse, eq. 1's
# rebalancing divided out, then the mean -- the minimum-RMS estimate, and the best decoding on every
# metric in the kit's ablations (README "Ablations"). It needs the training class weights; a tool
# that may run without the dataset (augment, the DIGITS client) falls back to the plain expectation.
DEFAULT_DECODING = "mmse"
FALLBACK_DECODING = "expectation"


def default_decoding(have_class_weights: bool) -> str:
    """The kit's decoding when the user names none (see DEFAULT_DECODING)."""
    return DEFAULT_DECODING if have_class_weights else FALLBACK_DECODING


def unweight(probs: np.ndarray, class_weights: np.ndarray) -> np.ndarray:
    """q(y|x) of a net trained with eq. 1's weights v -> p(y|x) = (q / v) / sum over Q of (q / v).

    Weighted cross-entropy is minimised by q proportional to v(y) p(y|x), not by p itself,
    so a rebalanced net's softmax leans towards the rare (up-weighted) bins.
    """
    w = np.asarray(class_weights, dtype=np.float64).reshape((-1, 1, 1))
    if w.shape[0] != np.shape(probs)[-3]:
        raise ValueError("%d class weights for %d bins" % (w.shape[0], np.shape(probs)[-3]))
    p = np.asarray(probs, dtype=np.float64) / np.maximum(w, 1e-12)
    return p / np.maximum(p.sum(axis=-3, keepdims=True), 1e-300)


def decode(probs: np.ndarray, method: str = "expectation", temperature: float = ANNEAL_T,
           class_weights: np.ndarray = None) -> np.ndarray:
    """Per-pixel class probabilities (..., Q, H, W) -> brightness (..., H, W).

    argmax: centre of the likeliest bin; expectation: mean under the distribution;
    annealed: mean of the distribution sharpened by 1/T (Zhang et al.), between the two;
    mmse: mean of the distribution with eq. 1's class weights divided out (unweight), the
    minimum-RMS estimate for a net trained with rebalancing (needs class_weights).
    """
    probs = np.asarray(probs, dtype=np.float64)
    q = probs.shape[-3]
    centers = bin_centers(q).reshape((q, 1, 1))
    if method == "mmse":
        if class_weights is None:
            raise ValueError("the mmse decoding needs the training class weights (%s)" % CLASS_WEIGHTS_FILE)
        probs = unweight(probs, class_weights)
    elif method == "argmax":
        return centers[np.argmax(probs, axis=-3), 0, 0]
    elif method == "annealed":
        logp = np.log(np.clip(probs, 1e-12, None)) / temperature
        logp -= logp.max(axis=-3, keepdims=True)
        probs = np.exp(logp)
        probs /= probs.sum(axis=-3, keepdims=True)
    elif method != "expectation":
        raise ValueError("unknown decoding %r (%s)" % (method, ", ".join(DECODINGS)))
    return (probs * centers).sum(axis=-3)


def read_dataset_info(dataset_dir: str) -> dict:
    """dataset.json of a dataset folder -> dict, with the keys every consumer relies on checked."""
    import json
    import os
    path = os.path.join(dataset_dir, DATASET_INFO_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError("%s: missing, not a dataset folder built by dataset_builder" % path)
    try:
        with open(path, encoding="utf-8") as f:
            info = json.load(f)
    except ValueError as exc:
        raise ValueError("%s: not valid JSON (%s)" % (path, exc)) from None
    for key in ("num_bins", "height", "width"):
        if key not in info:
            raise ValueError("%s: missing %r" % (path, key))
    return info


def read_class_weights(dataset_dir: str, num_bins: int = NUM_BINS) -> np.ndarray:
    """v(Y) of a dataset folder (class_weights.txt), checked: Q finite positive values."""
    import os
    path = os.path.join(dataset_dir, CLASS_WEIGHTS_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError("%s: missing (written by the dataset builder)" % path)
    w = np.loadtxt(path, dtype=np.float64).ravel()
    if w.size != num_bins or not np.all(np.isfinite(w)) or np.any(w <= 0):
        raise ValueError("%s: need %d positive weights, got %d values" % (path, num_bins, w.size))
    return w


def class_prior(labels: np.ndarray, num_bins: int = NUM_BINS) -> np.ndarray:
    """Empirical distribution of bin indices."""
    counts = np.bincount(np.asarray(labels).ravel().astype(np.int64), minlength=num_bins)[:num_bins]
    total = counts.sum()
    if total == 0:
        raise ValueError("no labels to estimate the class prior from")
    return counts / float(total)


def rebalance_weights(prior: np.ndarray, lam: float = REBALANCE_LAMBDA) -> np.ndarray:
    """v(Y) of eq. 1: w ~ 1/((1-lam) p + lam/Q), scaled so that sum_q p_q w_q = 1.

    With lam = 0 a bin that never occurs would get an infinite weight; it never meets a
    label in training, so it takes the largest finite weight instead (the file stays valid).
    """
    prior = np.asarray(prior, dtype=np.float64)
    mix = (1.0 - lam) * prior + lam / prior.size
    w = 1.0 / np.where(mix > 0, mix, np.inf)
    if np.any(mix <= 0):
        w[mix <= 0] = w[mix > 0].max()
    return w / float((prior * w).sum())


def rms(y: np.ndarray, y_hat: np.ndarray) -> float:
    """Eq. 2: root-mean-square brightness error over an image."""
    y = np.asarray(y, dtype=np.float64)
    y_hat = np.asarray(y_hat, dtype=np.float64)
    if y.shape != y_hat.shape:
        raise ValueError("RMS needs equal shapes, got %s and %s" % (y.shape, y_hat.shape))
    return float(np.sqrt(np.mean((y - y_hat) ** 2)))
