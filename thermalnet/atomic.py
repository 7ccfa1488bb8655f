"""Atomic outputs, in one home: a file or a folder is written beside its destination and
swapped in only when complete, so a reader never sees half of one.

Files (atomic_file, write_bytes, write_text, write_json): a temporary file in the same
folder, renamed over the destination (os.replace) when its writer finished; on any error
it is deleted. Folders (atomic_dir; atomic_output_dir also refuses to replace a folder
the tool did not make):

A dataset is built into `<out>.tmp-<pid>-XXXX`; when every file is written it is
exchanged with `<out>` in one atomic rename (Linux renameat2 RENAME_EXCHANGE, else
two renames, and Ctrl-C between them puts the old folder back), and the old folder
is deleted afterwards. Ctrl-C deletes the temporary folder; a SIGKILL leaves it
behind, where the next build removes it (its pid is dead). So `<out>` is always either the old complete dataset or the
new complete one, never a half-written mix.

Ctrl-C can land between any two bytecodes, also the instant after a temporary file or
folder was created: so its name is chosen first and it is created inside the block that
removes it on error (_fresh), never returned by a call (mkstemp, mkdtemp) that an
interrupt could cut off before the name reaches the cleanup.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import glob
import json
import os
import re
import secrets
import shutil

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


class OutputExists(RuntimeError):
    pass


def _names(prefix: str, suffix: str = ""):
    """Fresh names `<prefix><pid>-<random><suffix>`; the pid lets clean_stale tell a dead
    process's leftovers from a running one's."""
    while True:
        yield "%s%d-%s%s" % (prefix, os.getpid(), secrets.token_hex(4), suffix)


@contextlib.contextmanager
def _fresh(prefix: str, suffix: str, create, remove):
    """Yield a new path made by create(path); remove(path) deletes it if the block fails.
    The name is bound before create() runs, inside the try, so an interrupt the instant
    after creation still finds it. A name that already exists holds our pid, so it is a
    dead process's leftover: taking another name is all that is needed."""
    names = _names(prefix, suffix)
    path = next(names)
    try:
        while True:
            try:
                create(path)
                break
            except FileExistsError:
                path = next(names)
        yield path
    except BaseException:
        if os.path.lexists(path):
            remove(path)
        raise


def _new_file(path: str) -> None:
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))   # the usual mode, after umask


def _new_dir(path: str) -> None:
    os.mkdir(path, 0o777)


def _remove_dir(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(path: str):
    """Yield a temporary path beside `path` (same extension, for writers that choose the
    format by it: savefig, caffemodel, PNG); it replaces `path` when the block ends
    without error and is removed otherwise."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with _fresh(os.path.join(folder, ".tmp-"), os.path.splitext(path)[1], _new_file, os.unlink) as tmp:
        yield tmp
        os.replace(tmp, path)


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
        _remove_dir(tmp)      # tmp now holds the old folder
        return
    old = next(_names(out + ".old-"))
    try:
        os.rename(out, old)
        os.rename(tmp, out)
    finally:
        if os.path.lexists(old):
            if os.path.lexists(out):
                _remove_dir(old)          # done (or Ctrl-C after the second rename): the old one goes
            else:
                os.rename(old, out)       # Ctrl-C or an error between the renames: it comes back


@contextlib.contextmanager
def atomic_dir(out: str):
    """Yield a new empty folder `<out>.tmp-<pid>-XXXX`; it replaces `out` (replace_dir) when
    the block ends without error and is deleted otherwise, Ctrl-C included."""
    out = os.path.abspath(out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    clean_stale(out)
    with _fresh(out + ".tmp-", "", _new_dir, _remove_dir) as tmp:
        yield tmp
        replace_dir(tmp, out)


@contextlib.contextmanager
def atomic_output_dir(out: str, marker: str):
    """Yield a temporary folder; on success it becomes `out` (marker: the file that
    identifies a folder this tool made, so a foreign non-empty folder is never replaced)."""
    out = os.path.abspath(out)
    if os.path.lexists(out):
        if not os.path.isdir(out):
            raise OutputExists("%s: exists and is not a folder; choose another output" % out)
        if os.listdir(out) and not os.path.exists(os.path.join(out, marker)):
            raise OutputExists("%s: exists, is not empty and has no %s (not made by this tool); "
                               "refusing to replace it" % (out, marker))
    with atomic_dir(out) as tmp:
        yield tmp
