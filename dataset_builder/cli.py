"""`python -m dataset_builder ...`: thin command-line shells over synthetic, build, overlay."""
from __future__ import annotations

import argparse
import json
import os
from typing import List, Optional

from thermalnet import cli, spec

from . import splits
from .pairs import LAYOUT_TABLE


def _add_build_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", nargs=2, type=int, metavar=("H", "W"), default=None,
                   help="network input size (default %dx%d; --paper-scale: %dx%d)"
                   % (spec.DEFAULT_HEIGHT, spec.DEFAULT_WIDTH, spec.PAPER_HEIGHT, spec.PAPER_WIDTH))
    p.add_argument("--paper-scale", action="store_true", help="size %dx%d as in the paper"
                   % (spec.PAPER_HEIGHT, spec.PAPER_WIDTH))
    p.add_argument("--window-mode", choices=spec.WINDOW_MODES, default=None,
                   help="degC -> brightness window: 'dataset' (train percentiles %s, default), 'image' "
                        "(per-image min..max), 'fixed' (--window)" % (spec.DATASET_WINDOW_PERCENTILES,))
    p.add_argument("--window", nargs=2, type=float, metavar=("TMIN", "TMAX"), help="fixed window in IR units")
    p.add_argument("--ir-range", nargs=2, type=float, metavar=("LOW", "HIGH"),
                   help="degC that 8/16-bit IR codes 0 and max stand for (otherwise 8-bit IR is taken as "
                        "brightness, 16-bit as raw counts)")
    p.add_argument("--test-count", type=int, help="test pairs (default: %d when >= %d pairs, else a fraction)"
                   % (spec.PAPER_TEST, spec.PAPER_TRAIN + spec.PAPER_TEST))
    p.add_argument("--test-fraction", type=float, default=spec.DEFAULT_TEST_FRACTION,
                   help="test share below %d pairs (default %.3f)" % (spec.PAPER_TRAIN + spec.PAPER_TEST,
                                                                   spec.DEFAULT_TEST_FRACTION))
    p.add_argument("--seed", type=int, default=spec.SEED, help="split seed (default %d)" % spec.SEED)
    p.add_argument("--split", choices=splits.SPLIT_MODES, default="auto",
                   help="auto (default): the split the data carries (train/ test/ folders anywhere on the path, "
                        "val/ joins train; KAIST set00-05 train, set06-11 test), else the paper's (seeded, "
                        "stratified by class); random: whole sequences (a folder's run of numbered frames) drawn "
                        "at random, so neighbouring frames never straddle train and test; paper: the paper's "
                        "split even where the data carries one")
    p.add_argument("--split-file", metavar="FILE",
                   help="lines 'name,split' (name: pair id, relative path, file name or stem; split: train|test|val): "
                        "overrides --split; pairs it does not list are skipped")
    p.add_argument("--fit", choices=("crop", "stretch", "rotate"), default="crop",
                   help="sources of another aspect/orientation (portrait FLIR ONE): centre crop (default), "
                        "stretch, or rotate to landscape then crop")
    p.add_argument("--refine-alignment", type=int, default=0, metavar="PX",
                   help="FLIR: search +-PX visible pixels around the tag alignment for the best edge "
                        "agreement (parallax of close objects); 0 = tags only (default)")
    p.add_argument("--bins", type=int, default=spec.NUM_BINS, metavar="Q",
                   help="thermal bins Q of eq. 1 (default %d; the network's score layer needs Q outputs)"
                   % spec.NUM_BINS)
    p.add_argument("--lambda", dest="rebalance_lambda", type=float, default=spec.REBALANCE_LAMBDA,
                   help="class rebalancing lambda of v(Y): 0 = pure inverse prior, 1 = no rebalancing "
                        "(default %g)" % spec.REBALANCE_LAMBDA)
    p.add_argument("--mirror", action="store_true",
                   help="also write a left-right mirrored copy of every training pair (visible and IR flipped "
                        "together); keep DIGITS' own mirror off: it flips features and labels independently")
    p.add_argument("--strict", action="store_true", help="any bad input: exit 1 and write nothing")
    p.add_argument("--workers", type=int, default=None, help="decoding processes (default: all cores)")
    cli.add_quiet(p)


