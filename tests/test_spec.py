"""spec.py: the numbers every part of the kit shares (bins, windows, decoding, v(Y), eq. 2)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from thermalnet import decoders, layout, metrics, spec


def test_window_and_bins_round_trip():
    t = np.linspace(10, 50, 401)
    b = spec.to_brightness(t, 15.0, 45.0)
    assert b.min() == 0 and b.max() == 255
    inside = (t >= 15) & (t <= 45)
    np.testing.assert_allclose(spec.to_celsius(b[inside], 15.0, 45.0), t[inside])
    bins = spec.brightness_to_bins(b)
    assert bins.dtype == np.uint8 and bins.min() == 0 and bins.max() == spec.NUM_BINS - 1
    # decoding a one-hot bin gives a brightness that falls back into the same bin
    centers = spec.bin_centers()
    np.testing.assert_array_equal(spec.brightness_to_bins(centers), np.arange(spec.NUM_BINS))
    # on 8-bit levels (how IR images are stored) a bin centre is at most 3.5 levels off
    levels = np.arange(256)
    assert np.abs(centers[spec.brightness_to_bins(levels)] - levels).max() == spec.BIN_WIDTH / 2 - 0.5
    assert np.abs(centers[bins] - b).max() <= spec.BIN_WIDTH / 2 + 0.5
    with pytest.raises(ValueError, match="t_max > t_min"):
        spec.to_brightness(t, 30.0, 30.0)


def _random_probs(rng, q=spec.NUM_BINS, h=3, w=4):
    logits = rng.randn(q, h, w) * 3
    p = np.exp(logits - logits.max(0))
    return p / p.sum(0)


def test_decodings():
    rng = np.random.RandomState(0)
    p = _random_probs(rng)
    c = spec.bin_centers()
    np.testing.assert_allclose(decoders.decode(p, "expectation"), np.einsum("q,qhw->hw", c, p))
    np.testing.assert_array_equal(decoders.decode(p, "argmax"), c[p.argmax(0)])
    ann = decoders.decode(p, "annealed", temperature=1.0)
    np.testing.assert_allclose(ann, decoders.decode(p, "expectation"))
    sharp = decoders.decode(p, "annealed", temperature=1e-3)
    np.testing.assert_allclose(sharp, decoders.decode(p, "argmax"), atol=1e-6)
    with pytest.raises(ValueError, match="unknown decoding"):
        decoders.decode(p, "median")


def test_default_decoding_needs_the_class_weights():
    """mmse divides eq. 1's weights out; a tool without the dataset falls back to the plain mean."""
    assert decoders.default_decoding(True) == "mmse" and decoders.default_decoding(False) == "expectation"


def test_annealed_default_is_zhang_et_al_temperature_worked_by_hand():
    """Q = 2 (bin centres 63.5 and 191.5), p = (0.25, 0.75). Annealed at T: weights p^(1/T)
    renormalised. By hand at Zhang et al.'s T = 0.38: (1/3)^(1/0.38) = 0.055516, so the
    first bin keeps 0.055516 / 1.055516 = 0.052596 and the mean is 191.5 - 128 * 0.052596
    = 184.768; at T = 1 it would be the plain expectation, 159.5."""
    p = np.array([0.25, 0.75]).reshape(2, 1, 1)
    assert decoders.ANNEAL_T == 0.38
    assert float(decoders.decode(p, "annealed")[0, 0]) == pytest.approx(184.768, abs=1e-3)
    assert float(decoders.decode(p, "annealed", temperature=1.0)[0, 0]) == pytest.approx(159.5, abs=1e-9)
    assert float(decoders.decode(p, "expectation")[0, 0]) == pytest.approx(159.5, abs=1e-9)
    assert float(decoders.decode(p, "argmax")[0, 0]) == 191.5


def test_mmse_divides_out_the_class_weights():
    rng = np.random.RandomState(1)
    p = _random_probs(rng)
    w = rng.uniform(0.2, 5.0, spec.NUM_BINS)
    q = p * w[:, None, None]
    q /= q.sum(0)                     # what a net trained with weights w outputs
    np.testing.assert_allclose(decoders.decode(q, "mmse", class_weights=w), decoders.decode(p, "expectation"))
    np.testing.assert_allclose(decoders.decode(p, "mmse", class_weights=np.ones(spec.NUM_BINS)),
                               decoders.decode(p, "expectation"))
    with pytest.raises(ValueError, match="class weights"):
        decoders.decode(p, "mmse")
    with pytest.raises(ValueError, match="3 class weights for 32 bins"):
        decoders.decode(p, "mmse", class_weights=np.ones(3))


