"""Bad-input corpus: every kit command on every bad file it reads fails the same way.

Each case runs one command as a subprocess (as a user types it) on one damaged input made
here in tmp_path, and asserts the kit's CLI convention (thermalnet.cli): exit status 1,
stderr exactly one line `error: ...` naming the bad file, no Python traceback, no glog
abort, and nothing half-written (the --out path absent, or unchanged when it existed).
Every damage is detected before any training or inference starts, so the file runs in
about a minute.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from thermalnet import layout, nets, spec

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
H, W = 48, 64
DEPLOY = nets.network(spec.DEFAULT_BASE).deploy
NET = nets.network(spec.DEFAULT_BASE).net


# -- the corpus: a good dataset, a good model, and one damaged copy of each input -------------
def _quiet_cli(main, argv):
    assert main(argv) == 0, argv


def _save_random_model(caffe, deploy_text: str, path: str, seed: int) -> str:
    proto = path + ".prototxt"
    with open(proto, "w") as f:
        f.write(deploy_text)
    net = caffe.Net(proto, caffe.TEST)
    rng = np.random.RandomState(seed)
    for blobs in net.params.values():
        for b in blobs:
            b.data[...] = rng.randn(*b.data.shape).astype(np.float32) * 0.05
    net.save(path)
    del net
    os.remove(proto)
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, caffe):
    """{name: path}: good inputs and one bad copy of each kind, all made here."""
    from dataset_builder.cli import main as dataset_cli
    from thermalnet.lmdb_io import write_mean_binaryproto

    root = tmp_path_factory.mktemp("bad_inputs")
    c = {}
    pairs = str(root / "pairs")
    _quiet_cli(dataset_cli, ["synthetic", "--out", pairs, "--count", "12", "--workers", "1", "--quiet"])
    c["dataset"] = str(root / "dataset")
    _quiet_cli(dataset_cli, ["build", "--out", c["dataset"], "--pairs", pairs, "--size", str(H), str(W),
                             "--test-count", "2", "--workers", "1", "--quiet"])
    c["other_q"] = str(root / "q16_dataset")           # built with another Q than the networks' 32
    _quiet_cli(dataset_cli, ["build", "--out", c["other_q"], "--pairs", pairs, "--size", str(H), str(W),
                             "--test-count", "2", "--bins", "16", "--workers", "1", "--quiet"])
    with open(DEPLOY) as f:
        deploy_text = f.read()
    c["model"] = _save_random_model(caffe, deploy_text, str(root / "good.caffemodel"), 1)
    # A model of the same network trained with Q = 16: conv10_thermal has 16 filters.
    q = str(spec.NUM_BINS)
    head, tail = deploy_text.split('name: "%s"' % nets.SCORE_LAYER)
    tail = tail.replace("num_output: %s\n" % q, "num_output: 16\n").replace("group: %s\n" % q, "group: 16\n")
    c["wrong_shape_model"] = _save_random_model(caffe, head + 'name: "%s"' % nets.SCORE_LAYER + tail,
                                                str(root / "q16_model.caffemodel"), 2)

    def dataset_copy(name):
        d = str(root / name)
        shutil.copytree(c["dataset"], d)
        return d

    d = dataset_copy("corrupt_lmdb")
    data = os.path.join(d, layout.TRAIN_DB, layout.FEATURES, "data.mdb")
    blob = open(data, "rb").read()
    with open(data, "wb") as f:
        f.write(b"\x13" * 8192 + blob[8192:])
    c["corrupt_lmdb"] = d
    d = dataset_copy("truncated_lmdb")
    data = os.path.join(d, layout.TRAIN_DB, layout.LABELS, "data.mdb")
    blob = open(data, "rb").read()
    with open(data, "wb") as f:
        f.write(blob[:len(blob) // 2])
    c["truncated_lmdb"] = d
    d = dataset_copy("garbage_mean")
    with open(os.path.join(d, layout.TRAIN_DB, layout.MEAN_FILE), "wb") as f:
        f.write(b"\xff" * 64)
    c["garbage_mean"] = d
    d = dataset_copy("wrong_size_mean")
    write_mean_binaryproto(np.zeros((3, H // 2, W), np.float32), os.path.join(d, layout.TRAIN_DB, layout.MEAN_FILE))
    c["wrong_size_mean"] = d
    d = dataset_copy("non_json_info")
    with open(os.path.join(d, layout.DATASET_INFO_FILE), "w") as f:
        f.write("{'num_bins': 32,\n")
    c["non_json_info"] = d
    d = dataset_copy("corrupt_test_png")
    test_png = sorted(os.listdir(os.path.join(d, layout.TEST_DIR, "visible")))[0]
    with open(os.path.join(d, layout.TEST_DIR, "visible", test_png), "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    c["corrupt_test_png"] = os.path.join(d, layout.TEST_DIR, "visible", test_png)

    c["empty_model"] = str(root / "empty.caffemodel")
    open(c["empty_model"], "wb").close()
    c["empty_state"] = str(root / "empty.solverstate")
    open(c["empty_state"], "wb").close()
    c["broken_prototxt"] = str(root / "broken_net.prototxt")
    with open(c["broken_prototxt"], "w") as f:
        f.write('name: "thermalnet"\nlayer {\n  name: "data"\n  type: "Input"\n  top: data\n')
    c["images"] = str(root / "images")                 # an input folder holding one corrupt PNG
    os.makedirs(c["images"])
    c["corrupt_png"] = os.path.join(c["images"], "broken_photo.png")
    with open(c["corrupt_png"], "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    c["corrupt_pairs"] = str(root / "corrupt_pairs")    # a pairs folder whose only pair is corrupt
    for sub in ("visible", "ir"):
        os.makedirs(os.path.join(c["corrupt_pairs"], sub))
        with open(os.path.join(c["corrupt_pairs"], sub, "pair_000.png"), "wb") as f:
            f.write(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    c["empty_pairs"] = str(root / "empty_pairs")
    os.makedirs(c["empty_pairs"])
    c["corrupt_jpeg"] = str(root / "truncated_flir.jpg")
    with open(c["corrupt_jpeg"], "wb") as f:
        f.write(b"\xff\xd8\xff\xe1\x00\x10FLIR\x00\x01" + os.urandom(100))
    c["plain_jpeg"] = str(root / "ordinary_photo.jpg")   # a valid JPEG without FLIR radiometric data
    from PIL import Image
    Image.fromarray(np.random.RandomState(0).randint(0, 256, (60, 80, 3)).astype(np.uint8)).save(c["plain_jpeg"])
    c["run_bad_summary"] = str(root / "run_bad_summary")
    os.makedirs(c["run_bad_summary"])
    with open(os.path.join(c["run_bad_summary"], "train_summary.json"), "w") as f:
        f.write('{"iterations": 12,')
    c["ablate_bad_json"] = str(root / "ablate_bad_json")
    os.makedirs(c["ablate_bad_json"])
    with open(os.path.join(c["ablate_bad_json"], "ablation.json"), "w") as f:
        f.write("[1, 2")
    c["run_bad_csv"] = str(root / "run_bad_csv")
    os.makedirs(c["run_bad_csv"])
    for name in ("train.csv", "val.csv"):
        with open(os.path.join(c["run_bad_csv"], name), "wb") as f:
            f.write(b"\x00\x01garbage\xff\n1,2\n")
    c["not_a_log"] = str(root / "not_a_caffe.log")
    with open(c["not_a_log"], "w") as f:
        f.write("hello\nthis is no training log\n")
    c["root"] = str(root)
    return c


# -- cases: (command, argv with {placeholders}, the bad file named in the error, the output) ----
OUT = "{out}"


def _ev(dataset="{dataset}", model="{model}", deploy=DEPLOY):
    return ["--dataset", dataset, "--deploy", deploy, "--model", model, "--out", OUT, "--quiet"]


CASES = {
    # tools.train: the dataset's LMDBs, mean and description; --net; --weights
    "train-corrupt_lmdb": ("tools.train", ["--dataset", "{corrupt_lmdb}", "--out", OUT, "--epochs", "1",
                                           "--batch-size", "2"], "{corrupt_lmdb}/train_db/features"),
    "train-truncated_lmdb": ("tools.train", ["--dataset", "{truncated_lmdb}", "--out", OUT, "--epochs", "1",
                                             "--batch-size", "2"], "{truncated_lmdb}/train_db/labels"),
    "train-garbage_mean": ("tools.train", ["--dataset", "{garbage_mean}", "--out", OUT, "--epochs", "1",
                                           "--batch-size", "2"], "{garbage_mean}/train_db/mean.binaryproto"),
    "train-wrong_size_mean": ("tools.train", ["--dataset", "{wrong_size_mean}", "--out", OUT, "--epochs", "1",
                                              "--batch-size", "2"], "{wrong_size_mean}/train_db/mean.binaryproto"),
    "train-non_json_info": ("tools.train", ["--dataset", "{non_json_info}", "--out", OUT, "--epochs", "1",
                                            "--batch-size", "2"], "{non_json_info}/dataset.json"),
    "train-other_q": ("tools.train", ["--dataset", "{other_q}", "--out", OUT, "--epochs", "1", "--batch-size", "2"],
                      "{other_q}"),
    "train-broken_net": ("tools.train", ["--dataset", "{dataset}", "--net", "{broken_prototxt}", "--out", OUT,
                                         "--epochs", "1", "--batch-size", "2"], "{broken_prototxt}"),
    "train-empty_weights": ("tools.train", ["--dataset", "{dataset}", "--weights", "{empty_model}", "--out", OUT,
                                            "--epochs", "1", "--batch-size", "2"], "{empty_model}"),
    "train-wrong_shape_weights": ("tools.train", ["--dataset", "{dataset}", "--weights", "{wrong_shape_model}",
                                                  "--out", OUT, "--epochs", "1", "--batch-size", "2"],
                                  "{wrong_shape_model}"),
    "train-empty_solverstate": ("tools.train", ["--dataset", "{dataset}", "--resume", "{empty_state}", "--out", OUT,
                                                "--epochs", "1", "--batch-size", "2"], "{empty_state}"),
    "train-broken_solver_template": ("tools.train", ["--dataset", "{dataset}", "--solver-template",
                                                     "{broken_prototxt}", "--out", OUT, "--epochs", "1",
                                                     "--batch-size", "2"], "{broken_prototxt}"),
    # tools.evaluate: dataset (description, LMDBs for the baselines, mean, test images), deploy, model
    "evaluate-empty_model": ("tools.evaluate", _ev(model="{empty_model}"), "{empty_model}"),
    "evaluate-wrong_shape_model": ("tools.evaluate", _ev(model="{wrong_shape_model}"), "{wrong_shape_model}"),
    "evaluate-broken_deploy": ("tools.evaluate", _ev(deploy="{broken_prototxt}"), "{broken_prototxt}"),
    "evaluate-non_json_info": ("tools.evaluate", _ev("{non_json_info}"), "{non_json_info}/dataset.json"),
    "evaluate-other_q": ("tools.evaluate", _ev("{other_q}"), "{other_q}"),
    "evaluate-garbage_mean": ("tools.evaluate", _ev("{garbage_mean}"), "{garbage_mean}/train_db/mean.binaryproto"),
    "evaluate-corrupt_lmdb": ("tools.evaluate", _ev("{corrupt_lmdb}"), "{corrupt_lmdb}/train_db/features"),
    "evaluate-corrupt_test_png": ("tools.evaluate", _ev("{corrupt_test_png_dataset}"), "{corrupt_test_png}"),
    # tools.augment: model, deploy, mean, dataset, input images
    "augment-empty_model": ("tools.augment", ["--model", "{empty_model}", "--deploy", DEPLOY, "--dataset",
                                              "{dataset}", "--input", "{dataset}/test/visible", "--out", OUT,
                                              "--quiet"], "{empty_model}"),
    "augment-wrong_shape_model": ("tools.augment", ["--model", "{wrong_shape_model}", "--deploy", DEPLOY,
                                                    "--dataset", "{dataset}", "--input", "{dataset}/test/visible",
                                                    "--out", OUT, "--quiet"], "{wrong_shape_model}"),
    "augment-broken_deploy": ("tools.augment", ["--model", "{model}", "--deploy", "{broken_prototxt}", "--dataset",
                                                "{dataset}", "--input", "{dataset}/test/visible", "--out", OUT,
                                                "--quiet"], "{broken_prototxt}"),
    "augment-garbage_mean": ("tools.augment", ["--model", "{model}", "--deploy", DEPLOY, "--mean",
                                               "{garbage_mean}/train_db/mean.binaryproto", "--input",
                                               "{dataset}/test/visible", "--out", OUT, "--quiet"],
                             "{garbage_mean}/train_db/mean.binaryproto"),
    "augment-non_json_info": ("tools.augment", ["--model", "{model}", "--deploy", DEPLOY, "--dataset",
                                                "{non_json_info}", "--input", "{dataset}/test/visible", "--out", OUT,
                                                "--quiet"], "{non_json_info}/dataset.json"),
    "augment-other_q": ("tools.augment", ["--model", "{model}", "--deploy", DEPLOY, "--dataset", "{other_q}",
                                          "--input", "{dataset}/test/visible", "--out", OUT, "--quiet"], "{other_q}"),
    "augment-corrupt_png": ("tools.augment", ["--model", "{model}", "--deploy", DEPLOY, "--dataset", "{dataset}",
                                              "--input", "{images}", "--out", OUT, "--quiet"], "{corrupt_png}"),
    "augment-empty_input": ("tools.augment", ["--model", "{model}", "--deploy", DEPLOY, "--dataset", "{dataset}",
                                              "--input", "{empty_pairs}", "--out", OUT, "--quiet"], "{empty_pairs}"),
    # thermalnet.onnx_export: deploy and model
    "onnx_export-empty_model": ("thermalnet.onnx_export", ["--deploy", DEPLOY, "--model", "{empty_model}", "--out",
                                                      "{out}.onnx"], "{empty_model}"),
    "onnx_export-wrong_shape_model": ("thermalnet.onnx_export", ["--deploy", DEPLOY, "--model", "{wrong_shape_model}",
                                                            "--out", "{out}.onnx"], "{wrong_shape_model}"),
    "onnx_export-broken_deploy": ("thermalnet.onnx_export", ["--deploy", "{broken_prototxt}", "--model", "{model}",
                                                        "--out", "{out}.onnx"], "{broken_prototxt}"),
    # tools.run_flir: FLIR files, an existing dataset, weights
    "run_flir-plain_jpeg": ("tools.run_flir", ["--flir", "{plain_jpeg}", "--out", OUT, "--quiet"], "{plain_jpeg}"),
    "run_flir-corrupt_jpeg": ("tools.run_flir", ["--flir", "{corrupt_jpeg}", "--out", OUT, "--quiet"],
                              "{corrupt_jpeg}"),
    "run_flir-non_json_info": ("tools.run_flir", ["--flir", "{plain_jpeg}", "--dataset", "{non_json_info}",
                                                  "--out", OUT, "--quiet"], "{non_json_info}/dataset.json"),
    "run_flir-empty_weights": ("tools.run_flir", ["--flir", "{plain_jpeg}", "--weights", "{empty_model}",
                                                  "--out", OUT, "--quiet"], "{empty_model}"),
    # tools.ablate: pairs folder, ImageNet weights, ablation.json
    "ablate-empty_pairs": ("tools.ablate", ["--pairs", "{empty_pairs}", "--out", OUT, "--iterations", "2",
                                            "--quiet"], "{empty_pairs}"),
    "ablate-corrupt_pairs": ("tools.ablate", ["--pairs", "{corrupt_pairs}", "--out", OUT, "--iterations", "2",
                                              "--quiet"], "{corrupt_pairs}"),
    "ablate-empty_imagenet": ("tools.ablate", ["--pairs", "{corrupt_pairs}", "--arms", "imagenet", "--imagenet",
                                               "{empty_model}", "--out", OUT, "--iterations", "2", "--quiet"],
                              "{empty_model}"),
    "ablate-bad_json": ("tools.ablate", ["--report-only", "--out", "{ablate_bad_json}"],
                        "{ablate_bad_json}/ablation.json"),
    # tools.report, tools.fidelity: a run's and a dataset's files
    "report-bad_summary": ("tools.report", ["--run", "{run_bad_summary}", "--out", OUT],
                           "{run_bad_summary}/train_summary.json"),
    "fidelity-non_json_info": ("tools.fidelity", ["{non_json_info}", "--json", "{out}.json"],
                               "{non_json_info}/dataset.json"),
    "fidelity-broken_deploy": ("tools.fidelity", ["{dataset}", "--deploy", "{broken_prototxt}", "--json",
                                                  "{out}.json"], "{broken_prototxt}"),
    "fidelity-broken_net": ("tools.fidelity", ["{dataset}", "--net", "{broken_prototxt}", "--json", "{out}.json"],
                            "{broken_prototxt}"),
    # tools.demo: weights are checked before the SYNTHETIC dataset is generated
    "demo-empty_weights": ("tools.demo", ["--quick", "--weights", "{empty_model}", "--data-root", "{out}_data",
                                          "--out", OUT], "{empty_model}"),
    # tools.gpu_bundle: the Caffe build it packs (checked before anything is downloaded)
    "gpu_bundle-not_a_build": ("tools.gpu_bundle", ["--caffe-root", "{dataset}", "--python", sys.executable,
                                                    "--out", "{out}.tar.xz"], "{dataset}"),
    # dataset_builder: pairs folders, FLIR files, classes CSV
    "build-empty_pairs": ("dataset_builder build", ["--pairs", "{empty_pairs}", "--out", OUT, "--quiet"],
                          "{empty_pairs}"),
    "build-corrupt_pairs": ("dataset_builder build", ["--pairs", "{corrupt_pairs}", "--out", OUT, "--quiet"],
                            "{corrupt_pairs}"),
    "build-corrupt_pairs_strict": ("dataset_builder build", ["--pairs", "{corrupt_pairs}", "--strict", "--out", OUT,
                                                             "--quiet"], "{corrupt_pairs}"),
    "build-plain_jpeg": ("dataset_builder build", ["--flir", "{plain_jpeg}", "--out", OUT, "--quiet"],
                         "{plain_jpeg}"),
    "build-corrupt_jpeg": ("dataset_builder build", ["--flir", "{corrupt_jpeg}", "--out", OUT, "--quiet"],
                           "{corrupt_jpeg}"),
    "build-bad_classes": ("dataset_builder build", ["--pairs", "{corrupt_pairs}", "--classes", "{corrupt_png}",
                                                    "--out", OUT, "--quiet"], "{corrupt_png}"),
    "overlay-plain_jpeg": ("dataset_builder overlay", ["{plain_jpeg}", "--out", "{out}.png"], "{plain_jpeg}"),
    "overlay-corrupt_jpeg": ("dataset_builder overlay", ["{corrupt_jpeg}", "--out", "{out}.png"], "{corrupt_jpeg}"),
    # thermalnet's own commands
    "nets-empty_weights": ("thermalnet.nets", ["--check-weights", "{empty_model}"], "{empty_model}"),
    "nets-wrong_shape_weights": ("thermalnet.nets", ["--check-weights", "{wrong_shape_model}"],
                                 "{wrong_shape_model}"),
    "nets-materialize_non_json_info": ("thermalnet.nets", ["--materialize", "{non_json_info}", "{out}.prototxt"],
                                       "{non_json_info}/dataset.json"),
    "nets-materialize_other_q": ("thermalnet.nets", ["--materialize", "{other_q}", "{out}.prototxt"], "{other_q}"),
    "gatys-empty_vgg": ("thermalnet.gatys", ["--vgg-weights", "{empty_model}", "--content", "{corrupt_png}",
                                             "--style", "{corrupt_png}", "--out", "{out}.png"], "{empty_model}"),
    "caffe_log-not_a_log": ("thermalnet.caffe_log", ["{not_a_log}", "--out", OUT], "{not_a_log}"),
    "plots-bad_csv": ("thermalnet.plots", ["{run_bad_csv}", "--out", "{out}.png"], "{run_bad_csv}/train.csv"),
    # digits_jobs: the client's LMDB export, and the validator (whose refusals are its documented
    # one-line "REJECTED <file>: ..." form)
    "digits_export-corrupt_lmdb": ("digits_jobs.client export-folders", ["--dataset", "{corrupt_lmdb}", "--out",
                                                                          OUT], "{corrupt_lmdb}/train_db/features"),
    "digits_validate-broken_net": ("digits_jobs.validate", ["{broken_prototxt}", "--no-caffe"], "{broken_prototxt}",
                                   "REJECTED "),          # on stdout, stderr empty (digits_jobs/README.md)
    "digits_validate-corrupt_lmdb": ("digits_jobs.validate", [NET, "--dataset", "{corrupt_lmdb}", "--out", OUT,
                                                              "--no-caffe"], "{corrupt_lmdb}/train_db/features",
                                     "REJECTED "),
}


def _fill(text: str, c: dict) -> str:
    return text.format(**c)


def _state(path: str):
    """What exists at path (files and their sizes/mtimes), to tell "unchanged" from "half-written"."""
    if not os.path.exists(path):
        return None
    if os.path.isfile(path):
        st = os.stat(path)
        return (st.st_size, st.st_mtime_ns)
    return sorted((os.path.relpath(os.path.join(d, f), path), os.path.getsize(os.path.join(d, f)))
                  for d, _, files in os.walk(path) for f in files)


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_naming_the_file(corpus, tmp_path, case):
    command, argv, bad = CASES[case][:3]
    prefix = CASES[case][3] if len(CASES[case]) > 3 else "error: "
    verdict_on_stdout = prefix == "REJECTED "
    c = dict(corpus, out=str(tmp_path / "out"),
             corrupt_test_png_dataset=os.path.dirname(os.path.dirname(os.path.dirname(corpus["corrupt_test_png"]))))
    args = [_fill(a, c) for a in argv]
    bad = _fill(bad, c)
    outputs = [p for p in (c["out"], c["out"] + ".onnx", c["out"] + ".json", c["out"] + ".png",
                           c["out"] + ".prototxt", c["out"] + "_data", c["out"] + ".tar.xz")]
    inputs = [a for a in args if a.startswith(corpus["root"])]
    before = {p: _state(p) for p in outputs + inputs}
    env = dict(os.environ, PYTHONPATH=REPO)
    r = subprocess.run([sys.executable, "-m"] + command.split() + args, cwd=REPO, capture_output=True, text=True,
                       env=env, timeout=300)
    lines = [line for line in r.stderr.splitlines() if line.strip()]       # (--quiet: no progress bars)
    if verdict_on_stdout:
        assert not lines, r.stderr[-3000:]
        lines = [line for line in r.stdout.splitlines() if line.startswith(prefix)]
    assert r.returncode == 1, (r.returncode, r.stderr[-3000:])
    assert "Traceback" not in r.stderr and "Check failed" not in r.stderr, r.stderr[-3000:]
    assert len(lines) == 1, r.stderr[-3000:]
    assert lines[0].startswith(prefix), lines[0]
    assert bad in lines[0], (bad, lines[0])
    for p in outputs + inputs:
        assert _state(p) == before[p], "%s was written or changed by a failed command" % p


def test_every_kit_command_is_in_the_corpus():
    """A new launcher must bring its bad inputs here (the benchmark reads none from the user)."""
    launchers = {"tools." + f[:-3] for f in os.listdir(os.path.join(REPO, "tools"))
                 if f.endswith(".py") and not f.startswith("_")
                 and f not in ("benchmark.py", "bench_old_loss.py", "gpu_check.py",      # (gpu_check: neither)
                               "mutation.py")}      # reads module names, no file: its one-line error is tested there
    covered = {CASES[k][0].split()[0] for k in CASES}
    assert launchers <= covered, sorted(launchers - covered)
    assert {"dataset_builder", "thermalnet.nets", "thermalnet.gatys", "thermalnet.caffe_log",
            "thermalnet.plots", "digits_jobs.client", "digits_jobs.validate"} <= covered


def test_cli_run_exit_codes_and_cleanup(tmp_path, capsys):
    """thermalnet.cli.run: 0 / the body's int, 1 with one line (multi-line messages joined), 130 on
    Ctrl-C; an output folder made by the failed body and holding no file is removed, one with files
    (a failed run's log) is kept; a bug (TypeError) is not hidden."""
    from thermalnet import cli
    assert cli.run(lambda: None) == 0 and cli.run(lambda: 3) == 3
    made = tmp_path / "made" / "deep"

    def fail():
        made.mkdir(parents=True)
        raise ValueError("x.txt: first\n  second line")
    assert cli.run(fail, outputs=[str(tmp_path / "made")]) == 1
    assert capsys.readouterr().err == "error: x.txt: first | second line\n"
    assert not (tmp_path / "made").exists()
    kept = tmp_path / "kept"

    def fail_after_log():
        kept.mkdir()
        (kept / "train.log").write_text("log")
        raise RuntimeError("stopped")
    assert cli.run(fail_after_log, outputs=[str(kept)]) == 1 and (kept / "train.log").is_file()

    def interrupted():
        raise KeyboardInterrupt
    assert cli.run(interrupted) == 130
    with pytest.raises(TypeError):
        cli.run(lambda: None + 1)


COMMAND_MODULES = ["tools.train", "tools.evaluate", "tools.augment", "tools.demo", "tools.run_flir", "tools.ablate",
                   "tools.report", "tools.fidelity", "thermalnet.onnx_export", "tools.benchmark", "dataset_builder.cli",
                   "thermalnet.nets", "thermalnet.gatys", "thermalnet.caffe_log", "thermalnet.plots",
                   "thermalnet.caffe_env", "tools.gpu_bundle", "tools.gpu_check"]


@pytest.mark.parametrize("module", COMMAND_MODULES)
def test_every_command_has_build_parser_and_main(module):
    """One shape for every command module: build_parser() (what --help shows, what tests inspect)
    and main(argv) -> exit code; its prog is what the user types."""
    import argparse
    import importlib
    mod = importlib.import_module(module)
    p = mod.build_parser()
    assert isinstance(p, argparse.ArgumentParser) and callable(mod.main)
    typed = "python -m " + (module[:-len(".cli")] if module.endswith(".cli") else module)
    assert p.prog == typed, p.prog
    with pytest.raises(SystemExit) as info:            # argparse's own exit: 0 for --help
        p.parse_args(["--help"])
    assert info.value.code == 0
