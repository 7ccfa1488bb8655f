"""The whole pipeline on your own FLIR radiometric JPEGs: dataset -> train -> Table 2 -> report.

    python -m tools.run_flir --flir DIR_OR_FILES... --out runs/NAME [--classes classes.csv]
                             [--epochs 30] [--minutes 60] [--batch-size 8] [--paper-scale]

Step by step it runs exactly what you would type by hand, and what `make demo` runs
on its SYNTHETIC data (tools.demo.run_pipeline):
  1. python -m dataset_builder build --flir DIR --out runs/NAME/dataset [--classes CSV]
  2. python -m tools.train --dataset runs/NAME/dataset --out runs/NAME --epochs E --batch-size B
        [--weights squeezenet_v1.1.caffemodel]
  3. python -m tools.evaluate --dataset ... --deploy prototxt/thermalnet_v1_1_deploy.prototxt
        --model runs/NAME/best.caffemodel --out runs/NAME/eval     (--snapshot last: snap_iter_N)
  4. python -m tools.report --run runs/NAME
Give object classes (human, microwave_oven, computer, or your own) with --classes, a
CSV of `stem,object_class`; without it every pair is "unknown" and Table 2 has one row.
An existing runs/NAME/dataset is reused unless --rebuild.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, List, Optional, Sequence

from thermalnet import cli, decoders, layout, spec

DEFAULT_EPOCHS = 30.0
DEFAULT_BATCH = 8


def build_flir_dataset(flir: Sequence[str], dataset: str, classes_csv: Optional[str] = None,
                       paper_scale: bool = False, rebuild: bool = False, progress: bool = True) -> str:
    """dataset_builder's build of FLIR files (reused when present and not rebuild)."""
    from dataset_builder.build import BuildConfig, build
    if os.path.isfile(os.path.join(dataset, layout.DATASET_INFO_FILE)) and not rebuild:
        print("[run_flir] using the existing dataset %s (--rebuild to make it again)" % dataset, flush=True)
        return dataset
    classes = None
    if classes_csv:
        from dataset_builder.pairs import read_classes
        if not os.path.isfile(classes_csv):
            raise FileNotFoundError("%s: no such classes CSV" % classes_csv)
        classes = read_classes(classes_csv)
    h, w = (spec.PAPER_HEIGHT, spec.PAPER_WIDTH) if paper_scale else (spec.DEFAULT_HEIGHT, spec.DEFAULT_WIDTH)
    print("[run_flir] building %s from %s at %dx%d" % (dataset, ", ".join(flir), h, w), flush=True)
    from thermalnet.cli import DeferredLog
    log = DeferredLog()                # skipped files: printed on success, the first named in a failure
    build(dataset, list(flir), (), BuildConfig(height=h, width=w, progress=progress), classes, log=log)
    log.flush()
    return dataset


def run_flir(flir: Sequence[str], out: str, classes_csv: Optional[str] = None, dataset: Optional[str] = None,
             epochs: float = DEFAULT_EPOCHS, batch_size: int = DEFAULT_BATCH, base_lr: Optional[float] = None,
             minutes: Optional[float] = None, paper_scale: bool = False, decoding: str = decoders.DEFAULT_DECODING,
             vgg_weights: Optional[str] = None, backend: str = "pycaffe", gpu: Optional[int] = None,
             rebuild: bool = False, progress: bool = True, weights=None, snapshot: Optional[str] = None) -> Dict:
    """Build (or reuse) the dataset, then tools.demo.run_pipeline; weights/snapshot as there."""
    from . import demo, train
    for f in flir:
        if not os.path.exists(f):
            raise FileNotFoundError("%s: no such FLIR file or folder" % f)
    from thermalnet import nets
    if nets.split_weights(weights):
        # Before the dataset is built: a foreign caffemodel is a one-line error, not an hour later.
        nets.check_weights(weights, train.PAPER_NET if paper_scale else train.DEFAULT_NET)
    ds = build_flir_dataset(flir, dataset or os.path.join(out, "dataset"), classes_csv, paper_scale, rebuild,
                            progress)
    info = layout.read_dataset_info(ds)
    want = (spec.PAPER_HEIGHT, spec.PAPER_WIDTH) if paper_scale else (spec.DEFAULT_HEIGHT, spec.DEFAULT_WIDTH)
    if (int(info["height"]), int(info["width"])) != want:
        raise ValueError("%s is %sx%s, this run wants %dx%d: pass --rebuild" % (ds, info["height"], info["width"],
                                                                               want[0], want[1]))
    net = train.PAPER_NET if paper_scale else train.DEFAULT_NET
    return demo.run_pipeline(ds, out, net=net, epochs=epochs, batch_size=batch_size,
                             base_lr=base_lr or demo.DEMO_BASE_LR, max_minutes=minutes, decoding=decoding,
                             vgg_weights=vgg_weights, backend=backend, gpu=gpu, progress=progress,
                             weights=weights if weights is not None else demo.DEMO_WEIGHTS,
                             snapshot=snapshot or demo.DEMO_SNAPSHOT)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools.run_flir",
                                description="Build a dataset from FLIR radiometric JPEGs, train Thermalnet, evaluate "
                                            "Table 2 with baselines and write the report (the demo's pipeline on "
                                            "your own data).")
    p.add_argument("--flir", nargs="+", required=True, metavar="PATH", help="FLIR JPEGs or folders of them")
    p.add_argument("--out", required=True, help="run folder, e.g. runs/myflir (dataset in OUT/dataset)")
    p.add_argument("--classes", help="CSV stem,object_class for Table 2's rows")
    p.add_argument("--dataset", help="where to build the dataset (default OUT/dataset)")
    p.add_argument("--rebuild", action="store_true", help="rebuild the dataset even if it exists")
    p.add_argument("--epochs", type=float, default=DEFAULT_EPOCHS, help="default %g" % DEFAULT_EPOCHS)
    p.add_argument("--minutes", type=float, help="training time budget (default: none, run all epochs)")
    cli.add_batch_size(p, DEFAULT_BATCH)
    p.add_argument("--base-lr", type=float, help="Adam learning rate (default 1e-3)")
    p.add_argument("--paper-scale", action="store_true", help="SqueezeNet v1.0 Thermalnet at %dx%d"
                   % (spec.PAPER_HEIGHT, spec.PAPER_WIDTH))
    cli.add_decoding(p, help="probabilities -> brightness (default %s, see tools.evaluate)" % decoders.DEFAULT_DECODING)
    cli.add_vgg_weights(p)
    cli.add_backend(p, ("pycaffe", "caffe"), help="training back-end: pycaffe loop (default) or `caffe train`")
    cli.add_gpu(p)
    from .demo import add_model_options
    add_model_options(p)
    cli.add_quiet(p)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    a = build_parser().parse_args(argv)

    def body():
        r = run_flir(a.flir, a.out, a.classes, a.dataset, a.epochs, a.batch_size, a.base_lr, a.minutes,
                     a.paper_scale, a.decoding, a.vgg_weights, a.backend, a.gpu, a.rebuild, progress=not a.quiet,
                     weights=a.weights, snapshot=a.snapshot)
        print("[run_flir] report: %s (and %s)" % (r["md"], r["html"]))
    return cli.run(body, outputs=[a.out])


if __name__ == "__main__":
    sys.exit(main())
