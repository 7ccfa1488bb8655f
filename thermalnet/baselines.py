"""Trivial predictors scored on the same test images, so Table 2 shows what the network learned.

- mean_ir: the per-pixel mean training IR image. The train split's brightness is kept
  only as bin indices (train_db/labels), so it is decoded with the bin centres; the
  quantisation error of a single pixel is up to BIN_WIDTH/2 but it is near zero-mean,
  so the mean image is within a fraction of a brightness level of the true one.
- constant: that image's overall mean brightness, one number for every pixel.
- fitted_luminance: the visible image's luminance mapped to IR brightness by the straight
  line IR = a * Y + b fitted by least squares over every pixel of the TRAINING split
  (bin-centre labels, as above; their quantisation error is nearly independent of Y, so
  it barely moves the fit), clipped to 0..255. The fair grayscale baseline: plain
  luminance is on the visible camera's scale, not the IR window's, and loses for that
  reason alone. a, b and the pixel count are recorded (Baselines.fit, eval.json).
- luminance: the visible image's luminance (ITU-R BT.601 weights) used directly as
  brightness 0..255 -- "bright in TV = hot in IR", unfitted (kept for reference).
- quantised_gt (a floor, not a baseline): the real IR image pushed through the Q bins
  and back to bin centres. Argmax decoding of a perfect classifier scores exactly this,
  so it is the resolution limit of the classification formulation at this Q.
"""
from __future__ import annotations

import csv
import os
from typing import Dict, List, Optional

import numpy as np

from thermalnet import layout, spec

BASELINES = ("mean_ir", "fitted_luminance", "constant", "luminance")
BASELINE_LABELS = {
    "mean_ir": "Mean training IR image",
    "fitted_luminance": "Visible luminance fitted to IR (least squares on the training split)",
    "constant": "Constant mean brightness",
    "luminance": "Visible luminance as IR (unfitted)",
    "quantised_gt": "Real IR quantised to Q bins (floor)",
}
LUMA_WEIGHTS = (0.299, 0.587, 0.114)   # R, G, B (ITU-R BT.601)


