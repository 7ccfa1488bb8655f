"""Post-processing of Thermalnet outputs, the two variants of the paper's Table 2.

TN+GS: a 3x3 Gaussian smooth. The paper gives no sigma; we use 0.8, the sigma OpenCV
derives for a 3x3 kernel when given sigma=0 (0.3*((3-1)/2 - 1) + 0.8). Its taps per
axis are [0.2390, 0.5220, 0.2390]. (For sigma=0 OpenCV itself then substitutes the
binomial table [1/4, 1/2, 1/4]; pass sigma to compare.) Borders reflect (OpenCV's
BORDER_REFLECT_101), so a flat image stays flat (to rounding).

TN+PP: Gatys et al.'s style reconstruction with VGG-16, in thermalnet/gatys.py; it needs
the VGG_ILSVRC_16_layers weights, so apply() reports it unavailable without them.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

GAUSSIAN_SIGMA = 0.8
METHODS = ("none", "gaussian", "gatys")


def gaussian_kernel1d(sigma: float = GAUSSIAN_SIGMA, size: int = 3) -> np.ndarray:
    """Normalised 1-D Gaussian taps (the separable factor of the 2-D kernel)."""
    if sigma <= 0:
        raise ValueError("sigma must be > 0, got %g" % sigma)
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def gaussian3x3(img: np.ndarray, sigma: float = GAUSSIAN_SIGMA) -> np.ndarray:
    """TN+GS: 3x3 Gaussian smoothing (sigma 0.8 by default) of an HxW brightness image -> float64."""
    import cv2
    arr = np.asarray(img, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError("gaussian3x3 expects an HxW image, got shape %s" % (arr.shape,))
    if sigma <= 0:
        raise ValueError("sigma must be > 0, got %g" % sigma)
    return cv2.GaussianBlur(arr, (3, 3), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT_101)


def apply(method: str, tn_brightness: np.ndarray, style_reference: Optional[np.ndarray] = None,
          reconstructor=None, **gatys_kwargs) -> np.ndarray:
    """Dispatch one post-processing variant on a Thermalnet brightness image (HxW).

    "gatys" needs the real IR image (style_reference) and a thermalnet.gatys.StyleReconstructor.
    """
    if method == "none":
        return np.asarray(tn_brightness, dtype=np.float64)
    if method == "gaussian":
        return gaussian3x3(tn_brightness)
    if method == "gatys":
        if reconstructor is None or style_reference is None:
            raise ValueError("gatys post-processing needs a StyleReconstructor (VGG-16 weights) and the IR image")
        result, _ = reconstructor.run(tn_brightness, style_reference, **gatys_kwargs)
        return result
    raise ValueError("unknown post-processing %r (choose from %s)" % (method, ", ".join(METHODS)))
