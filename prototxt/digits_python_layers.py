"""Thermalnet's loss (eq. 1 of Kniaz et al. 2017) as Caffe Python layers.

This is the file DIGITS uploads next to a custom network ("Python layers file"),
so it must stand alone: numpy and caffe only, nothing from the kit, and plain
Python 2.7/3 with old-numpy calls (DIGITS itself runs on Python 2). Networks use
it as

    python_param { module: "digits_python_layers" layer: "WeightedSoftmaxLoss"
                   param_str: '{"class_weights": "class_weights.txt"}' }

and give the layer `loss_weight: 1` (Caffe treats a Python layer as a loss only
when told). param_str is JSON:
    class_weights  path of a text file with Q numbers, v(q) of eq. 1 (one per line).
                   Relative paths are tried against the working directory (a
                   DIGITS job folder), then against the folder named by the
                   environment variable THERMALNET_DATASET.
    ignore_label   optional integer label whose pixels contribute nothing.

Why a Python layer: BVLC Caffe 1.0's SoftmaxWithLoss has no per-class weights and
InfogainLoss' `axis` field is missing from the other Caffes DIGITS runs on.
Normalisation follows SoftmaxWithLoss' default (VALID): the weighted sum of eq. 1
is divided by the number of non-ignored pixels, so with all weights 1 the layer
equals Caffe's SoftmaxWithLoss exactly, and the loss scale does not depend on the
batch or image size (the learning rate transfers between 120x160 and 240x320).
"""
from __future__ import division

import json
import os

import numpy as np

import caffe

DATASET_ENV = "THERMALNET_DATASET"
_KNOWN_KEYS = ("class_weights", "ignore_label")


def resolve_weights_path(path):
    """Absolute paths as they are; relative ones against cwd, then $THERMALNET_DATASET."""
    if os.path.isabs(path) or os.path.exists(path):
        return path
    root = os.environ.get(DATASET_ENV)
    if root:
        candidate = os.path.join(root, path)
        if os.path.exists(candidate):
            return candidate
    return path


def load_class_weights(path, num_classes):
    """Read v(q) for q = 0..Q-1; any defect is a one-line ValueError naming the file."""
    resolved = resolve_weights_path(path)
    where = "class weights file %s" % resolved
    if resolved != path:
        where += " (from %s)" % path
    if not os.path.isfile(resolved):
        hint = " (relative paths are tried in the working directory %s" % os.getcwd()
        hint += (", then in $%s=%s)" % (DATASET_ENV, os.environ[DATASET_ENV])) if os.environ.get(DATASET_ENV) \
            else (", then in $%s, which is not set)" % DATASET_ENV)
        raise ValueError("%s: no such file%s" % (where, hint))
    try:
        with open(resolved) as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError("%s: unreadable (%s)" % (where, exc))
    values = []
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        for token in line.split():
            try:
                values.append(float(token))
            except ValueError:
                raise ValueError("%s: line %d: %r is not a number" % (where, lineno, token))
    weights = np.asarray(values, dtype=np.float64)
    if weights.size != num_classes:
        raise ValueError("%s: has %d weights but the network scores %d classes (conv10 num_output)"
                         % (where, weights.size, num_classes))
    if not np.all(np.isfinite(weights)):
        raise ValueError("%s: contains non-finite weights" % where)
    if np.any(weights < 0):
        raise ValueError("%s: contains negative weights" % where)
    return weights


def _parse_param_str(param_str, layer):
    try:
        params = json.loads(param_str) if param_str and param_str.strip() else {}
    except ValueError as exc:
        raise ValueError("%s: param_str is not JSON (%s): %r" % (layer, exc, param_str))
    if not isinstance(params, dict):
        raise ValueError("%s: param_str must be a JSON object, got %r" % (layer, param_str))
    unknown = sorted(set(params) - set(_KNOWN_KEYS))
    if unknown:
        raise ValueError("%s: unknown param_str keys %s (known: %s)" % (layer, unknown, ", ".join(_KNOWN_KEYS)))
    if "class_weights" not in params:
        raise ValueError('%s: param_str needs "class_weights": path of the Q-line weights file' % layer)
    ignore = params.get("ignore_label")
    if ignore is not None and (isinstance(ignore, bool) or not isinstance(ignore, int)):
        raise ValueError("%s: ignore_label must be an integer, got %r" % (layer, ignore))
    return params


