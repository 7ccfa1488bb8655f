"""TN+GS smoothing and the post-processing dispatch."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from thermalnet import postprocess


def _numpy_gaussian3x3(img, sigma):
    """Reference: separable taps exp(-x^2 / 2 sigma^2), normalised, mirror borders (no edge repeat)."""
    k = np.exp(-0.5 * (np.array([-1.0, 0.0, 1.0]) / sigma) ** 2)
    k /= k.sum()
    p = np.pad(np.asarray(img, dtype=np.float64), 1, mode="reflect")
    rows = k[0] * p[:-2, :] + k[1] * p[1:-1, :] + k[2] * p[2:, :]
    return k[0] * rows[:, :-2] + k[1] * rows[:, 1:-1] + k[2] * rows[:, 2:]


def test_gaussian3x3_matches_numpy_reference_and_opencv():
    rng = np.random.RandomState(0)
    img = rng.uniform(0, 255, size=(37, 53))
    got = postprocess.gaussian3x3(img)
    assert got.shape == img.shape and got.dtype == np.float64
    np.testing.assert_allclose(got, _numpy_gaussian3x3(img, 0.8), atol=1e-9)
    np.testing.assert_allclose(postprocess.gaussian3x3(img, sigma=1.5), _numpy_gaussian3x3(img, 1.5), atol=1e-9)
    np.testing.assert_allclose(postprocess.gaussian_kernel1d(0.8), cv2.getGaussianKernel(3, 0.8).ravel(), atol=1e-7)
    # uint8 input gives the same result as float input
    u8 = rng.randint(0, 256, size=(20, 30)).astype(np.uint8)
    np.testing.assert_allclose(postprocess.gaussian3x3(u8), _numpy_gaussian3x3(u8, 0.8), atol=1e-9)


def test_gaussian3x3_keeps_flat_images_and_damps_noise():
    flat = np.full((16, 16), 97.0)
    np.testing.assert_allclose(postprocess.gaussian3x3(flat), flat, rtol=1e-12)
    rng = np.random.RandomState(1)
    noise = rng.normal(0, 10, size=(400, 400))
    k = postprocess.gaussian_kernel1d(0.8)
    expected_ratio = (k ** 2).sum() ** 2          # white noise variance through the 2-D kernel
    ratio = postprocess.gaussian3x3(noise)[1:-1, 1:-1].var() / noise.var()
    assert abs(ratio / expected_ratio - 1) < 0.05


def test_gaussian3x3_rejects_bad_input():
    with pytest.raises(ValueError, match="sigma"):
        postprocess.gaussian3x3(np.zeros((4, 4)), sigma=0)
    with pytest.raises(ValueError, match="HxW"):
        postprocess.gaussian3x3(np.zeros((4, 4, 3)))


def test_apply_dispatch():
    rng = np.random.RandomState(2)
    img = rng.uniform(0, 255, size=(10, 12))
    np.testing.assert_array_equal(postprocess.apply("none", img), img)
    np.testing.assert_array_equal(postprocess.apply("gaussian", img), postprocess.gaussian3x3(img))
    with pytest.raises(ValueError, match="StyleReconstructor"):
        postprocess.apply("gatys", img, style_reference=img)
    with pytest.raises(ValueError, match="unknown"):
        postprocess.apply("median", img)


def test_kernel_taps_worked_by_hand_and_gatys_dispatch():
    # sigma 0.8, 3 taps: exp(-0.5 / 0.64) = 0.457833; normalised 0.457833 / 1.915667 = 0.238994
    np.testing.assert_allclose(postprocess.gaussian_kernel1d(), [0.238994, 0.522012, 0.238994], atol=1e-6)
    # 5 taps, sigma 1: exp(-2), exp(-0.5), 1, ... over their sum 2.483732
    np.testing.assert_allclose(postprocess.gaussian_kernel1d(1.0, 5),
                               np.array([0.135335, 0.606531, 1.0, 0.606531, 0.135335]) / 2.483732, atol=1e-6)
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match="sigma must be > 0"):
            postprocess.gaussian_kernel1d(bad)

    class Recon:
        def run(self, tn, ref, **kw):
            return tn + ref + kw["extra"], {"loss": 0}

    a, b = np.ones((2, 2)), np.full((2, 2), 2.0)
    np.testing.assert_array_equal(postprocess.apply("gatys", a, style_reference=b, reconstructor=Recon(), extra=4),
                                  np.full((2, 2), 7.0))
    with pytest.raises(ValueError, match="StyleReconstructor"):
        postprocess.apply("gatys", a, reconstructor=Recon())
