"""Atomic outputs, in one home: a file or a folder is written beside its destination and
swapped in only when complete, so a reader never sees half of one.

Files (atomic_file, write_bytes, write_text, write_json): a temporary file in the same
folder, renamed over the destination (os.replace) when its writer finished; on any error
it is deleted. Folders (atomic_output_dir):

A dataset is built into `<out>.tmp-<pid>-XXXX`; when every file is written it is
exchanged with `<out>` in one atomic rename (Linux renameat2 RENAME_EXCHANGE, else
two renames), and the old folder is deleted afterwards. Ctrl-C deletes the
temporary folder; a SIGKILL leaves it behind, where the next build removes it
(its pid is dead). So `<out>` is always either the old complete dataset or the
new complete one, never a half-written mix.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import glob
import json
import os
import re
import shutil
import tempfile

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


class OutputExists(RuntimeError):
    pass


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_file(path: str):
    """Yield a temporary path beside `path` (same extension, for writers that choose the
    format by it: savefig, caffemodel, PNG); it replaces `path` when the block ends
    without error and is removed otherwise."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.splitext(path)[1], dir=folder)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())   # mkstemp makes 0600; give the usual file mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_bytes(path: str, data: bytes) -> None:
    """Write a file atomically."""
    with atomic_file(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def write_text(path: str, text: str) -> None:
    """Write a UTF-8 text file atomically."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str, obj, indent: int = 1) -> None:
    """Write JSON atomically (sorted keys are not forced: callers keep their order)."""
    write_text(path, json.dumps(obj, indent=indent) + "\n")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(out: str) -> None:
    """Remove leftovers of killed builds of `out`; restore `out` if a kill hit mid-swap."""
    for path in glob.glob(glob.escape(out) + ".tmp-*") + glob.glob(glob.escape(out) + ".old-*"):
        m = re.search(r"\.(tmp|old)-(\d+)-[^/]*$", path)
        if not m or _pid_alive(int(m.group(2))):
            continue
        if m.group(1) == "old" and not os.path.exists(out):
            os.rename(path, out)       # killed between the two fallback renames: put it back
        else:
            shutil.rmtree(path, ignore_errors=True)


def _exchange(a: str, b: str) -> bool:
    """Atomically swap two paths (Linux >= 3.15). False when the system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
        return False
    raise OSError(err, "cannot swap %s and %s: %s" % (a, b, os.strerror(err)))


def replace_dir(tmp: str, out: str) -> None:
    """Put the complete folder `tmp` at `out`, replacing an old `out` atomically."""
    if not os.path.lexists(out):
        os.rename(tmp, out)
        return
    if _exchange(tmp, out):
        shutil.rmtree(tmp, ignore_errors=True)      # tmp now holds the old folder
        return
    old = tempfile.mkdtemp(prefix=os.path.basename(out) + ".old-%d-" % os.getpid(), dir=os.path.dirname(out))
    os.rmdir(old)
    os.rename(out, old)
    os.rename(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_output_dir(out: str, marker: str):
    """Yield a temporary folder; on success it becomes `out` (marker: the file that
    identifies a folder this tool made, so a foreign non-empty folder is never replaced)."""
    out = os.path.abspath(out)
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    if os.path.lexists(out):
        if not os.path.isdir(out):
            raise OutputExists("%s: exists and is not a folder; choose another output" % out)
        if os.listdir(out) and not os.path.exists(os.path.join(out, marker)):
            raise OutputExists("%s: exists, is not empty and has no %s (not made by this tool); "
                               "refusing to replace it" % (out, marker))
    clean_stale(out)
    tmp = tempfile.mkdtemp(prefix=os.path.basename(out) + ".tmp-%d-" % os.getpid(), dir=parent)
    os.chmod(tmp, 0o777 & ~_umask())   # mkdtemp makes 0700; the result is an ordinary folder
    try:
        yield tmp
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
