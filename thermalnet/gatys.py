"""TN+PP: Gatys et al.'s style reconstruction, run with VGG-16 in pycaffe.

The paper (sec. 3.4, 5.2) post-processes each Thermalnet output with Gatys et al.'s
method: VGG-16 measures similarity, the Thermalnet output is the content and "an
original thermal image was used as the source for the style"; the image starts as
Gaussian white noise and is refined by gradient descent. Here:

* features: prototxt/vgg16_deploy.prototxt (conv part of VGG_ILSVRC_16_layers),
  weights supplied by the user (--vgg-weights); we cannot download them, and without
  them TN+PP is reported "not run", never approximated.
* content: relu4_2 (blob conv4_2), L_c = 1/2 sum (F - P)^2.
* style: relu1_1, relu2_1, relu3_1, relu4_1, relu5_1, equally weighted;
  E_l = 1/(4 N^2) sum (G - A)^2 with G = F F^T / M. That equals Gatys's
  1/(4 N^2 M^2) sum (F F^T - S S^T)^2 when both images have M positions, and stays
  meaningful when the IR reference has another size.
* the image is grey (thermal brightness 0..255), fed to VGG as B = G = R; its gradient
  is the sum over the three input channels' gradients, so the result stays grey.
* optimiser: L-BFGS as Gatys et al. (and neural-style's default), SciPy's L-BFGS-B
  with the pixels boxed to 0..255; or Adam (--optimizer adam), clipping to 0..255
  after each step -- the paper itself only says "gradient descent". Gradients come
  from Caffe's backward, injected at each feature layer in turn (deepest first)
  because the net has no loss layer of its own.

Cost: one iteration (forward to relu5_1 + backward to the image, no weight gradients)
takes about 0.4 s at 120x160 on 2 CPU cores, so the default 300 iterations are about
2 minutes per image.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from thermalnet import spec
from thermalnet.caffe_env import PROTOTXT_DIR

VGG_PROTOTXT = os.path.join(PROTOTXT_DIR, "vgg16_deploy.prototxt")
VGG_WEIGHTS_NAME = "VGG_ILSVRC_16_layers.caffemodel"
VGG_MEAN_BGR = (103.939, 116.779, 123.68)   # ImageNet mean pixel of VGG's training
CONTENT_LAYER = "conv4_2"
STYLE_LAYERS = ("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1")
CONTENT_WEIGHT = 1.0
STYLE_WEIGHT = 1e3          # Gatys et al.'s alpha/beta = 1e-3
ITERATIONS = 300
LEARNING_RATE = 4.0         # brightness levels per Adam step
INITS = ("noise", "content")
OPTIMIZERS = ("lbfgs", "adam")
NOISE_STD = 32.0            # white-noise init: N(mean of the content, NOISE_STD^2)


def unavailable_reason(vgg_weights: Optional[str]) -> Optional[str]:
    """Why TN+PP cannot run with these weights, or None when it can."""
    if not vgg_weights:
        return ("TN+PP not run: no VGG-16 weights given (--vgg-weights %s; not downloadable from here)"
                % VGG_WEIGHTS_NAME)
    if not os.path.isfile(vgg_weights):
        return "TN+PP not run: %s: no such VGG-16 weights file" % vgg_weights
    if os.path.getsize(vgg_weights) == 0:
        return "TN+PP not run: %s: empty file" % vgg_weights
    return None


def available(vgg_weights: Optional[str]) -> bool:
    """True when the VGG-16 weights needed for TN+PP are present."""
    return unavailable_reason(vgg_weights) is None


# -- losses on feature matrices F (N filters x M positions) -----------------------------
def gram(features: np.ndarray) -> np.ndarray:
    """G = F F^T / M for F of shape (N, M)."""
    f = np.asarray(features, dtype=np.float64)
    return f @ f.T / f.shape[1]


def style_loss(features: np.ndarray, target_gram: np.ndarray) -> Tuple[float, np.ndarray]:
    """E = 1/(4 N^2) sum (G - A)^2 and dE/dF = (G - A) F / (N^2 M)."""
    f = np.asarray(features, dtype=np.float64)
    n, m = f.shape
    diff = gram(f) - target_gram
    return float((diff ** 2).sum() / (4.0 * n * n)), diff @ f / (n * n * m)


def content_loss(features: np.ndarray, target: np.ndarray) -> Tuple[float, np.ndarray]:
    """L = 1/2 sum (F - P)^2 and dL/dF = F - P."""
    diff = np.asarray(features, dtype=np.float64) - target
    return float(0.5 * (diff ** 2).sum()), diff


class StyleReconstructor:
    """Gatys style reconstruction of grey images with a VGG-16 run in pycaffe."""

    def __init__(self, vgg_weights: str, prototxt: str = VGG_PROTOTXT, content_layer: str = CONTENT_LAYER,
                 style_layers: Sequence[str] = STYLE_LAYERS, content_weight: float = CONTENT_WEIGHT,
                 style_weight: float = STYLE_WEIGHT, gpu: Optional[int] = None):
        reason = unavailable_reason(vgg_weights)
        if reason:
            raise FileNotFoundError(reason)
        if not os.path.isfile(prototxt):
            raise FileNotFoundError("%s: no such VGG-16 prototxt" % prototxt)
        from thermalnet.caffe_env import use_device
        from thermalnet.inference import check_model
        check_model(prototxt, vgg_weights)      # a foreign or damaged file: one line, not Caffe's abort
        caffe = use_device(gpu)
        self.net = caffe.Net(prototxt, vgg_weights, caffe.TEST)
        self.content_layer = content_layer
        self.style_layers = tuple(style_layers)
        self.content_weight = float(content_weight)
        self.style_weight = float(style_weight)
        self.layer_names = list(self.net._layer_names)
        used = set(self.style_layers) | {content_layer}
        missing = [b for b in used if b not in self.net.blobs]
        if missing:
            raise ValueError("%s: no blobs %s" % (prototxt, ", ".join(sorted(missing))))
        # The last layer writing each blob: with in-place ReLUs that is reluX_Y, so the
        # features are rectified, as in Gatys et al.
        self.writer = {}
        for i, name in enumerate(self.layer_names):
            for top in self.net.top_names[name]:
                if top in used:
                    self.writer[top] = i
        self.order = sorted(used, key=lambda b: self.writer[b], reverse=True)   # deepest first
        self.first = 1 if self.net.layers[0].type == "Input" else 0

    # -- forward / backward ---------------------------------------------------------
    def _set_input(self, grey: np.ndarray) -> None:
        grey = np.asarray(grey, dtype=np.float32)
        if grey.ndim != 2:
            raise ValueError("expected an HxW grey image, got shape %s" % (grey.shape,))
        data = self.net.blobs["data"]
        shape = (1, 3) + grey.shape
        if tuple(data.data.shape) != shape:
            data.reshape(*shape)
            self.net.reshape()
        for c, m in enumerate(VGG_MEAN_BGR):
            data.data[0, c] = grey - m

    def features(self, grey: np.ndarray) -> Dict[str, np.ndarray]:
        """Rectified feature maps of the used layers as (N, M) float64 matrices."""
        self._set_input(grey)
        # Net._forward/_backward take layer indices; pycaffe's forward(end=...) wants the
        # end layer to also name a blob, which in-place ReLUs do not.
        self.net._forward(0, self.writer[self.order[0]])
        return {b: self.net.blobs[b].data[0].reshape(self.net.blobs[b].data.shape[1], -1).astype(np.float64)
                for b in self.order}

    def targets(self, content_grey: np.ndarray, style_grey: np.ndarray) -> dict:
        """Content features P of the TN output and style Grams A of the real IR image."""
        style = self.features(style_grey)
        grams = {b: gram(style[b]) for b in self.style_layers}
        content = self.features(content_grey)[self.content_layer].copy()
        return {"content": content, "grams": grams}

    def feature_losses(self, feats: Dict[str, np.ndarray], targets: dict) -> Tuple[float, Dict[str, np.ndarray], dict]:
        """Weighted content + style loss of given features, and its gradient per feature blob."""
        grads: Dict[str, np.ndarray] = {}
        lc, gc = content_loss(feats[self.content_layer], targets["content"])
        grads[self.content_layer] = self.content_weight * gc
        w = self.style_weight / len(self.style_layers)
        ls_total = 0.0
        for b in self.style_layers:
            ls, gs = style_loss(feats[b], targets["grams"][b])
            ls_total += w * ls
            grads[b] = grads.get(b, 0.0) + w * gs
        parts = {"content": self.content_weight * lc, "style": ls_total}
        return parts["content"] + parts["style"], grads, parts

    def backward(self, grads: Dict[str, np.ndarray]) -> np.ndarray:
        """d/d(grey image) of a loss whose gradients w.r.t. the feature blobs are `grads`.

        Uses the state of the last features() call. Each layer's gradient is injected
        into its blob, then backward runs down to the next shallower injection point;
        Caffe layers overwrite bottom diffs, so the diff found there is exactly the
        deeper layers' contribution, and the sum arrives at `data`.
        """
        for k, b in enumerate(self.order):
            diff = self.net.blobs[b].diff
            g = grads.get(b)
            g = 0.0 if g is None else np.asarray(g).reshape(diff.shape)
            if k == 0:
                diff[...] = g
            else:
                diff[...] += g
            end = self.writer[self.order[k + 1]] + 1 if k + 1 < len(self.order) else self.first
            self.net._backward(self.writer[b], end)
        return self.net.blobs["data"].diff[0].astype(np.float64).sum(axis=0)

    def loss_and_grad(self, grey: np.ndarray, targets: dict) -> Tuple[float, np.ndarray, dict]:
        """Total loss, its gradient w.r.t. the grey image (HxW float64), and the parts."""
        loss, grads, parts = self.feature_losses(self.features(grey), targets)
        return loss, self.backward(grads), parts

    # -- optimisation ---------------------------------------------------------------
    def run(self, content_grey: np.ndarray, style_grey: np.ndarray, iterations: int = ITERATIONS,
            lr: float = LEARNING_RATE, init: str = "noise", seed: int = spec.SEED, optimizer: str = "lbfgs",
            progress: bool = False) -> Tuple[np.ndarray, List[float]]:
        """Reconstruct: returns (HxW brightness 0..255 float64, loss at every evaluation).

        lr is used by Adam only; L-BFGS runs at most `iterations` iterations.
        """
        content = np.asarray(content_grey, dtype=np.float64)
        if init == "noise":
            rng = np.random.RandomState(seed)
            x = np.clip(rng.normal(content.mean(), NOISE_STD, size=content.shape), 0, 255)
        elif init == "content":
            x = content.copy()
        else:
            raise ValueError("unknown init %r (choose from %s)" % (init, ", ".join(INITS)))
        if optimizer not in OPTIMIZERS:
            raise ValueError("unknown optimizer %r (choose from %s)" % (optimizer, ", ".join(OPTIMIZERS)))
        targets = self.targets(content, style_grey)
        history: List[float] = []
        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=iterations, desc="gatys %s" % optimizer, unit="it", leave=False)
        try:
            if optimizer == "lbfgs":
                x = self._lbfgs(x, targets, iterations, history, bar)
            else:
                x = self._adam(x, targets, iterations, lr, history, bar)
        finally:
            if bar is not None:
                bar.close()
        return x, history

    def _adam(self, x, targets, iterations, lr, history, bar):
        m, v = np.zeros_like(x), np.zeros_like(x)
        b1, b2, eps = 0.9, 0.999, 1e-8
        for t in range(1, iterations + 1):
            loss, g, _ = self.loss_and_grad(x, targets)
            history.append(loss)
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            x = x - lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
            np.clip(x, 0, 255, out=x)
            if bar is not None:
                bar.update(1)
        return x

    def _lbfgs(self, x, targets, iterations, history, bar):
        from scipy.optimize import Bounds, minimize
        shape = x.shape

        def fun(flat):
            loss, g, _ = self.loss_and_grad(flat.reshape(shape), targets)
            history.append(loss)
            return loss, g.ravel()

        def step(_):
            if bar is not None:
                bar.update(1)

        res = minimize(fun, x.ravel(), jac=True, method="L-BFGS-B", bounds=Bounds(0.0, 255.0), callback=step,
                       options={"maxiter": iterations, "maxfun": iterations + iterations // 4 + 5,
                                "ftol": 0.0, "gtol": 0.0})
        return np.clip(res.x.reshape(shape), 0, 255)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m thermalnet.gatys",
                                description="TN+PP: Gatys style reconstruction of a Thermalnet output, "
                                            "with a real IR image as the style source (VGG-16 in pycaffe).")
    p.add_argument("--vgg-weights", metavar="VGG.caffemodel",
                   help="VGG_ILSVRC_16_layers.caffemodel (supplied by you)")
    p.add_argument("--content", required=True, help="Thermalnet output, 8-bit grey PNG")
    p.add_argument("--style", required=True, help="real IR image, 8-bit grey PNG (style source)")
    p.add_argument("--out", required=True, help="output 8-bit grey PNG")
    p.add_argument("--iterations", type=int, default=ITERATIONS)
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="lbfgs", help="Gatys et al.: L-BFGS")
    p.add_argument("--lr", type=float, default=LEARNING_RATE, help="Adam step in brightness levels")
    p.add_argument("--init", choices=INITS, default="noise", help="paper: white noise")
    p.add_argument("--content-weight", type=float, default=CONTENT_WEIGHT)
    p.add_argument("--style-weight", type=float, default=STYLE_WEIGHT)
    from thermalnet import cli
    cli.add_gpu(p)
    return p


def _read_grey(path: str) -> np.ndarray:
    from thermalnet import imageio
    ir = imageio.read_ir(path)
    if ir.units != "brightness":
        raise ValueError("%s: expected an 8-bit grey brightness image, got %s values" % (path, ir.units))
    return ir.values.astype(np.float64)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from thermalnet import cli
    return cli.run(lambda: _main(args))


def _main(args) -> None:
    reason = unavailable_reason(args.vgg_weights)
    if reason:
        raise FileNotFoundError(reason)     # no or unusable VGG-16 weights: an input error like any other
    content, style = _read_grey(args.content), _read_grey(args.style)
    rec = StyleReconstructor(args.vgg_weights, content_weight=args.content_weight,
                             style_weight=args.style_weight, gpu=args.gpu)
    out, history = rec.run(content, style, iterations=args.iterations, lr=args.lr, init=args.init,
                           optimizer=args.optimizer, progress=True)
    from thermalnet import imageio
    imageio.write_png(args.out, np.clip(np.rint(out), 0, 255).astype(np.uint8))
    print("gatys: %s written; loss %.4g -> %.4g over %d iterations" % (args.out, history[0], history[-1],
                                                                        len(history)))


if __name__ == "__main__":
    sys.exit(main())