class _WeightedPixelLoss(caffe.Layer):
    """Shared set-up for per-pixel losses over (N, Q, H, W) scores and (N, 1, H, W) labels.

    Speed (the loss runs every training step): all work is float32 in buffers
    allocated by reshape() when the shape changes, written in place with ufunc out=
    arguments; no one-hot of N x Q x H x W is ever built -- the label's score and the
    label's gradient entry are reached through flat indices (n, y, h, w). Only the
    final sum over pixels is accumulated in float64.
    """

    def setup(self, bottom, top):
        name = type(self).__name__
        if len(bottom) != 2:
            raise ValueError("%s needs two bottoms (scores N x Q x H x W, label N x 1 x H x W), got %d"
                             % (name, len(bottom)))
        if len(top) != 1:
            raise ValueError("%s has one top (the loss), got %d" % (name, len(top)))
        if len(bottom[0].shape) != 4:
            raise ValueError("%s: scores must be N x Q x H x W, got shape %s" % (name, tuple(bottom[0].shape)))
        params = _parse_param_str(self.param_str, name)
        self.num_classes = int(bottom[0].shape[1])
        self.weights = load_class_weights(params["class_weights"], self.num_classes)
        self.weights32 = self.weights.astype(np.float32)
        self.ignore_label = params.get("ignore_label")
        self._shape = None

    def reshape(self, bottom, top):
        n, q, h, w = [int(d) for d in bottom[0].shape]
        want = (n, 1, h, w)
        if tuple(bottom[1].shape) != want and tuple(bottom[1].shape) != (n, h, w):
            raise ValueError("%s: label shape %s does not match scores %s (want %s)"
                             % (type(self).__name__, tuple(bottom[1].shape), tuple(bottom[0].shape), want))
        top[0].reshape(1)
        if self._shape != (n, q, h, w):      # Caffe calls reshape every step: allocate on change only
            self._allocate(n, q, h, w)

    def _allocate(self, n, q, h, w):
        self._shape = (n, q, h, w)
        pix = (n, h, w)
        self.big = np.empty((n, q, h, w), np.float32)           # exp(scores) (or exp(scores - max)), or sigmoid work
        self.pix_a = np.empty(pix, np.float32)                   # per-pixel float32 work buffers
        self.pix_b = np.empty(pix, np.float32)
        self.pix_c = np.empty(pix, np.float32)
        self.pixel_w = np.empty(pix, np.float32)                 # v(y), 0 where ignored
        self.pix_64 = np.empty(pix, np.float64)                  # for the float64 sum
        self.labels = np.empty(pix, np.intp)
        self.flat = np.empty(pix, np.intp)                       # flat index of (n, y, h, w)
        self.valid = np.empty(pix, np.bool_)
        self.invalid = np.empty(pix, np.bool_)
        # Flat index of (n, 0, h, w) in an (N, Q, H, W) array; + y*H*W selects bin y.
        self.base = (np.arange(n, dtype=np.intp).reshape(n, 1, 1) * (q * h * w)
                     + np.arange(h * w, dtype=np.intp).reshape(1, h, w))
        self.norm = 1.0

    def _labels(self, bottom):
        """Fill self.labels (N, H, W), self.flat, self.pixel_w (0 where ignored); set self.norm."""
        n, q, h, w = self._shape
        raw = bottom[1].data.reshape(n, h, w)
        rounded, labels = self.pix_a, self.labels
        np.rint(raw, out=rounded)
        np.copyto(labels, rounded, casting="unsafe")
        np.subtract(raw, rounded, out=self.pix_b)
        np.abs(self.pix_b, out=self.pix_b)
        if self.ignore_label is None:
            count = labels.size
            bad = labels.min() < 0 or labels.max() >= q or self.pix_b.max() > 1e-3
        else:
            invalid = self.invalid
            np.equal(labels, self.ignore_label, out=invalid)
            np.logical_not(invalid, out=self.valid)
            count = int(np.count_nonzero(self.valid))
            np.copyto(labels, 0, where=invalid)
            np.copyto(self.pix_b, 0, where=invalid)
            bad = count and (labels.min() < 0 or labels.max() >= q or self.pix_b.max() > 1e-3)
        if bad:
            self._raise_bad_label(raw, labels)
        np.take(self.weights32, labels, out=self.pixel_w, mode="clip")
        if self.ignore_label is not None:
            np.copyto(self.pixel_w, 0, where=self.invalid)
        np.multiply(labels, h * w, out=self.flat)
        self.flat += self.base
        # SoftmaxWithLoss' VALID normalisation: non-ignored pixels, at least 1.
        self.norm = max(1.0, float(count))

    def _raise_bad_label(self, raw, labels):
        """The slow path: find the first offending value for the message."""
        rounded = np.rint(raw)
        valid = np.ones(raw.shape, dtype=bool) if self.ignore_label is None else rounded != self.ignore_label
        bad = valid & ((rounded < 0) | (rounded >= self.num_classes) | (np.abs(raw - rounded) > 1e-3))
        raise ValueError("%s: label %r outside the class indices 0..%d"
                         % (type(self).__name__, float(raw[bad].flat[0]), self.num_classes - 1))

    def _weighted_sum(self, per_pixel):
        """sum over pixels of v(y) * per_pixel, accumulated in float64."""
        np.multiply(self.pixel_w, per_pixel, out=self.pix_64)
        return float(self.pix_64.sum())

    def _subtract_at_labels(self, diff, amount):
        """diff[n, y, h, w] -= amount[n, h, w] (one entry per pixel, no one-hot)."""
        flat = diff.reshape(-1)
        at = self.pix_c
        np.take(flat, self.flat, out=at, mode="clip")
        at -= amount
        np.put(flat, self.flat, at, mode="clip")

    def _clear_label_diff(self, propagate_down, bottom):
        # Labels have no gradient; Caffe may still ask when force_backward is set.
        if len(propagate_down) > 1 and propagate_down[1]:
            bottom[1].diff[...] = 0


