"""Throughput of the dataset builder, measured now on this machine (no targets asserted).

  synthetic_pairs_per_s   SYNTHETIC scene rendering + PNG/NPY writing, all cores
  img_per_s               end-to-end build of those pairs (decode pool + one LMDB writer)
  lmdb_write_pairs_per_s  LMDB writing alone (feature + label Datums per pair), one process
  flir_pairs_per_s        end-to-end build from real FLIR JPEGs (the kit's sample files,
                          copied many times), all cores; flir_decode_pairs_per_s: one process

tools/benchmark.py calls run(quick) and compares img_per_s with training consumption.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from typing import Dict, Optional

import numpy as np

from thermalnet import spec

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLIR_WITH_PHOTO = ("flir_one_mug.jpg", "flir_ax8.jpg", "flir_b60_aqua_tower.jpg")


def find_flir_samples() -> Optional[str]:
    """The FLIR sample folder: $THERMALNET_FLIR_SAMPLES, else ../shared/samples/flir beside the repo."""
    for cand in (os.environ.get("THERMALNET_FLIR_SAMPLES"), os.path.join(os.path.dirname(REPO), "shared",
                                                                          "samples", "flir")):
        if cand and all(os.path.isfile(os.path.join(cand, f)) for f in FLIR_WITH_PHOTO):
            return cand
    return None


def _lmdb_rate(work: str, n: int) -> float:
    from .lmdb_io import LmdbWriter

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (16, 3, spec.DEFAULT_HEIGHT, spec.DEFAULT_WIDTH), dtype=np.uint8)
    y = rng.integers(0, spec.NUM_BINS, (16, 1, spec.DEFAULT_HEIGHT, spec.DEFAULT_WIDTH), dtype=np.uint8)
    t0 = time.perf_counter()
    with LmdbWriter(os.path.join(work, "f")) as fw, LmdbWriter(os.path.join(work, "l")) as lw:
        for i in range(n):
            fw.put(x[i % 16])
            lw.put(y[i % 16])
    return n / (time.perf_counter() - t0)


def run(quick: bool = False) -> Dict:
    """Measure; return a dict of rates (pairs per second) and the sizes used."""
    from .build import BuildConfig, build
    from .flir import read_flir, read_tags
    from .synthetic import generate

    n_syn = 24 if quick else 120
    n_lmdb = 200 if quick else 1000
    copies = 4 if quick else 20
    res = {"note": "SYNTHETIC scenes and copies of the FLIR sample files; wall-clock on a possibly shared "
                   "machine", "cpus": os.cpu_count(), "height": spec.DEFAULT_HEIGHT, "width": spec.DEFAULT_WIDTH}
    with tempfile.TemporaryDirectory(prefix="thermalnet-dsbench-") as work:
        t0 = time.perf_counter()
        generate(os.path.join(work, "pairs"), count=n_syn, seed=spec.SEED, progress=False)
        res["synthetic_pairs"] = n_syn
        res["synthetic_pairs_per_s"] = n_syn / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        build(os.path.join(work, "ds"), pair_roots=[os.path.join(work, "pairs")],
              cfg=BuildConfig(progress=False), log=lambda m: None)
        res["img_per_s"] = n_syn / (time.perf_counter() - t0)
        res["lmdb_pairs"] = n_lmdb
        res["lmdb_write_pairs_per_s"] = _lmdb_rate(os.path.join(work, "lmdb"), n_lmdb)
        samples = find_flir_samples()
        if samples is None:
            res["flir_skipped"] = "FLIR samples not found (set THERMALNET_FLIR_SAMPLES)"
        else:
            src = os.path.join(work, "flir")
            os.makedirs(src)
            for k in range(copies):
                for name in FLIR_WITH_PHOTO:
                    shutil.copyfile(os.path.join(samples, name), os.path.join(src, "%03d_%s" % (k, name)))
            files = sorted(os.path.join(src, f) for f in os.listdir(src))
            t0 = time.perf_counter()
            tags = read_tags(files[:len(FLIR_WITH_PHOTO) * 2])
            for f in files[:len(FLIR_WITH_PHOTO) * 2]:
                read_flir(f, tags=tags[f])
            res["flir_decode_pairs_per_s"] = len(FLIR_WITH_PHOTO) * 2 / (time.perf_counter() - t0)
            t0 = time.perf_counter()
            build(os.path.join(work, "flir_ds"), flir_inputs=[src], cfg=BuildConfig(progress=False),
                  log=lambda m: None)
            res["flir_pairs"] = len(files)
            res["flir_pairs_per_s"] = len(files) / (time.perf_counter() - t0)
    return res


def format_results(res: Dict) -> str:
    lines = ["dataset_builder throughput (%s CPUs; %s)" % (res["cpus"], res["note"]),
             "  SYNTHETIC generation : %7.1f pairs/s (%d pairs)" % (res["synthetic_pairs_per_s"], res["synthetic_pairs"]),
             "  build from pairs     : %7.1f pairs/s (decode + LMDB, %dx%d)" % (res["img_per_s"], res["height"],
                                                                             res["width"]),
             "  LMDB writing alone   : %7.1f pairs/s (%d pairs)" % (res["lmdb_write_pairs_per_s"], res["lmdb_pairs"])]
    if "flir_pairs_per_s" in res:
        lines.append("  FLIR build           : %7.1f pairs/s (%d files); decode alone, one process: %.1f pairs/s"
                     % (res["flir_pairs_per_s"], res["flir_pairs"], res["flir_decode_pairs_per_s"]))
    else:
        lines.append("  FLIR: %s" % res["flir_skipped"])
    return "\n".join(lines)