def _config(a):
    from .build import BuildConfig

    if a.paper_scale and a.size:
        raise ValueError("give --size or --paper-scale, not both")
    h, w = a.size or ((spec.PAPER_HEIGHT, spec.PAPER_WIDTH) if a.paper_scale else
                      (spec.DEFAULT_HEIGHT, spec.DEFAULT_WIDTH))
    return BuildConfig(height=h, width=w, window_mode=a.window_mode, window=tuple(a.window) if a.window else None,
                       ir_range=tuple(a.ir_range) if a.ir_range else None, test_count=a.test_count,
                       test_fraction=a.test_fraction, seed=a.seed, split=a.split, split_file=a.split_file, fit=a.fit, refine_px=a.refine_alignment,
                       strict=a.strict, workers=a.workers, progress=not a.quiet, num_bins=a.bins,
                       rebalance_lambda=a.rebalance_lambda, mirror=a.mirror)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dataset_builder",
                                description="Aligned visible/thermal pairs -> DIGITS-compatible LMDB datasets "
                                            "for Thermalnet (real FLIR radiometric JPEGs, folders of pairs, or "
                                            "SYNTHETIC demo scenes).")
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("synthetic", help="write a SYNTHETIC pairs folder (seeded FLIR-ONE-like scenes)")
    s.add_argument("--out", required=True, help="pairs folder to create (replaced atomically)")
    s.add_argument("--count", type=int, default=spec.PAPER_TRAIN + spec.PAPER_TEST,
                   help="pairs (default %d = the paper's 1000/100)" % (spec.PAPER_TRAIN + spec.PAPER_TEST))
    s.add_argument("--seed", type=int, default=spec.SEED)
    s.add_argument("--workers", type=int, default=None)
    cli.add_quiet(s)

    layouts = "pairs folder layouts read (a folder holding both subfolders, any depth, any case):\n" + \
        "\n".join("  %-34s %s" % ("%s/ + %s/" % (v, i), who) for v, i, who in LAYOUT_TABLE)
    b = sub.add_parser("build", help="build a dataset folder (LMDBs, manifest, weights, test files)",
                       epilog=layouts, formatter_class=argparse.RawDescriptionHelpFormatter)
    b.add_argument("--out", required=True, help="dataset folder (built beside it, then swapped in)")
    b.add_argument("--flir", nargs="+", default=[], metavar="PATH", help="FLIR radiometric JPEGs or folders of them")
    b.add_argument("--pairs", nargs="+", default=[], metavar="DIR",
                   help="folders of aligned pairs, matched by relative folder and stem without regard to case "
                        "(layouts: see below)")
    b.add_argument("--classes", help="CSV stem,object_class (default: classes.csv inside a pairs folder)")
    _add_build_args(b)

    d = sub.add_parser("demo", help="SYNTHETIC pairs + dataset in one go (<out>/pairs, <out>/dataset)")
    d.add_argument("--out", required=True)
    d.add_argument("--count", type=int, default=spec.PAPER_TRAIN + spec.PAPER_TEST)
    _add_build_args(d)

    o = sub.add_parser("overlay", help="alignment figure + edge-agreement scores for a FLIR file")
    o.add_argument("flir_file")
    o.add_argument("--out", required=True, help="PNG to write")
    o.add_argument("--refine-alignment", type=int, default=24, metavar="PX",
                   help="search radius of the refined panel (0: no refined panel; default 24)")

    return p


def main(argv: Optional[List[str]] = None) -> int:
    p = build_parser()
    a = p.parse_args(argv)
    if a.cmd == "build" and not a.flir and not a.pairs:
        p.error("build needs --flir and/or --pairs")
    if a.cmd in ("build", "demo") and a.paper_scale and a.size:
        p.error("give --size or --paper-scale, not both")
    out = a.out if a.cmd in ("synthetic", "build", "demo") else None
    return cli.run(lambda: _main(a), outputs=[out] if out else ())


def _main(a) -> Optional[int]:
    from .build import build, format_summary

    # Skipped inputs are reported once the build succeeds; a build that fails names the first in its one line.
    log = cli.DeferredLog()
    if a.cmd == "synthetic":
        from .synthetic import format_summary as syn_summary, generate

        s = generate(a.out, a.count, a.seed, workers=a.workers, progress=not a.quiet)
        print(syn_summary(s))
        print("wrote %s" % a.out)
    elif a.cmd == "build":
        classes = None
        if a.classes:
            from .pairs import read_classes
            classes = read_classes(a.classes)
        info = build(a.out, a.flir, a.pairs, _config(a), classes, log=log)
        log.flush()
        print(format_summary(info, a.out))
    elif a.cmd == "demo":
        from .synthetic import format_summary as syn_summary, generate

        pairs_dir = os.path.join(a.out, "pairs")
        s = generate(pairs_dir, a.count, a.seed, workers=a.workers, progress=not a.quiet)
        print(syn_summary(s))
        info = build(os.path.join(a.out, "dataset"), (), [pairs_dir], _config(a), log=log)
        log.flush()
        print(format_summary(info, os.path.join(a.out, "dataset")))
    elif a.cmd == "overlay":
        from .overlay import write_overlay

        scores = write_overlay(a.flir_file, a.out, a.refine_alignment)
        print(json.dumps(scores))
        print("wrote %s" % a.out)
