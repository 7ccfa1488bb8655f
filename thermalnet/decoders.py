"""Decoders, in one home: per-pixel class probabilities over Q bins -> brightness 0..255.

Used by tools.evaluate, tools.augment, the demo, the ablation and the DIGITS client, so
DIGITS-side inference and the kit's evaluation decode alike.
"""
from __future__ import annotations

import numpy as np

from thermalnet import layout, spec

# Annealed-mean decoding temperature (Zhang et al. use 0.38).
ANNEAL_T = 0.38

DECODINGS = ("mmse", "expectation", "argmax", "annealed")
# One default everywhere (evaluate, demo, run_flir, augment, ablate, the DIGITS client): mmse, eq. 1's
# rebalancing divided out, then the mean -- the minimum-RMS estimate, and the best decoding on every
# metric in the kit's ablations (docs/ablations.md). It needs the training class weights; a tool
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
    centers = spec.bin_centers(q).reshape((q, 1, 1))
    if method == "mmse":
        if class_weights is None:
            raise ValueError("the mmse decoding needs the training class weights (%s)" % layout.CLASS_WEIGHTS_FILE)
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