class WeightedSoftmaxLoss(_WeightedPixelLoss):
    """Eq. 1: L = -(1/#valid) sum_{n,h,w} v(y) log softmax(scores)_y over the Q channels.

    Forward keeps e = exp(s) and its channel sum Z; backward writes
    e * v / (Z * #valid) into the scores' diff and subtracts v / #valid at the label.
    Unshifted exp reads the scores once instead of three times (max, subtract, exp):
    it is used when every Z lies in [exp(-30), exp(30)], where log p_y = s_y - log Z
    keeps float32 precision; otherwise (large scores, overflow, NaN) forward redoes
    it the stable way, e = exp(s - max).
    """

    LOG_Z_BOUND = 30.0      # |log Z| above this: the max-shifted softmax
    Z_BOUND = float(np.exp(LOG_Z_BOUND))

    def forward(self, bottom, top):
        x = bottom[0].data
        self._labels(bottom)
        shift, total, log_p = self.pix_a, self.pix_b, self.pix_c
        e = self.big
        with np.errstate(over="ignore", under="ignore"):
            np.exp(x, out=e)
        np.sum(e, axis=1, out=total)
        shifted = not (total.min() >= 1.0 / self.Z_BOUND and total.max() <= self.Z_BOUND)   # NaN fails both
        if shifted:
            np.amax(x, axis=1, out=shift)                     # stable softmax
            np.subtract(x, shift[:, np.newaxis], out=e)
            np.exp(e, out=e)
            np.sum(e, axis=1, out=total)
        # log p_y = s_y - shift - log Z
        np.take(x.reshape(-1), self.flat, out=log_p, mode="clip")
        if shifted:
            log_p -= shift
        np.log(total, out=shift)                              # shift no longer needed
        log_p -= shift
        top[0].data[...] = -self._weighted_sum(log_p) / self.norm

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            scale = float(top[0].diff.flat[0]) / self.norm
            total, factor = self.pix_b, self.pix_a
            np.divide(self.pixel_w, total, out=factor)        # v / Z
            factor *= scale
            diff = bottom[0].diff
            np.multiply(self.big, factor[:, np.newaxis], out=diff)   # v p / #valid
            np.multiply(self.pixel_w, scale, out=factor)
            self._subtract_at_labels(diff, factor)             # - v / #valid at the label
        self._clear_label_diff(propagate_down, bottom)


class WeightedSigmoidCrossEntropyLoss(_WeightedPixelLoss):
    """The paper's alternative: one-hot targets, independent sigmoid cross-entropy per bin.

    L = -(1/#valid) sum_{n,h,w} v(y) sum_q [t_q log s(x_q) + (1 - t_q) log(1 - s(x_q))],
    t = one-hot(y). With all weights 1 this is Caffe's SigmoidCrossEntropyLoss on the
    one-hot targets (which divides by N only) divided by H*W. Computed without t:
    sum_q [...] = sum_q softplus(x_q) - x_y, and the gradient is v (s(x) - t) / #valid.
    """

    def forward(self, bottom, top):
        x = bottom[0].data
        self._labels(bottom)
        b = self.big
        # softplus(x) = max(x, 0) + log(1 + exp(-|x|)), stable for any x.
        np.abs(x, out=b)
        np.negative(b, out=b)
        np.exp(b, out=b)
        np.log1p(b, out=b)
        b += np.maximum(x, 0, out=self.big_b)
        per_pixel = self.pix_a
        np.sum(b, axis=1, out=per_pixel)
        np.take(x.reshape(-1), self.flat, out=self.pix_c, mode="clip")
        per_pixel -= self.pix_c
        top[0].data[...] = self._weighted_sum(per_pixel) / self.norm

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            scale = float(top[0].diff.flat[0]) / self.norm
            x, diff, factor = bottom[0].data, bottom[0].diff, self.pix_a
            # sigmoid(x) = (1 + tanh(x / 2)) / 2, stable for any x.
            np.multiply(x, 0.5, out=self.big)
            np.tanh(self.big, out=self.big)
            np.multiply(self.pixel_w, 0.5 * scale, out=factor)
            self.big += 1.0
            np.multiply(self.big, factor[:, np.newaxis], out=diff)
            np.multiply(self.pixel_w, scale, out=factor)
            self._subtract_at_labels(diff, factor)
        self._clear_label_diff(propagate_down, bottom)

    def _allocate(self, n, q, h, w):
        _WeightedPixelLoss._allocate(self, n, q, h, w)
        self.big_b = np.empty((n, q, h, w), np.float32)
