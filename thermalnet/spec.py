"""The kit's numbers, in one home: sizes, thermal bins, brightness windows, splits.

Every other module (dataset builder, loss layer config, tools, DIGITS jobs, tests)
reads these numbers from here (file names: thermalnet.layout; decoding: thermalnet.decoding), so a dataset, the networks in prototxt/ and the
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
