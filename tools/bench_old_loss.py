"""The eq. 1 loss layers as they were before the speed-up (float64, full one-hot): the
benchmark's reference only. tools/benchmark.py times the training step with these and
with prototxt/digits_python_layers.py side by side; nothing trains with this file, and
the file DIGITS uploads is prototxt/digits_python_layers.py.
"""
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
    """Shared set-up for per-pixel losses over (N, Q, H, W) scores and (N, 1, H, W) labels."""

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
        self.ignore_label = params.get("ignore_label")

    def reshape(self, bottom, top):
        n, _, h, w = bottom[0].shape
        want = (n, 1, h, w)
        if tuple(bottom[1].shape) != want and tuple(bottom[1].shape) != (n, h, w):
            raise ValueError("%s: label shape %s does not match scores %s (want %s)"
                             % (type(self).__name__, tuple(bottom[1].shape), tuple(bottom[0].shape), want))
        top[0].reshape(1)

    def _labels(self, bottom):
        """Integer labels (N, H, W), per-pixel weights v(y) (0 where ignored) and the normaliser."""
        raw = bottom[1].data.reshape(bottom[0].shape[0], bottom[0].shape[2], bottom[0].shape[3])
        labels = np.rint(raw).astype(np.int64)
        valid = np.ones(labels.shape, dtype=bool)
        if self.ignore_label is not None:
            valid = labels != self.ignore_label
        bad = valid & ((labels < 0) | (labels >= self.num_classes) | (np.abs(raw - labels) > 1e-3))
        if np.any(bad):
            raise ValueError("%s: label %r outside the class indices 0..%d"
                             % (type(self).__name__, float(raw[bad].flat[0]), self.num_classes - 1))
        labels = np.where(valid, labels, 0)
        pixel_w = np.where(valid, self.weights[labels], 0.0)
        # SoftmaxWithLoss' VALID normalisation: non-ignored pixels, at least 1.
        norm = max(1.0, float(valid.sum()))
        return labels, pixel_w, norm

    def _onehot(self, labels):
        """(N, H, W) indices -> (N, Q, H, W) float64 one-hot (plain broadcasting: old numpy too)."""
        classes = np.arange(self.num_classes).reshape(1, self.num_classes, 1, 1)
        return (labels[:, np.newaxis] == classes).astype(np.float64)

    def _clear_label_diff(self, propagate_down, bottom):
        # Labels have no gradient; Caffe may still ask when force_backward is set.
        if len(propagate_down) > 1 and propagate_down[1]:
            bottom[1].diff[...] = 0


class WeightedSoftmaxLoss(_WeightedPixelLoss):
    """Eq. 1: L = -(1/#valid) sum_{n,h,w} v(y) log softmax(scores)_y over the Q channels."""

    def forward(self, bottom, top):
        scores = bottom[0].data.astype(np.float64)
        labels, pixel_w, norm = self._labels(bottom)
        shifted = scores - scores.max(axis=1, keepdims=True)   # stable softmax
        exp = np.exp(shifted)
        total = exp.sum(axis=1, keepdims=True)
        self.prob = exp / total
        onehot = self._onehot(labels)
        log_p = (shifted * onehot).sum(axis=1) - np.log(total[:, 0])
        self.onehot, self.pixel_w, self.norm = onehot, pixel_w, norm
        top[0].data[...] = -np.sum(pixel_w * log_p) / norm

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            grad = self.prob - self.onehot
            grad *= self.pixel_w[:, np.newaxis] * (float(top[0].diff.flat[0]) / self.norm)
            bottom[0].diff[...] = grad
        self._clear_label_diff(propagate_down, bottom)


class WeightedSigmoidCrossEntropyLoss(_WeightedPixelLoss):
    """The paper's alternative: one-hot targets, independent sigmoid cross-entropy per bin.

    L = -(1/#valid) sum_{n,h,w} v(y) sum_q [t_q log s(x_q) + (1 - t_q) log(1 - s(x_q))],
    t = one-hot(y). With all weights 1 this is Caffe's SigmoidCrossEntropyLoss on the
    one-hot targets (which divides by N only) divided by H*W.
    """

    def forward(self, bottom, top):
        x = bottom[0].data.astype(np.float64)
        labels, pixel_w, norm = self._labels(bottom)
        target = self._onehot(labels)
        # Stable -[t log s(x) + (1-t) log(1-s(x))] = max(x,0) - x t + log(1 + exp(-|x|)).
        per_bin = np.maximum(x, 0) - x * target + np.log1p(np.exp(-np.abs(x)))
        self.sigmoid = 0.5 * (1.0 + np.tanh(0.5 * x))
        self.target, self.pixel_w, self.norm = target, pixel_w, norm
        top[0].data[...] = np.sum(pixel_w * per_bin.sum(axis=1)) / norm

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            grad = (self.sigmoid - self.target) * self.pixel_w[:, np.newaxis]
            bottom[0].diff[...] = grad * (float(top[0].diff.flat[0]) / self.norm)
        self._clear_label_diff(propagate_down, bottom)
