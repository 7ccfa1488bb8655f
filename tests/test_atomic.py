"""thermalnet.atomic's file writers: the destination is the old file or the whole new one, never half."""
from __future__ import annotations

import json
import os
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