def read_manifest(dataset: str, split: Optional[str] = "test") -> List[Dict]:
    """manifest.csv rows (all, or one split) in file order."""
    path = os.path.join(dataset, layout.MANIFEST_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError("%s: no such manifest" % path)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and ("id" not in rows[0] or "split" not in rows[0]):
        raise ValueError("%s: manifest needs columns id and split" % path)
    return [r for r in rows if split is None or r["split"] == split]


def load_test_pair(dataset: str, image_id: str):
    """(visible RGB HxWx3 uint8, IR brightness HxW float64) of one test image.

    Read by thermalnet.imageio (a bad file is a one-line ImageReadError naming it).
    """
    from thermalnet.imageio import read_gray8, read_rgb
    vis = read_rgb(os.path.join(dataset, layout.TEST_DIR, "visible", image_id + ".png"))
    ir = read_gray8(os.path.join(dataset, layout.TEST_DIR, "ir", image_id + ".png"))
    return vis, ir.astype(np.float64)


def train_statistics(dataset: str, num_bins: Optional[int] = None) -> Dict:
    """One pass over the training LMDBs: the mean IR image and the least-squares luminance fit.

    Returns {"mean_image": HxW float64, "fit": {"a", "b", "pixels", "images", "r2"}}; the fit
    minimises sum (a*Y + b - IR)^2 over every training pixel (Y: BT.601 luma of the BGR
    features, IR: bin-centre brightness of the labels). Mirrored copies, when the dataset
    has them, repeat the same (Y, IR) pixel pairs and so leave the fit unchanged.
    """
    from thermalnet.lmdb_io import lmdb_count, read_lmdb
    num_bins = num_bins or int(layout.read_dataset_info(dataset)["num_bins"])
    centers = spec.bin_centers(num_bins)
    lab_path = os.path.join(dataset, layout.TRAIN_DB, layout.LABELS)
    feat_path = os.path.join(dataset, layout.TRAIN_DB, layout.FEATURES)
    for p in (feat_path, lab_path):
        if not os.path.isdir(p):
            raise FileNotFoundError("%s: no LMDB folder" % p)
    if lmdb_count(feat_path) != lmdb_count(lab_path):
        raise ValueError("%s and %s: different numbers of entries (%d vs %d)"
                         % (feat_path, lab_path, lmdb_count(feat_path), lmdb_count(lab_path)))
    total, n = None, 0
    sy = syy = sir = syir = sirir = 0.0
    pixels = 0
    for (kf, feat), (kl, lab) in zip(read_lmdb(feat_path), read_lmdb(lab_path)):
        if kf != kl:
            raise ValueError("%s and %s: keys differ (%s vs %s), features and labels are not paired"
                             % (feat_path, lab_path, kf, kl))
        if lab.max() >= num_bins:
            raise ValueError("%s: label %d >= num_bins %d" % (lab_path, int(lab.max()), num_bins))
        b = centers[lab[0].astype(np.int64)]
        if feat.shape[0] != 3 or feat.shape[1:] != b.shape:
            raise ValueError("%s: feature %s is %s, label is %s" % (feat_path, kf, feat.shape, b.shape))
        total = b if total is None else total + b
        n += 1
        y = luminance(feat[::-1].transpose(1, 2, 0))          # BGR CxHxW -> RGB HxWx3 -> luma
        sy += y.sum()
        syy += (y * y).sum()
        sir += b.sum()
        syir += (y * b).sum()
        sirir += (b * b).sum()
        pixels += b.size
    if n == 0:
        raise ValueError("%s: empty training label LMDB" % lab_path)
    var_y = syy / pixels - (sy / pixels) ** 2
    cov = syir / pixels - (sy / pixels) * (sir / pixels)
    var_ir = sirir / pixels - (sir / pixels) ** 2
    a = cov / var_y if var_y > 1e-12 else 0.0
    b0 = sir / pixels - a * sy / pixels
    r2 = (cov * cov / (var_y * var_ir)) if var_y > 1e-12 and var_ir > 1e-12 else 0.0
    return {"mean_image": total / n,
            "fit": {"a": float(a), "b": float(b0), "pixels": int(pixels), "images": int(n), "r2": float(r2),
                    "formula": "IR = a * luma(visible) + b, least squares over the training split"}}


def mean_train_ir(dataset: str, num_bins: Optional[int] = None) -> np.ndarray:
    """Per-pixel mean of the training labels decoded to bin-centre brightness (HxW float64)."""
    return train_statistics(dataset, num_bins)["mean_image"]


def luminance(rgb: np.ndarray) -> np.ndarray:
    """RGB uint8 -> luma 0..255 (float64)."""
    rgb = np.asarray(rgb, dtype=np.float64)
    return rgb[..., 0] * LUMA_WEIGHTS[0] + rgb[..., 1] * LUMA_WEIGHTS[1] + rgb[..., 2] * LUMA_WEIGHTS[2]


def quantised(ir: np.ndarray, num_bins: int) -> np.ndarray:
    return spec.bin_centers(num_bins)[spec.brightness_to_bins(ir, num_bins).astype(np.int64)]


class Baselines:
    """Predictions of every baseline for one dataset (the training mean is computed once)."""

    def __init__(self, dataset: str):
        info = layout.read_dataset_info(dataset)
        self.num_bins = int(info["num_bins"])
        stats = train_statistics(dataset, self.num_bins)
        self.mean_image = stats["mean_image"]
        self.mean_value = float(self.mean_image.mean())
        self.fit = stats["fit"]

    def predict(self, name: str, visible_rgb: np.ndarray, ir: Optional[np.ndarray] = None) -> np.ndarray:
        h, w = visible_rgb.shape[:2]
        if name == "mean_ir":
            if self.mean_image.shape != (h, w):
                raise ValueError("mean training IR image is %s but the test image is %s"
                                 % (self.mean_image.shape, (h, w)))
            return self.mean_image
        if name == "constant":
            return np.full((h, w), self.mean_value)
        if name == "fitted_luminance":
            return np.clip(self.fit["a"] * luminance(visible_rgb) + self.fit["b"], 0, spec.BRIGHTNESS_LEVELS - 1)
        if name == "luminance":
            return luminance(visible_rgb)
        if name == "quantised_gt":
            if ir is None:
                raise ValueError("the quantised ground truth needs the IR image")
            return quantised(ir, self.num_bins)
        raise ValueError("unknown baseline %r (choose from %s)" % (name, ", ".join(BASELINE_LABELS)))
