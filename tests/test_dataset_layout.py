"""thermalnet/layout.py: the dataset folder's names and the readers of its files, with
one-line errors that name the file (SYNTHETIC files written here; dataset.json's reader is
in test_spec.py)."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from thermalnet import layout


def test_lmdb_pairs_train_then_val():
    assert layout.lmdb_pairs("d") == [("train", os.path.join("d", "train_db", "features"),
                                        os.path.join("d", "train_db", "labels")),
                                       ("val", os.path.join("d", "val_db", "features"),
                                        os.path.join("d", "val_db", "labels"))]


def test_read_json_errors_name_the_file(tmp_path):
    p = str(tmp_path / "x.json")
    with pytest.raises(FileNotFoundError, match="x.json: missing \\(run the trainer\\)"):
        layout.read_json(p, missing="run the trainer")
    with pytest.raises(FileNotFoundError):          # no hint: the plain error
        layout.read_json(p)
    with open(p, "w") as f:
        f.write("{bad")
    with pytest.raises(ValueError, match="x.json: not valid JSON"):
        layout.read_json(p, missing="hint")
    with open(p, "w") as f:
        json.dump({"a": 1}, f)
    assert layout.read_json(p, missing="hint") == {"a": 1}


@pytest.mark.parametrize("values,ok", [([1.0, 2.0, 0.5], True), ([1.0, 2.0], False), ([1.0, 2.0, 0.5, 1.0], False),
                                       ([1.0, float("nan"), 1.0], False), ([1.0, float("inf"), 1.0], False),
                                       ([1.0, 0.0, 1.0], False), ([1.0, -2.0, 1.0], False)])
def test_read_class_weights_wants_q_finite_positive_values(tmp_path, values, ok):
    d = str(tmp_path)
    with pytest.raises(FileNotFoundError, match="class_weights.txt: missing"):
        layout.read_class_weights(d, 3)
    np.savetxt(os.path.join(d, "class_weights.txt"), values)
    if ok:
        np.testing.assert_array_equal(layout.read_class_weights(d, 3), values)
    else:
        with pytest.raises(ValueError, match="class_weights.txt: need 3 positive weights, got %d values" % len(values)):
            layout.read_class_weights(d, 3)
