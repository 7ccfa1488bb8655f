"""Image metrics of the evaluation, on brightness images 0..255: the one home of their definitions.

- rms: eq. 2 of the paper, the kit's primary score.
- rms_offset_free: RMS after removing the image's mean difference, i.e. the standard
  deviation of (prediction - real IR). Cameras with automatic gain shift the whole
  8-bit frame up or down from one frame to the next; this score ignores such a global
  offset and keeps everything else (shape, contrast, edges).
- ssim: structural similarity (Wang et al. 2004) through scikit-image with the paper's
  settings: Gaussian window sigma 1.5 (11x11 after truncation at 3.5 sigma), K1 0.01,
  K2 0.03, population covariances, data range 255. The mean over the image, borders of
  half a window excluded (scikit-image's convention).
- psnr: 10 log10(255^2 / MSE) in dB (infinite for a perfect prediction).

Per-class figures are means of the per-image values (the paper's "average RMS");
PSNR is averaged in dB, as most image-translation papers report it.

- high_frequency: a property of one image, not of a pair: the RMS of what the paper's
  TN + GS filter removes, image minus its 3x3 Gaussian (thermalnet.postprocess, sigma 0.8).
  The paper (Sec. 5.1) saw "high frequency components that were absent on [the] original
  thermal image"; the ratio of this measure, TN's output over the real IR, says whether a
  run shows them (> 1), and how much the 3x3 Gaussian can take away.
"""
from __future__ import annotations

from typing import Dict

import numpy as np


DATA_RANGE = 255.0
SSIM_OPTIONS = {"gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False, "data_range": DATA_RANGE}

# key -> (label for tables, higher is better?)
METRICS = ("rms", "rms_offset_free", "ssim", "psnr")
METRIC_LABELS = {
    "rms": "RMS (eq. 2)",
    "rms_offset_free": "RMS after removing each image's mean difference (offset-free RMS)",
    "ssim": "SSIM",
    "psnr": "PSNR (dB)",
}
METRIC_SHORT = {"rms": "RMS", "rms_offset_free": "offset-free RMS", "ssim": "SSIM", "psnr": "PSNR dB"}
HIGHER_IS_BETTER = {"rms": False, "rms_offset_free": False, "ssim": True, "psnr": True}
DIGITS = {"rms": 1, "rms_offset_free": 1, "ssim": 3, "psnr": 2}


def _pair(y, y_hat):
    y = np.asarray(y, dtype=np.float64)
    y_hat = np.asarray(y_hat, dtype=np.float64)
    if y.shape != y_hat.shape or y.ndim != 2:
        raise ValueError("metrics need two HxW images of equal shape, got %s and %s" % (y.shape, y_hat.shape))
    return y, y_hat


def rms(y: np.ndarray, y_hat: np.ndarray) -> float:
    """Eq. 2: root-mean-square brightness error over an image."""
    y = np.asarray(y, dtype=np.float64)
    y_hat = np.asarray(y_hat, dtype=np.float64)
    if y.shape != y_hat.shape:
        raise ValueError("RMS needs equal shapes, got %s and %s" % (y.shape, y_hat.shape))
    return float(np.sqrt(np.mean((y - y_hat) ** 2)))


def rms_offset_free(y: np.ndarray, y_hat: np.ndarray) -> float:
    """RMS of the difference after subtracting its mean over the image (a global brightness offset costs 0)."""
    y, y_hat = _pair(y, y_hat)
    d = y_hat - y
    return float(np.sqrt(np.mean((d - d.mean()) ** 2)))


def psnr(y: np.ndarray, y_hat: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB for brightness 0..255 (scikit-image's peak_signal_noise_ratio)."""
    from skimage.metrics import peak_signal_noise_ratio
    y, y_hat = _pair(y, y_hat)
    if np.array_equal(y, y_hat):
        return float("inf")
    return float(peak_signal_noise_ratio(y, y_hat, data_range=DATA_RANGE))


def ssim(y: np.ndarray, y_hat: np.ndarray) -> float:
    """Mean SSIM with SSIM_OPTIONS (scikit-image's structural_similarity)."""
    from skimage.metrics import structural_similarity
    y, y_hat = _pair(y, y_hat)
    return float(structural_similarity(y, y_hat, **SSIM_OPTIONS))


HIGH_FREQUENCY_FILTER = "RMS of image minus its 3x3 Gaussian (sigma 0.8, the TN + GS filter), brightness 0..255"


def high_frequency(img: np.ndarray) -> float:
    """RMS of img - gaussian3x3(img): the pixel-scale detail (or noise) the 3x3 Gaussian removes."""
    from thermalnet.postprocess import gaussian3x3
    arr = np.asarray(img, dtype=np.float64)
    return float(np.sqrt(np.mean((arr - gaussian3x3(arr)) ** 2)))


FUNCTIONS = {"rms": rms, "rms_offset_free": rms_offset_free, "ssim": ssim, "psnr": psnr}


def all_metrics(y: np.ndarray, y_hat: np.ndarray) -> Dict[str, float]:
    """Every metric of METRICS for one real IR image y and one prediction y_hat."""
    return {k: FUNCTIONS[k](y, y_hat) for k in METRICS}
