"""The kit's command-line conventions, declared once for every launcher.

Exit codes (every `python -m tools.X`, `python -m dataset_builder`, `python -m thermalnet.X`):
  0  done;
  1  the work failed on its inputs or its environment (a bad file, no Caffe, training
     stopped): ONE line `error: <file>: <what>` on stderr, never a traceback;
  2  a usage error, and only as argparse reports it (unknown option, missing argument);
  130 interrupted (Ctrl-C): the previous output, if any, is untouched.

Library functions raise (ValueError, OSError, RuntimeError and the kit's subclasses of
them: TrainingError, WeightsError, ImageReadError, BuildError, OutputExists, CaffeNotFound,
ExportError...); only a main() turns them into an exit code, through run(). The options
several launchers share are declared here so that their names, types and help agree.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from typing import Callable, Optional, Sequence, Tuple, Type

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2            # argparse's own code; nothing else uses it
EXIT_INTERRUPTED = 130

WEIGHTS_METAVAR = "A.caffemodel[,B.caffemodel]"


def domain_errors() -> Tuple[Type[BaseException], ...]:
    """The exception classes a command reports as one line (its inputs' fault, not a bug).

    The kit's own error classes derive from the first three. lmdb and protobuf errors are
    caught as a last resort (the readers translate them first, naming the file).
    """
    errors = [OSError, ValueError, RuntimeError]
    try:
        import lmdb
        errors.append(lmdb.Error)
    except ImportError:
        pass
    try:
        from google.protobuf.message import Error as ProtobufError
        errors.append(ProtobufError)
    except ImportError:
        pass
    return tuple(errors)


def one_line(exc: BaseException) -> str:
    """The exception's message on one line (multi-line messages joined with ' | ')."""
    parts = [s.strip() for s in str(exc).splitlines() if s.strip()]
    return " | ".join(parts) or type(exc).__name__


def clear_progress_bars() -> None:
    """Take down any progress bar still drawn (tqdm), so the error line stands alone on the terminal."""
    tqdm_module = sys.modules.get("tqdm")
    if tqdm_module is None:
        return
    for bar in list(getattr(tqdm_module.tqdm, "_instances", ())):
        try:
            bar.leave = False
            bar.close()
        except Exception:  # noqa: BLE001 -- a bar that cannot close must not hide the error
            pass


def report(exc: BaseException, stream=None) -> int:
    """Print `error: <message>` as one line on stderr; returns EXIT_FAILURE."""
    clear_progress_bars()
    print("error: %s" % one_line(exc), file=stream or sys.stderr, flush=True)
    return EXIT_FAILURE


def _holds_no_file(path: str) -> bool:
    return all(not files for _, _, files in os.walk(path))


def run(body: Callable[[], Optional[int]], outputs: Sequence[str] = ()) -> int:
    """Run a command body; its int (or 0 for None), 1 with one line on a domain error, 130 on Ctrl-C.

    outputs: paths the command may create. One that did not exist before and holds no file
    after a failure (an empty folder made on the way) is removed: a failed command leaves
    nothing behind. Files a failed run did write (a training log) are kept for diagnosis.
    """
    fresh = [p for p in outputs if p and not os.path.exists(p)]

    def clean():
        for p in fresh:
            if os.path.isdir(p) and _holds_no_file(p):
                shutil.rmtree(p, ignore_errors=True)

    try:
        rc = body()
    except KeyboardInterrupt:
        clean()
        print("interrupted: the previous output (if any) is untouched", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except domain_errors() as exc:
        clean()
        return report(exc)
    return EXIT_OK if rc is None else int(rc)


class DeferredLog:
    """Warnings held back until the command is known to succeed (then printed, one a line).

    A command that skips a bad input and goes on warns about it; one that then fails for
    want of any good input says so in its one error line, naming the first skipped file.
    """

    def __init__(self):
        self.lines = []

    def __call__(self, msg: str) -> None:
        self.lines.append(msg)

    def flush(self, stream=None) -> None:
        for line in self.lines:
            print(line, file=stream or sys.stderr)
        self.lines = []


# -- options several launchers declare ---------------------------------------------------
def add_gpu(p: argparse.ArgumentParser, help: str = "GPU id (needs a GPU build of Caffe); default CPU") -> None:
    p.add_argument("--gpu", type=int, metavar="ID", help=help)


def add_backend(p: argparse.ArgumentParser, choices: Sequence[str], default: str = "pycaffe",
                help: Optional[str] = None) -> None:
    p.add_argument("--backend", default=default, choices=list(choices),
                   help=help or "back-end (default %s)" % default)


def add_decoding(p: argparse.ArgumentParser, default: Optional[str] = "", help: Optional[str] = None) -> None:
    """--decoding; default "" means the kit's one default (decoders.DEFAULT_DECODING)."""
    from thermalnet import decoders
    if default == "":
        default = decoders.DEFAULT_DECODING
    p.add_argument("--decoding", default=default, choices=decoders.DECODINGS,
                   help=help or "probabilities -> brightness (default %s; see thermalnet.decoders)" % default)


def add_temperature(p: argparse.ArgumentParser) -> None:
    """--temperature of the decodings that take one (annealed, sample); default: the decoding's own."""
    from thermalnet import decoders
    p.add_argument("--temperature", type=float,
                   help="temperature of the annealed (default %g) and sample (default %g) decodings"
                   % (decoders.ANNEAL_T, decoders.SAMPLE_T))


def add_weights(p: argparse.ArgumentParser, default: Optional[str] = None, help: Optional[str] = None) -> None:
    """--weights: caffemodels copied into the net by layer name, in order (Caffe's -weights)."""
    p.add_argument("--weights", default=default, metavar=WEIGHTS_METAVAR,
                   help=help or "fine-tune: copy these caffemodels into the net by layer name, in order "
                                "(Caffe's -weights), e.g. the ImageNet squeezenet_v1.1.caffemodel; layers not "
                                "in them keep their fillers (default: %s)" % (default or "none, fillers"))


def add_snapshot(p: argparse.ArgumentParser, choices: Sequence[str], default: str) -> None:
    p.add_argument("--snapshot", default=default, choices=list(choices),
                   help="model to evaluate: best = lowest validation loss, last = final snapshot "
                        "(default %s)" % default)


def add_vgg_weights(p: argparse.ArgumentParser) -> None:
    p.add_argument("--vgg-weights", metavar="VGG.caffemodel",
                   help="VGG_ILSVRC_16_layers.caffemodel for TN + PP (without it: 'not run')")


def add_quiet(p: argparse.ArgumentParser, help: str = "no progress bars") -> None:
    p.add_argument("--quiet", action="store_true", help=help)


def add_batch_size(p: argparse.ArgumentParser, default: Optional[int] = None, required: bool = False,
                   help: Optional[str] = None) -> None:
    p.add_argument("--batch-size", type=int, default=default, required=required,
                   help=help or ("default %d" % default if default is not None else None))
