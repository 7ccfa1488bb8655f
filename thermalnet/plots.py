"""PNG figures of a run: the loss curve (paper Fig. 8), Table 2 bars, TV|IR|synthetic IR triptychs.

Matplotlib with the Agg back-end, so figures render on a head-less build machine.
Every figure is saved to a temp file and renamed, so a report never links a half-written PNG.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Dict, List, Optional, Sequence

import numpy as np


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: str) -> str:
    from thermalnet.atomic import atomic_file
    try:
        with atomic_file(path) as tmp:
            fig.savefig(tmp, dpi=110, bbox_inches="tight")
    finally:
        _plt().close(fig)
    return path


def plot_loss(train_rows: List[Dict], val_rows: List[Dict], out_png: str,
              iters_per_epoch: Optional[float] = None, title: str = "Thermalnet training") -> str:
    """Train and validation loss against iteration (and epoch on a top axis when known)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    finite = lambda rows: [(r["iteration"], r["loss"]) for r in rows
                           if r["loss"] is not None and math.isfinite(r["loss"])]
    tr, va = finite(train_rows), finite(val_rows)
    if tr:
        ax.plot(*zip(*tr), label="train loss", color="tab:blue", lw=1)
    if va:
        ax.plot(*zip(*va), "o-", label="validation loss (test split)", color="tab:red", ms=3, lw=1.5)
    ax.set_xlabel("iteration")
    ax.set_ylabel("weighted softmax loss (eq. 1, per pixel)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if tr or va:
        ax.legend()
    if iters_per_epoch:
        sec = ax.secondary_xaxis("top", functions=(lambda x: x / iters_per_epoch, lambda e: e * iters_per_epoch))
        sec.set_xlabel("epoch")
    return _save(fig, out_png)


def plot_loss_csv(train_csv: str, val_csv: str, out_png: str, iters_per_epoch: Optional[float] = None,
                  title: str = "Thermalnet training") -> str:
    from thermalnet.caffe_log import read_csv
    return plot_loss(read_csv(train_csv), read_csv(val_csv) if os.path.isfile(val_csv) else [],
                     out_png, iters_per_epoch, title)


def plot_bars(groups: Sequence[str], series: Dict[str, Sequence[Optional[float]]], out_png: str,
              ylabel: str = "RMS (brightness 0..255)", title: str = "") -> str:
    """Grouped bars: one group per row (object class), one bar per method; None = not run."""
    plt = _plt()
    names = list(series)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(groups) + 2), 4))
    width = 0.8 / max(1, len(names))
    x = np.arange(len(groups))
    for i, name in enumerate(names):
        vals = [np.nan if v is None else float(v) for v in series[name]]
        bars = ax.bar(x + (i - (len(names) - 1) / 2) * width, vals, width, label=name)
        for b, v in zip(bars, vals):
            if np.isfinite(v):
                ax.annotate("%.1f" % v, (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom",
                            fontsize=7)
    ax.set_xticks(x)
    ax.set_xticklabels(groups)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out_png)


def plot_triptych(visible_rgb: np.ndarray, ir: np.ndarray, synthetic: np.ndarray, out_png: str,
                  title: str = "", labels: Sequence[str] = ("(a) TV image", "(b) IR image",
                                                            "(c) Synthetic IR image")) -> str:
    """Paper Figs. 9-10: TV | real IR | synthetic IR, IR panels on one 0..255 grey scale."""
    plt = _plt()
    panels = [visible_rgb, ir] + ([synthetic] if not isinstance(synthetic, (list, tuple)) else list(synthetic))
    labels = list(labels)[:len(panels)]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 2.8))
    for ax, img, lab in zip(axes, panels, labels):
        if img.ndim == 3:
            ax.imshow(img)
        else:
            ax.imshow(img, cmap="gray", vmin=0, vmax=255)
        ax.set_title(lab, fontsize=9)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, out_png)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m thermalnet.plots",
                                description="Plot train/validation loss of a run (train.csv, val.csv written "
                                            "by thermalnet.caffe_log) as loss.png.")
    p.add_argument("run", help="run folder holding train.csv and val.csv (or a train.log to parse first)")
    p.add_argument("--out", help="PNG path (default RUN/loss.png)")
    p.add_argument("--iters-per-epoch", type=float, help="adds an epoch axis")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    def body():
        run = args.run
        if os.path.isfile(run):
            from thermalnet.caffe_log import log_to_csv
            log_to_csv(run)
            run = os.path.dirname(os.path.abspath(run))
        out = plot_loss_csv(os.path.join(run, "train.csv"), os.path.join(run, "val.csv"),
                            args.out or os.path.join(run, "loss.png"), args.iters_per_epoch)
        print("wrote %s" % out)
    from thermalnet import cli
    return cli.run(body)


if __name__ == "__main__":
    sys.exit(main())
