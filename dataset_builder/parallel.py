"""Worker pools for decoding/rendering that are safe after OpenCV or BLAS started threads.

A plain fork() copies a parent whose OpenCV/OpenBLAS thread pools may hold locks;
the children can then hang forever on their first cv2 call (seen after a cv2.ml
model trained in the same process). Workers therefore come from a fresh
forkserver (spawn where that is missing), and each uses one OpenCV thread so two
workers share two cores without oversubscription. Workers ignore Ctrl-C: the parent
gets it, terminates the pool and deletes its temporary output.
"""
from __future__ import annotations

import multiprocessing as mp


def _init_worker() -> None:
    import signal

    import cv2

    cv2.setNumThreads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C is the parent's to handle (it ends the pool)


def make_pool(workers: int):
    """A Pool of `workers` clean processes (use as a context manager)."""
    methods = mp.get_all_start_methods()
    ctx = mp.get_context("forkserver" if "forkserver" in methods else "spawn")
    return ctx.Pool(workers, initializer=_init_worker)
