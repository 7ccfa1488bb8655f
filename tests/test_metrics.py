"""thermalnet.metrics against independent numpy implementations (never the same function twice).

SSIM is re-derived from Wang et al. 2004 with plain numpy: an 11x11 Gaussian window of
sigma 1.5 (radius int(3.5 * 1.5 + 0.5) = 5), half-sample symmetric borders, population
(co)variances, C1 = (0.01 L)^2, C2 = (0.03 L)^2, L = 255, the mean taken 5 pixels in from
each border. PSNR and the offset-free RMS are written out by hand.
"""
from __future__ import annotations

import numpy as np
import pytest

from thermalnet import metrics


def _gauss_filter(img, sigma=1.5, radius=5):
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    k /= k.sum()
    p = np.pad(img, radius, mode="symmetric")          # scipy.ndimage mode "reflect"
    h, w = img.shape
    rows = sum(k[i] * p[i:i + h, :] for i in range(2 * radius + 1))
    return sum(k[i] * rows[:, i:i + w] for i in range(2 * radius + 1))


def ssim_reference(a, b, L=255.0, sigma=1.5, radius=5):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    f = lambda z: _gauss_filter(z, sigma, radius)
    mu_a, mu_b = f(a), f(b)
    va = f(a * a) - mu_a ** 2
    vb = f(b * b) - mu_b ** 2
    cov = f(a * b) - mu_a * mu_b
    c1, c2 = (0.01 * L) ** 2, (0.03 * L) ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (va + vb + c2))
    return float(s[radius:-radius, radius:-radius].mean())


def _images(seed=0, shape=(48, 64)):
    rng = np.random.RandomState(seed)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    ir = 80 + 60 * np.exp(-((yy - 20) ** 2 + (xx - 30) ** 2) / 150.0) + rng.normal(0, 4, shape)
    pred = 0.8 * ir + 30 + rng.normal(0, 12, shape)
    return np.clip(ir, 0, 255), np.clip(pred, 0, 255)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ssim_matches_wang_et_al_in_numpy(seed):
    ir, pred = _images(seed)
    ref = ssim_reference(ir, pred)
    assert metrics.ssim(ir, pred) == pytest.approx(ref, abs=1e-9)
    assert metrics.ssim(ir, ir) == pytest.approx(1.0, abs=1e-12)
    # the options matter: a 7x7 uniform window or sigma 3 gives another number, so the test would see them
    assert abs(ssim_reference(ir, pred, sigma=3.0, radius=11) - ref) > 1e-3
    assert abs(ssim_reference(ir, pred, L=1.0) - ref) > 1e-3


def test_psnr_and_rms_by_hand():
    ir, pred = _images(3)
    mse = np.mean((ir - pred) ** 2)
    assert metrics.psnr(ir, pred) == pytest.approx(10 * np.log10(255.0 ** 2 / mse), abs=1e-9)
    assert metrics.rms(ir, pred) == pytest.approx(np.sqrt(mse), abs=1e-12)
    assert metrics.psnr(ir, ir) == float("inf")
    # 8-bit images, a hand-computed case: every pixel off by 5 -> MSE 25
    a = np.full((4, 4), 100.0)
    assert metrics.psnr(a, a + 5) == pytest.approx(10 * np.log10(65025 / 25.0), abs=1e-12)


def test_offset_free_rms_ignores_a_global_offset_only():
    ir, pred = _images(4)
    assert metrics.rms_offset_free(ir, ir + 17.0) == pytest.approx(0.0, abs=1e-12)
    assert metrics.rms(ir, ir + 17.0) == pytest.approx(17.0, abs=1e-12)
    d = pred - ir
    by_hand = np.sqrt(np.sum((d - d.sum() / d.size) ** 2) / d.size)
    assert metrics.rms_offset_free(ir, pred) == pytest.approx(by_hand, abs=1e-12)
    assert metrics.rms_offset_free(ir, pred) < metrics.rms(ir, pred)
    # RMS^2 = offset^2 + offset-free RMS^2
    assert metrics.rms(ir, pred) ** 2 == pytest.approx(d.mean() ** 2 + by_hand ** 2, rel=1e-12)


def test_all_metrics_and_shape_errors():
    ir, pred = _images(5)
    m = metrics.all_metrics(ir, pred)
    assert list(m) == list(metrics.METRICS) == ["rms", "rms_offset_free", "ssim", "psnr"]
    for k in metrics.METRICS:
        assert k in metrics.METRIC_LABELS and k in metrics.HIGHER_IS_BETTER
    assert "mean difference" in metrics.METRIC_LABELS["rms_offset_free"]
    with pytest.raises(ValueError, match="equal shape"):
        metrics.ssim(ir, pred[:-1])
    with pytest.raises(ValueError, match="equal shape"):
        metrics.rms_offset_free(ir, pred.T)


def test_higher_is_better_agrees_with_each_metric_on_a_better_prediction():
    """The direction of each metric, from the metric itself: a prediction with less noise
    must score better (errors fall, SSIM and PSNR rise), and the table says which way."""
    ir, _ = _images(6)
    rng = np.random.RandomState(6)
    noise = rng.randn(*ir.shape)
    # noise with a non-zero mean and structure, so the offset-free RMS moves too
    close, far = ir + 3.0 * noise + 1.0, ir + 30.0 * noise + 10.0
    for k in metrics.METRICS:
        good, bad = metrics.FUNCTIONS[k](ir, close), metrics.FUNCTIONS[k](ir, far)
        assert good != bad, k
        assert (good > bad) == metrics.HIGHER_IS_BETTER[k], k
    assert metrics.HIGHER_IS_BETTER == {"rms": False, "rms_offset_free": False, "ssim": True, "psnr": True}


def test_shape_errors_and_table_precision():
    a = np.zeros((3, 4))
    with pytest.raises(ValueError, match="RMS needs equal shapes, got \\(3, 4\\) and \\(4, 3\\)"):
        metrics.rms(a, a.T)
    assert metrics.rms(np.zeros(5), np.full(5, 2.0)) == 2.0        # eq. 2 takes any equal shapes
    for f in (metrics.rms_offset_free, metrics.ssim, metrics.psnr):
        with pytest.raises(ValueError, match="two HxW images of equal shape, got \\(3, 4\\) and \\(3, 4, 1\\)"):
            f(a, a[..., None])
        with pytest.raises(ValueError, match="two HxW images"):
            f(np.zeros(12), np.zeros(12))
    # tables: RMS to 0.1 as the paper's Table 2, SSIM to 0.001, PSNR to 0.01 dB
    assert metrics.DIGITS == {"rms": 1, "rms_offset_free": 1, "ssim": 3, "psnr": 2}
