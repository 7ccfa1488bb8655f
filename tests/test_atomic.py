"""thermalnet.atomic's file writers: the destination is the old file or the whole new one, never half."""
from __future__ import annotations

import json
import os
import signal
import stat

import pytest

from thermalnet import atomic


def test_write_replaces_whole_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "a.json"
    atomic.write_json(str(path), {"x": 1})
    assert json.loads(path.read_text()) == {"x": 1}
    atomic.write_text(str(path), "new")
    assert path.read_text() == "new"
    assert os.listdir(str(path.parent)) == ["a.json"]


def test_failing_writer_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    path = tmp_path / "model.caffemodel"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic.atomic_file(str(path)) as tmp:
            assert tmp.endswith(".caffemodel") and os.path.dirname(tmp) == str(tmp_path)
            with open(tmp, "wb") as f:
                f.write(b"half")
            raise RuntimeError("writer died")
    assert path.read_bytes() == b"old"
    assert os.listdir(str(tmp_path)) == ["model.caffemodel"]


def test_written_files_get_the_usual_mode_not_mkstemps_0600(tmp_path):
    old = os.umask(0o022)
    try:
        atomic.write_bytes(str(tmp_path / "f.bin"), b"1")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(str(tmp_path / "f.bin")).st_mode) == 0o644


# -- Ctrl-C at the worst instant -----------------------------------------------------------
@pytest.fixture
def ctrl_c(monkeypatch):
    """after(name, pick): os.<name> does its work, then a real SIGINT arrives, once, on the call
    pick(args) chooses. Python raises KeyboardInterrupt at its next check, the instant after that
    call: the window a Ctrl-C on a loaded machine hits when the process is preempted there."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    fired = []

    def after(name, pick):
        real = getattr(os, name)

        def hooked(*args, **kw):
            res = real(*args, **kw)
            if not fired and pick(*args):
                fired.append(args)
                os.kill(os.getpid(), signal.SIGINT)
            return res
        monkeypatch.setattr(os, name, hooked)
        return fired
    yield after
    signal.signal(signal.SIGINT, old)


def _folder(path, **files):
    os.makedirs(path)
    for name, text in files.items():
        with open(os.path.join(path, name), "w") as f:
            f.write(text)


def _files(path):
    return {n: open(os.path.join(path, n)).read() for n in sorted(os.listdir(path))}


def test_ctrl_c_the_instant_the_temporary_file_exists_leaves_only_the_old_file(tmp_path, ctrl_c):
    path = tmp_path / "a.json"
    path.write_text("old")
    fired = ctrl_c("open", lambda p, *a: os.path.basename(p).startswith(".tmp-"))
    with pytest.raises(KeyboardInterrupt):
        atomic.write_text(str(path), "new")
    assert fired
    assert os.listdir(str(tmp_path)) == ["a.json"] and path.read_text() == "old"


def test_ctrl_c_the_instant_the_temporary_folder_exists_leaves_only_the_old_folder(tmp_path, ctrl_c):
    out = str(tmp_path / "ds")
    _folder(out, **{"info.json": "{}", "data": "old"})
    fired = ctrl_c("mkdir", lambda p, *a: os.path.basename(p).startswith("ds.tmp-"))
    with pytest.raises(KeyboardInterrupt):
        with atomic.atomic_output_dir(out, "info.json"):
            pytest.fail("the block ran although Ctrl-C came first")
    assert fired
    assert os.listdir(str(tmp_path)) == ["ds"] and _files(out) == {"data": "old", "info.json": "{}"}


@pytest.mark.parametrize("after", [1, 2], ids=["after_old_moved_aside", "after_new_moved_in"])
def test_ctrl_c_during_the_two_rename_swap_leaves_one_whole_folder(tmp_path, ctrl_c, monkeypatch, after):
    """Without renameat2 the swap is two renames: Ctrl-C between them puts the old folder back;
    after the second one the new folder stands. Either way nothing else is left beside it."""
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    out = str(tmp_path / "ds")
    _folder(out, **{"info.json": "{}", "data": "old"})
    calls = []
    fired = ctrl_c("rename", lambda a, b: calls.append(b) or len(calls) == after)
    with pytest.raises(KeyboardInterrupt):
        with atomic.atomic_output_dir(out, "info.json") as tmp:
            with open(os.path.join(tmp, "info.json"), "w") as f:
                f.write("{}")
            with open(os.path.join(tmp, "data"), "w") as f:
                f.write("new")
    assert fired
    assert os.listdir(str(tmp_path)) == ["ds"]
    assert _files(out) == {"data": "old" if after == 1 else "new", "info.json": "{}"}