def test_rebalance_weights_expectation_is_one():
    prior = spec.class_prior(np.array([0, 0, 0, 1, 2, 2, 31]), spec.NUM_BINS)
    w = spec.rebalance_weights(prior)
    assert np.isclose((prior * w).sum(), 1.0)
    assert w[5] > w[2] > w[0]          # unseen bins weigh most, the commonest least
    np.testing.assert_allclose(spec.rebalance_weights(np.full(8, 1 / 8.0)), np.ones(8))
    with pytest.raises(ValueError):
        spec.class_prior(np.array([], dtype=np.uint8))


def test_class_prior_and_weights_worked_by_hand():
    """Q = 4, train labels 0 0 0 1 1 3: every number below is worked out on paper, not
    with the functions under test, so a wrong lambda, mix or normalisation fails."""
    prior = spec.class_prior(np.array([[0, 0, 0], [1, 1, 3]], np.uint8), 4)
    np.testing.assert_allclose(prior, [3 / 6.0, 2 / 6.0, 0.0, 1 / 6.0], rtol=0, atol=1e-15)
    # Zhang et al.'s lambda = 1/2: mix = p/2 + 1/(2Q) = [3/8, 7/24, 1/8, 5/24], 1/mix = [8/3, 24/7, 8, 24/5];
    # sum_q p_q / mix_q = 4/3 + 8/7 + 4/5 = 344/105, so v = (1/mix) * 105/344 = [35, 45, 105, 63] / 43
    assert spec.REBALANCE_LAMBDA == 0.5
    np.testing.assert_allclose(spec.rebalance_weights(prior), np.array([35, 45, 105, 63]) / 43.0, rtol=1e-12)
    # lambda = 1/4: mix = 3p/4 + 1/16 = [7/16, 5/16, 1/16, 3/16], 1/mix = [16/7, 16/5, 16, 16/3];
    # sum_q p_q / mix_q = 8/7 + 16/15 + 8/9 = 976/315, so v = (1/mix) * 315/976 = [45, 63, 315, 105] / 61
    np.testing.assert_allclose(spec.rebalance_weights(prior, 0.25), np.array([45, 63, 315, 105]) / 61.0,
                               rtol=1e-12)
    # lambda = 0: 1/p = [2, 3, -, 6], the unseen bin takes the largest finite weight (6); sum p w = 3;
    # never a division by zero on the way
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_allclose(spec.rebalance_weights(prior, 0.0), [2 / 3.0, 1.0, 2.0, 2.0], rtol=1e-12)
    # lambda = 1: the prior is ignored, every weight is 1
    np.testing.assert_allclose(spec.rebalance_weights(prior, 1.0), np.ones(4), rtol=1e-12)


def test_rms_is_eq_2():
    y = np.array([[0.0, 10.0], [20.0, 30.0]])
    assert metrics.rms(y, y + 3) == pytest.approx(3.0)
    assert metrics.rms(y, np.zeros_like(y)) == pytest.approx(np.sqrt((0 + 100 + 400 + 900) / 4.0))
    with pytest.raises(ValueError, match="equal shapes"):
        metrics.rms(y, y[:1])


def test_dataset_readers_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset.json"):
        layout.read_dataset_info(str(tmp_path))
    assert layout.read_dataset_info(str(tmp_path), missing_ok=True) == {}
    (tmp_path / layout.DATASET_INFO_FILE).write_text("{not json")
    for missing_ok in (False, True):      # a dataset.json that exists is always checked
        with pytest.raises(ValueError, match="not valid JSON"):
            layout.read_dataset_info(str(tmp_path), missing_ok=missing_ok)
    (tmp_path / layout.DATASET_INFO_FILE).write_text(json.dumps({"num_bins": 32, "height": 120}))
    with pytest.raises(ValueError, match="missing 'width'"):
        layout.read_dataset_info(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="class_weights.txt"):
        layout.read_class_weights(str(tmp_path))
    np.savetxt(str(tmp_path / layout.CLASS_WEIGHTS_FILE), np.ones(5))
    with pytest.raises(ValueError, match="need 32 positive weights, got 5"):
        layout.read_class_weights(str(tmp_path))


