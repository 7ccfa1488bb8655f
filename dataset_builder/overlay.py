"""Alignment evidence for a FLIR file: edge-agreement scores and an overlay figure.

The figure puts the IR edges (red) and false colour over three versions of the
visible photo resampled onto the IR grid: the naive centre-resize (no tags), the
crop given by the file's Real2IR/OffsetX/OffsetY tags, and that crop refined by
an edge search (parallax of close objects). Each panel is titled with its edge
agreement (NCC of gradient magnitudes), the number the tests check.
"""
from __future__ import annotations

import os
from typing import Dict

import cv2
import numpy as np

from . import flir
from thermalnet.imageio import write_png


def _on_ir_grid(rgb: np.ndarray, ir_shape) -> np.ndarray:
    return cv2.resize(rgb, (ir_shape[1], ir_shape[0]), interpolation=cv2.INTER_AREA)


def alignment_scores(path: str, refine_px: int = 24) -> Dict:
    """Edge agreement of the naive, tag-aligned and refined visible crops with the IR."""
    import flyr

    tags = flir.read_tags([path])[path] if flir.exiftool_path() else {}
    pair = flir.read_flir(path, tags=tags or None)          # validates, raises FlirError
    th = flyr.unpack(path)
    rgb = np.ascontiguousarray(th.optical[:, :, :3])
    celsius = np.asarray(th.celsius, dtype=np.float32)
    tags = dict(flir.tags_from_flyr(th), **{k: v for k, v in tags.items() if k in flir.ALIGN_TAGS})
    naive = _on_ir_grid(flir.naive_crop(rgb, celsius.shape), celsius.shape)
    out = {"file": os.path.basename(path), "naive": flir.edge_agreement(naive, celsius),
           "panels": {"naive": (naive, celsius)}}
    vis, ir, _ = flir.aligned_crop(rgb, celsius, tags, path=path)
    aligned = _on_ir_grid(vis, ir.shape)
    out["tags"] = flir.crop_agreement(vis, ir)
    out["panels"]["tags"] = (aligned, ir)
    if refine_px > 0:
        dx, dy, _ = flir.refine_shift(rgb, celsius, tags, refine_px)
        vis, ir, _ = flir.aligned_crop(rgb, celsius, tags, (dx, dy), path=path)
        refined = _on_ir_grid(vis, ir.shape)
        out["refined"] = flir.crop_agreement(vis, ir)
        out["refine_shift"] = [int(dx), int(dy)]
        out["panels"]["refined"] = (refined, ir)
    out["visible_crop_shape"] = list(pair.visible.shape[:2])
    return out


def _panel(vis: np.ndarray, celsius: np.ndarray, display_w: int = 320) -> np.ndarray:
    """Grey photo, IR in false colour at 40 %, strongest IR edges in red."""
    scale = display_w / float(vis.shape[1])
    size = (display_w, int(round(vis.shape[0] * scale)))
    grey = cv2.cvtColor(vis, cv2.COLOR_RGB2GRAY)
    grey = cv2.cvtColor(cv2.resize(grey, size, interpolation=cv2.INTER_LINEAR), cv2.COLOR_GRAY2RGB)
    norm = (celsius - celsius.min()) / max(float(np.ptp(celsius)), 1e-6)
    colour = cv2.applyColorMap((norm * 255).astype(np.uint8), cv2.COLORMAP_INFERNO)[:, :, ::-1]
    colour = cv2.resize(colour, size, interpolation=cv2.INTER_LINEAR)
    out = (0.6 * grey + 0.4 * colour).astype(np.uint8)
    # thin IR edges: Canny on the upsampled, normalised IR, thresholds from its own gradients
    ir8 = cv2.GaussianBlur(cv2.resize((norm * 255).astype(np.uint8), size, interpolation=cv2.INTER_LINEAR),
                           (0, 0), 1.5)
    hi = float(np.percentile(flir.edge_map(ir8), 92))
    mask = cv2.dilate(cv2.Canny(ir8, 0.4 * hi, hi, L2gradient=True), np.ones((2, 2), np.uint8)) > 0
    out[mask] = (255, 0, 0)
    return out


def write_overlay(path: str, out_png: str, refine_px: int = 24) -> Dict:
    """Write the three-panel alignment figure for one FLIR file; return the scores."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scores = alignment_scores(path, refine_px)
    names = [k for k in ("naive", "tags", "refined") if k in scores["panels"]]
    titles = {"naive": "naive centre-resize", "tags": "Real2IR/Offset tags", "refined": "tags + edge refinement"}
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 4.6))
    for ax, name in zip(np.atleast_1d(axes), names):
        vis, ir = scores["panels"][name]
        ax.imshow(_panel(vis, ir))
        extra = " shift %s" % scores["refine_shift"] if name == "refined" else ""
        ax.set_title("%s%s\nedge agreement %.3f" % (titles[name], extra, scores[name]), fontsize=9)
        ax.axis("off")
    fig.suptitle("%s: IR edges (red) and false colour over the visible photo" % scores["file"], fontsize=10)
    fig.tight_layout()
    folder = os.path.dirname(os.path.abspath(out_png))
    os.makedirs(folder, exist_ok=True)
    fig.canvas.draw()
    img = np.asarray(fig.canvas.buffer_rgba())[:, :, :3]
    plt.close(fig)
    write_png(out_png, np.ascontiguousarray(img))
    return {k: v for k, v in scores.items() if k != "panels"}
