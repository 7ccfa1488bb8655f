"""Decoders, in one home: per-pixel class probabilities over Q bins -> brightness 0..255.

Used by tools.evaluate, tools.augment, the demo, the ablation and the DIGITS client, so
DIGITS-side inference and the kit's evaluation decode alike.
"""
from __future__ import annotations

import numpy as np

from thermalnet import layout, spec

# Annealed-mean decoding temperature (Zhang et al. use 0.38).
ANNEAL_T = 0.38
# Per-pixel sampling: temperature 1 draws from the network's own distribution.
SAMPLE_T = 1.0
SAMPLE_SEED = 2017                     # the draws are seeded: a run's numbers repeat

# The kit's decodings (estimates of the brightness), then two that model readings of the
# paper (tools.ablate's hypothesis arms, README "Ablations"): "sample", one draw per pixel
# from the predicted distribution, and "digits", what NVIDIA DIGITS 6.1.1 shows for a
# Q-channel output. Its "Image output" view accepts 1 or 3 channels only; its "Image
# Segmentation" view takes the argmax and draws the class index c as grey level c, which
# a user stretches to 0..255 as c * 255 / (Q - 1).
ESTIMATES = ("mmse", "expectation", "argmax", "annealed")
HYPOTHESES = ("sample", "digits")
DECODINGS = ESTIMATES + HYPOTHESES
DEFAULT_TEMPERATURE = {"annealed": ANNEAL_T, "sample": SAMPLE_T}
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


def label(method: str, temperature: float = None) -> str:
    """'sample (T 0.5)' for a decoding that takes a temperature (its default when None), else the name."""
    t = temperature if temperature is not None else DEFAULT_TEMPERATURE.get(method)
    return method if t is None else "%s (T %g)" % (method, t)


def sharpen(probs: np.ndarray, temperature: float) -> np.ndarray:
    """The distribution raised to 1/T and renormalised over the bins (T < 1 sharpens, T = 1 keeps it)."""
    if not temperature > 0:
        raise ValueError("temperature must be > 0, got %r" % (temperature,))
    logp = np.log(np.clip(probs, 1e-12, None)) / temperature
    logp -= logp.max(axis=-3, keepdims=True)
    out = np.exp(logp)
    return out / out.sum(axis=-3, keepdims=True)


def sample_bins(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One bin index per pixel drawn from its distribution (inverse CDF with one uniform per pixel)."""
    cdf = np.cumsum(probs, axis=-3)
    u = rng.random(cdf.shape[:-3] + (1,) + cdf.shape[-2:]) * cdf[..., -1:, :, :]
    return np.minimum((cdf < u).sum(axis=-3), probs.shape[-3] - 1)


def decode(probs: np.ndarray, method: str = "expectation", temperature: float = None,
           class_weights: np.ndarray = None, rng: np.random.Generator = None) -> np.ndarray:
    """Per-pixel class probabilities (..., Q, H, W) -> brightness (..., H, W).

    argmax: centre of the likeliest bin; expectation: mean under the distribution;
    annealed: mean of the distribution sharpened by 1/T (Zhang et al.; T = ANNEAL_T
    unless given), between the two; mmse: mean of the distribution with eq. 1's class
    weights divided out (unweight), the minimum-RMS estimate for a net trained with
    rebalancing (needs class_weights). Hypotheses about the paper (HYPOTHESES): sample:
    the centre of one bin drawn per pixel from the network's distribution sharpened by
    1/T (T = SAMPLE_T unless given; `rng`, else seeded with SAMPLE_SEED); digits: DIGITS'
    segmentation view, argmax index c -> c * 255 / (Q - 1).
    """
    probs = np.asarray(probs, dtype=np.float64)
    q = probs.shape[-3]
    centers = spec.bin_centers(q).reshape((q, 1, 1))
    if temperature is None:
        temperature = DEFAULT_TEMPERATURE.get(method)
    if method == "mmse":
        if class_weights is None:
            raise ValueError("the mmse decoding needs the training class weights (%s)" % layout.CLASS_WEIGHTS_FILE)
        probs = unweight(probs, class_weights)
    elif method == "argmax":
        return centers[np.argmax(probs, axis=-3), 0, 0]
    elif method == "digits":
        return np.argmax(probs, axis=-3) * (spec.BRIGHTNESS_LEVELS - 1.0) / max(q - 1, 1)
    elif method == "sample":
        rng = rng if rng is not None else np.random.default_rng(SAMPLE_SEED)
        return centers[sample_bins(sharpen(probs, temperature), rng), 0, 0]
    elif method == "annealed":
        probs = sharpen(probs, temperature)
    elif method != "expectation":
        raise ValueError("unknown decoding %r (%s)" % (method, ", ".join(DECODINGS)))
    return (probs * centers).sum(axis=-3)