def test_decodings_of_a_batch_equal_each_image_decoded_alone():
    """(N, Q, H, W) as the nets output it: every decoding reads the bin axis (-3), not axis 0."""
    rng = np.random.RandomState(4)
    batch = np.stack([_random_probs(rng), _random_probs(rng)])         # 2 x 32 x 3 x 4
    w = rng.uniform(0.2, 5.0, spec.NUM_BINS)
    for method in decoders.DECODINGS:
        if method == "sample":          # draws from one seeded stream: a batch's draws are not an image's alone
            continue
        got = decoders.decode(batch, method, class_weights=w)
        assert got.shape == (2, 3, 4), method
        for i in range(2):
            np.testing.assert_allclose(got[i], decoders.decode(batch[i], method, class_weights=w), err_msg=method)
    with pytest.raises(ValueError, match="3 class weights for 32 bins"):
        decoders.unweight(batch, np.ones(3))


def test_unweight_survives_zero_weights_and_zero_probabilities():
    """A bin with weight 0 (never seen with lambda 0) or a pixel whose probabilities are all 0 (float32
    underflow) gives finite numbers, not NaN."""
    p = np.zeros((4, 1, 2))
    p[:, 0, 0] = [0.1, 0.2, 0.3, 0.4]
    out = decoders.unweight(p, [0.0, 1.0, 1.0, 2.0])
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out[:, 0, 0], [1.0, 0.0, 0.0, 0.0], atol=1e-9)   # 0.1 / 1e-12 dominates
    np.testing.assert_array_equal(out[:, 0, 1], 0.0)
    # annealing takes the log of each probability: a 0 (float32 softmax underflow) is clipped, no
    # division-by-zero warning, and a pixel of all zeros decodes to the mean bin centre
    import warnings
    q = np.zeros((2, 1, 2))
    q[:, 0, 0] = [0.0, 1.0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = decoders.decode(q, "annealed")
    np.testing.assert_allclose(got[0], [191.5, 127.5], atol=1e-6)


def test_paper_numbers_as_the_paper_gives_them():
    """Table 1 (FLIR One: visible 640x480, IR 160x120, -20..120 C), Sec. 4.1 / 5 (1000 training
    pairs, 100 test), and the kit's stated choices (Q = 32 bins of 8 levels, lambda 0.5, seed 2017,
    1/11 of the pairs for testing below 1100, the 0.5..99.5 % window)."""
    assert spec.FLIR_ONE_VISIBLE_SIZE == (480, 640) and spec.FLIR_ONE_IR_SIZE == (120, 160)
    assert spec.FLIR_ONE_RANGE_C == (-20.0, 120.0)
    assert (spec.PAPER_TRAIN, spec.PAPER_TEST) == (1000, 100)
    assert (spec.DEFAULT_HEIGHT, spec.DEFAULT_WIDTH, spec.PAPER_HEIGHT, spec.PAPER_WIDTH) == (120, 160, 240, 320)
    assert (spec.NUM_BINS, spec.BRIGHTNESS_LEVELS, spec.BIN_WIDTH) == (32, 256, 8.0)
    assert spec.DEFAULT_TEST_FRACTION == pytest.approx(100 / 1100.0) and spec.SEED == 2017
    assert spec.DATASET_WINDOW_PERCENTILES == (0.5, 99.5)
    # bin edges by hand: 8 levels a bin, 255 in the last, centres 3.5 .. 251.5
    np.testing.assert_array_equal(spec.brightness_to_bins([0, 7.99, 8, 255, 300, -4]), [0, 0, 1, 31, 31, 0])
    np.testing.assert_array_equal(spec.bin_centers(4), [31.5, 95.5, 159.5, 223.5])
    # Q that does not divide 256: 3 bins 85.33 levels wide, centres 42.17, 127.5, 212.83
    np.testing.assert_allclose(spec.bin_centers(3), [128 / 3.0 - 0.5, 127.5, 640 / 3.0 - 0.5])
    assert spec.bin_centers().dtype == np.float64 and spec.bin_centers()[-1] == 251.5
    # 15..45 C: 30 C is 127.5 (255 / 2), below / above the window clip to 0 / 255
    np.testing.assert_allclose(spec.to_brightness([30.0, 0.0, 60.0], 15.0, 45.0), [127.5, 0.0, 255.0])
    assert spec.to_celsius(255.0, 15.0, 45.0) == 45.0
