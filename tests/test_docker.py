"""docker/: the Dockerfiles build Caffe with the same script CI runs, copy only what exists,
and the compose file gives DIGITS its port and volumes. Docker itself does not run here:
the files are parsed and checked against the repository.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCKER = os.path.join(REPO, "docker")
INSTALL = "tools/install_caffe.sh"


def parse_dockerfile(path):
    """[(INSTRUCTION, argument text)] with comments dropped and continuation lines joined."""
    out, buf = [], ""
    with open(path) as f:
        for raw in f:
            line = raw.rstrip("\n")
            if not buf and (not line.strip() or line.lstrip().startswith("#")):
                continue
            if buf and line.lstrip().startswith("#"):
                continue
            if line.endswith("\\"):
                buf += line[:-1] + " "
                continue
            buf += line
            word, _, rest = buf.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            buf = ""
    assert not buf, "%s ends inside a continued line" % path
    return out


def arg_defaults(instrs):
    d = {}
    for ins, rest in instrs:
        if ins == "ARG" and "=" in rest:
            k, _, val = rest.partition("=")
            d[k] = val.strip('"')
    return d


def copy_sources(instrs):
    srcs = []
    for ins, rest in instrs:
        if ins == "COPY":
            parts = [p for p in shlex.split(rest) if not p.startswith("--")]
            srcs += parts[:-1]
    return srcs


# -- a strict parser for the YAML subset docker-compose.yml uses (PyYAML cross-checks it below) -------
class YamlSubsetError(ValueError):
    pass


def _scalar(text):
    text = text.strip()
    if not text:
        return None
    if text[0] in "\"'":
        if len(text) < 2 or text[-1] != text[0]:
            raise YamlSubsetError("unterminated quote: %r" % text)
        return text[1:-1]
    if text.startswith("["):
        if not text.endswith("]"):
            raise YamlSubsetError("flow sequence not closed: %r" % text)
        return [_scalar(t) for t in text[1:-1].split(",") if t.strip()]
    if text[0] in "{&*!|>%@`":
        raise YamlSubsetError("outside the supported subset: %r" % text)
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    if text in ("true", "false"):
        return text == "true"
    return text


def _strip_comment(line):
    out, quote = [], None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1] in " \t"):
            break
        out.append(ch)
    return "".join(out).rstrip()


def parse_yaml_subset(text):
    """Block mappings and sequences, scalars, [flow] lists, comments; anything else is an error."""
    lines = []
    for n, raw in enumerate(text.splitlines(), 1):
        if "\t" in raw[:len(raw) - len(raw.lstrip())]:
            raise YamlSubsetError("line %d: tab indentation" % n)
        line = _strip_comment(raw)
        if line.strip():
            lines.append((len(line) - len(line.lstrip()), line.strip(), n))

    def block(ls, i):
        if ls[i][1].startswith("- ") or ls[i][1] == "-":
            return seq(ls, i, ls[i][0])
        return mapping(ls, i, ls[i][0])

    def mapping(ls, i, indent):
        d = {}
        while i < len(ls):
            ind, txt, n = ls[i]
            if ind < indent:
                break
            if ind > indent:
                raise YamlSubsetError("line %d: unexpected indentation" % n)
            m = re.fullmatch(r"([A-Za-z0-9_.\-]+|\"[^\"]+\")\s*:(?:\s+(.*))?", txt)
            if not m:
                raise YamlSubsetError("line %d: not a 'key: value' line: %r" % (n, txt))
            key = m.group(1).strip('"')
            if key in d:
                raise YamlSubsetError("line %d: duplicate key %r" % (n, key))
            i += 1
            if m.group(2) is not None and m.group(2).strip():
                d[key] = _scalar(m.group(2))
            elif i < len(ls) and ls[i][0] > ind:
                d[key], i = block(ls, i)
            elif i < len(ls) and ls[i][0] == ind and ls[i][1].startswith("- "):
                d[key], i = seq(ls, i, ind)
            else:
                d[key] = None
        return d, i

    def seq(ls, i, indent):
        items = []
        while i < len(ls) and ls[i][0] == indent and ls[i][1].startswith("-"):
            ind, txt, n = ls[i]
            rest = txt[1:].strip()
            j = i + 1
            while j < len(ls) and ls[j][0] > ind:
                j += 1
            if re.match(r"^[A-Za-z0-9_.\-]+\s*:(\s|$)", rest):
                # a mapping item: first key on the dash line, the others aligned with it
                sub = [(ind + 2, rest, n)] + ls[i + 1:j]
                val, k = mapping(sub, 0, ind + 2)
                if k != len(sub):
                    raise YamlSubsetError("line %d: unparsed content in a list item" % sub[k][2])
                items.append(val)
            elif j > i + 1:
                raise YamlSubsetError("line %d: nested content under a scalar list item" % ls[i + 1][2])
            else:
                items.append(_scalar(rest))
            i = j
        return items, i

    if not lines:
        return None
    doc, i = block(lines, 0)
    if i != len(lines):
        raise YamlSubsetError("line %d: unparsed content" % lines[i][2])
    return doc


def test_yaml_subset_parser_is_strict():
    assert parse_yaml_subset("a:\n  b: [x, y]\n  c:\n    - 1\n    - k: v\n      m: 'q # r'\n") == \
        {"a": {"b": ["x", "y"], "c": [1, {"k": "v", "m": "q # r"}]}}
    for bad in ("a: &anchor 1\n", "a: |\n  text\n", "a:\n\tb: 1\n", "a: 1\na: 2\n", "just text\n"):
        with pytest.raises(YamlSubsetError):
            parse_yaml_subset(bad)


# -- Dockerfiles ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["Dockerfile.cpu", "Dockerfile.gpu", "Dockerfile.gpu-cuda12", "Dockerfile.digits",
                                  "Dockerfile.bvlc"])
def test_copy_sources_exist(name):
    instrs = parse_dockerfile(os.path.join(DOCKER, name))
    srcs = copy_sources(instrs)
    assert srcs, name
    for s in srcs:
        assert os.path.exists(os.path.join(REPO, s)), "%s copies %s, which is not in the repository" % (name, s)


def makefile_var(name):
    with open(os.path.join(REPO, "Makefile")) as f:
        m = re.search(r"^%s :?= *(.*)$" % re.escape(name), f.read(), re.M)
    assert m, "Makefile defines no %s" % name
    return m.group(1).strip()


def install_script_pins():
    """{package: version} of the CUDA wheels tools/install_caffe.sh installs for --gpu."""
    with open(os.path.join(REPO, INSTALL)) as f:
        text = f.read()
    return dict(re.findall(r"\b(nvidia-[a-z0-9-]+)==([0-9.]+)", text))


# The CUDA 12 image builds with its own toolkit (NVIDIA's CUDA 12 wheels have no nvcc).
CUDA12_TOOLKIT = ["--cuda-home", "/usr/local/cuda"]


@pytest.mark.parametrize("name,flag", [("Dockerfile.cpu", None), ("Dockerfile.gpu", "--gpu"),
                                       ("Dockerfile.gpu-cuda12", "--gpu")])
def test_caffe_is_built_by_the_ci_script(name, flag):
    instrs = parse_dockerfile(os.path.join(DOCKER, name))
    runs = [rest for ins, rest in instrs if ins == "RUN"]
    calls = [r for r in runs if INSTALL in r]
    assert any("--deps-only" in r for r in calls), "%s: no package step through %s" % (name, INSTALL)
    build = [r for r in calls if "--deps-only" not in r]
    assert build, "%s builds Caffe without %s" % (name, INSTALL)
    # the script is copied before it runs, from the repository's own tools/
    assert INSTALL in copy_sources(instrs)
    if flag:
        # exactly the build of `make gpu-setup` / `make gpu-build`: the Makefile's flags
        flags = arg_defaults(instrs)["CAFFE_GPU_FLAGS"]
        extra = CUDA12_TOOLKIT if name.endswith("cuda12") else []
        assert flags.split() == makefile_var("GPU_FLAGS").split() + extra, \
            "%s and the Makefile build different GPU Caffes" % name
        assert flags.split()[0] == flag
        script = open(os.path.join(REPO, INSTALL)).read()
        for f in [f for f in flags.split() if f.startswith("-")]:   # every default flag is one the script parses
            assert "    %s)" % f in script, "%s passes %s, which %s does not accept" % (name, f, INSTALL)
        assert all("$CAFFE_GPU_FLAGS" in r and '${CUDA_ARCH:+--cuda-arch "$CUDA_ARCH"}' in r for r in build)
        setup = [r for r in runs if "make gpu-setup" in r]
        assert setup == ['make gpu-setup GPU_FLAGS="$CAFFE_GPU_FLAGS" CUDA_ARCH="$CUDA_ARCH"'], setup
        with open(os.path.join(REPO, "Makefile")) as f:
            mk = f.read()
        assert 'CAFFE_BUILD_FLAGS="$(GPU_FLAGS)" CUDA_ARCH="$(CUDA_ARCH)" bash tools/setup.sh' in mk
        assert 'bash tools/install_caffe.sh $(GPU_FLAGS) $(if $(CUDA_ARCH),--cuda-arch "$(CUDA_ARCH)")' in mk
    else:
        assert all("--gpu" not in r for r in build)
        assert any("make setup" in r for r in runs), "%s: the kit is not set up with make setup" % name
    # the script really understands the options the Dockerfile passes
    with open(os.path.join(REPO, INSTALL)) as f:
        script = f.read()
    for opt in ("--deps-only", "--no-apt", "--jobs", "--gpu", "--cuda-arch", "--cuda-home"):
        assert re.search(r"^\s*%s\)" % re.escape(opt), script, re.M), opt


def test_bases():
    cpu = parse_dockerfile(os.path.join(DOCKER, "Dockerfile.cpu"))
    assert [r for i, r in cpu if i == "FROM"] == ["debian:bookworm"]
    gpu = parse_dockerfile(os.path.join(DOCKER, "Dockerfile.gpu"))
    base = arg_defaults(gpu)["CUDA_IMAGE"]
    # the image's CUDA is the wheels' CUDA (major.minor of the pinned runtime and compiler)
    pins = install_script_pins()
    cuda = ".".join(pins["nvidia-cuda-runtime"].split(".")[:2])
    assert ".".join(pins["nvidia-cuda-nvcc"].split(".")[:2]) == cuda
    m = re.fullmatch(r"nvidia/cuda:(\d+\.\d+)\.\d+-base-ubuntu24\.04", base)
    assert m and m.group(1) == cuda, (base, cuda)
    # CUDA 12: a devel image (nvcc) with cuDNN, on the same Ubuntu as the CUDA 13 image (its packages)
    cuda12 = parse_dockerfile(os.path.join(DOCKER, "Dockerfile.gpu-cuda12"))
    assert re.fullmatch(r"nvidia/cuda:12\.\d+\.\d+-cudnn-devel-ubuntu24\.04", arg_defaults(cuda12)["CUDA_IMAGE"])
    assert [r for i, r in cuda12 if i == "FROM"] == [r for i, r in gpu if i == "FROM"] == ["${CUDA_IMAGE}"]
    dig = parse_dockerfile(os.path.join(DOCKER, "Dockerfile.digits"))
    img = arg_defaults(dig)["DIGITS_IMAGE"]
    assert img.startswith("nvcr.io/nvidia/digits:") and img.endswith("-caffe")
    assert [r for i, r in dig if i == "FROM"] == ["${DIGITS_IMAGE}"]


def test_digits_image_carries_the_loss_layer_and_jobs():
    dig = parse_dockerfile(os.path.join(DOCKER, "Dockerfile.digits"))
    srcs = copy_sources(dig)
    assert "prototxt/" in srcs and "digits_jobs/jobs/" in srcs
    assert os.path.isfile(os.path.join(REPO, "prototxt", "digits_python_layers.py"))
    assert any(i == "EXPOSE" and r == "5000" for i, r in dig)


# -- the official BVLC Caffe 1.0 image ---------------------------------------------------------------
BVLC_PROTOTXT = "/opt/thermalnet/prototxt"


def test_bvlc_image_is_the_official_one_plus_the_networks():
    instrs = parse_dockerfile(os.path.join(DOCKER, "Dockerfile.bvlc"))
    assert arg_defaults(instrs)["BVLC_IMAGE"] == "bvlc/caffe:cpu"
    assert [r for i, r in instrs if i == "FROM"] == ["${BVLC_IMAGE}"]
    assert [r for i, r in instrs if i == "COPY"] == ["prototxt/ %s/" % BVLC_PROTOTXT]
    env = [r for i, r in instrs if i == "ENV"]
    assert env == ["PYTHONPATH=%s:${PYTHONPATH}" % BVLC_PROTOTXT], env


def _caffe_tool_cmd(words):
    from thermalnet.caffe_env import caffe_tool
    assert words[0] == "caffe", words
    return [caffe_tool()] + words[1:]


def test_bvlc_image_build_checks_run_with_the_kits_caffe():
    """The image's build-time checks (the loss layer imports, each deploy net runs forward and
    backward), run here with the kit's Caffe and Python 3 in place of Caffe 1.0 and Python 2.7."""
    from thermalnet.caffe_env import python_layer_env
    instrs = parse_dockerfile(os.path.join(DOCKER, "Dockerfile.bvlc"))
    runs = [r for i, r in instrs if i == "RUN"]
    assert len(runs) == 1
    cmds = [c.strip() for c in runs[0].split("&&")]
    assert len(cmds) == 3
    env = python_layer_env()
    for c in cmds:
        words = [w.replace(BVLC_PROTOTXT, os.path.join(REPO, "prototxt")) for w in shlex.split(c)]
        if words[0] == "python":
            cmd = [sys.executable] + words[1:]
        else:
            cmd = _caffe_tool_cmd(words)
            assert os.path.isfile(words[words.index("-model") + 1]), c
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, "%s:\n%s" % (c, out.stderr[-2000:])


def bvlc_recipe():
    """The command lines of docker/README.md's BVLC recipe."""
    with open(os.path.join(DOCKER, "README.md")) as f:
        text = f.read()
    start = text.index("The recipe (BVLC recipe;")
    block = text[text.index("```", start) + 3:]
    return [ln.strip() for ln in block[:block.index("```")].strip().splitlines() if ln.strip()]


def test_bvlc_recipe_runs_with_the_kits_caffe(tiny_dataset, tmp_path):
    """Every step of the recipe, on the host as written (a small random dataset in place of
    the demo's), and the `docker run ... caffe ...` steps with the kit's Caffe in the -w folder;
    the solver is shortened to 2 iterations. What Caffe 1.0 in the image does is not run here."""
    from thermalnet.caffe_env import python_layer_env
    lines = bvlc_recipe()
    dataset, rundir = tiny_dataset[0], str(tmp_path / "bvlc")
    sub = [("$PWD/runs/bvlc", rundir), ("runs/datasets/synthetic", dataset), ("runs/bvlc", rundir), ("$PWD", REPO)]
    done = []
    for line in lines:
        for a, b in sub:
            line = line.replace(a, b)
        words = shlex.split(line)
        if line in ("make setup",) or words[:2] == ["docker", "build"] or "dataset_builder demo" in line:
            continue   # set up already / no Docker here / replaced by the small dataset
        if words[:2] == ["mkdir", "-p"]:
            os.makedirs(words[2], exist_ok=True)
        elif words[0] == "cp":
            shutil.copy(os.path.join(REPO, words[1]), words[2])
            with open(words[2]) as f:
                solver = f.read()
            for key, val in (("max_iter", 2), ("test_iter", 1), ("test_interval", 2), ("snapshot", 2),
                             ("display", 1)):
                solver, n = re.subn(r"^%s: .*$" % key, "%s: %d" % (key, val), solver, flags=re.M)
                assert n == 1, key
            with open(words[2], "w") as f:
                f.write(solver)
        elif words[0] == ".venv/bin/python":
            out = subprocess.run([sys.executable] + words[1:], cwd=REPO, capture_output=True, text=True)
            assert out.returncode == 0, "%s:\n%s" % (line, out.stderr)
        elif words[:2] == ["docker", "run"]:
            workdir = words[words.index("-w") + 1]
            assert words[words.index("-v") + 1] == "%s:%s" % (REPO, REPO)
            cmd = _caffe_tool_cmd(words[words.index("thermalnet-bvlc") + 1:])
            if "time" in cmd:
                cmd[cmd.index("-iterations") + 1] = "1"
            out = subprocess.run(cmd, cwd=workdir, env=python_layer_env(), capture_output=True, text=True,
                                 timeout=600)
            assert out.returncode == 0, "%s:\n%s" % (line, out.stderr[-2000:])
        else:
            raise AssertionError("the test does not know the recipe step %r" % line)
        done.append(" ".join(words[:2]) if words[0] != "docker" else "caffe " + cmd[1])
    assert done == ["mkdir -p", ".venv/bin/python -m", "cp prototxt/solver_demo.prototxt", "caffe time", "caffe train"]
    assert os.path.isfile(os.path.join(rundir, "snapshot_iter_2.caffemodel"))


# -- compose ----------------------------------------------------------------------------------------
def test_compose_ports_volumes_and_environment():
    with open(os.path.join(DOCKER, "docker-compose.yml")) as f:
        doc = parse_yaml_subset(f.read())
    svc = doc["services"]["digits"]
    assert svc["build"] == {"context": "..", "dockerfile": "docker/Dockerfile.digits"}
    assert os.path.isfile(os.path.join(DOCKER, svc["build"]["context"], svc["build"]["dockerfile"]))
    assert svc["ports"] == ["5000:5000"]
    mounts = {v.rsplit(":", 1)[1]: v.rsplit(":", 1)[0] for v in svc["volumes"]}
    assert set(mounts) == {"/data", "/workspace/jobs"}
    assert svc["environment"]["DIGITS_JOBS_DIR"] == "/workspace/jobs"
    assert svc["environment"]["THERMALNET_DATASET"].startswith("/data/")
    gpu = svc["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and gpu["capabilities"] == ["gpu"]
    import yaml   # cross-check with a full YAML parser (PyYAML, pinned in requirements.txt)
    with open(os.path.join(DOCKER, "docker-compose.yml")) as f:
        assert yaml.safe_load(f) == doc


def test_readme_documents_the_compose_mounts():
    with open(os.path.join(DOCKER, "README.md")) as f:
        text = f.read()
    for needle in ("5000", "/data", "/workspace/jobs", "docker build -f docker/Dockerfile.cpu",
                   "docker build -f docker/Dockerfile.gpu", "docker compose", "python -m digits_jobs.client",
                   "Nothing in this folder was run with Docker"):
        assert needle in text, needle


def test_cuda12_image_gives_the_toolkit_the_wheels_layout():
    """install_caffe.sh links and checks the CUDA libraries in $CUDA_HOME/lib (the wheels' layout):
    the toolkit's lib64 is linked there before the build, and the script checks the toolkit's nvcc."""
    instrs = parse_dockerfile(os.path.join(DOCKER, "Dockerfile.gpu-cuda12"))
    runs = [r for i, r in instrs if i == "RUN"]
    home = CUDA12_TOOLKIT[1]
    link = [k for k, r in enumerate(runs) if "ln -s lib64 %s/lib" % home in r]
    build = [k for k, r in enumerate(runs) if INSTALL in r and "--deps-only" not in r]
    assert link and build and link[0] < build[0], runs
    script = open(os.path.join(REPO, INSTALL)).read()
    assert '"$CUDA_TOOLKIT/bin/nvcc"' in script and 'CUDA_DIR=${CUDA_HOME:-/usr/local/cuda}' in script
    assert "LINKFLAGS += -Wl,-rpath,$CUDA_DIR/lib" in script
    # the GPU-only build lines are the CUDA 13 image's: one script, two toolkits
    gpu = [r for i, r in parse_dockerfile(os.path.join(DOCKER, "Dockerfile.gpu")) if i == "RUN"]
    assert [r for r in runs if INSTALL in r or "make gpu-setup" in r] == [r for r in gpu if INSTALL in r or
                                                                          "make gpu-setup" in r]


def test_install_script_refuses_a_toolkit_without_nvcc(tmp_path):
    proc = subprocess.run(["bash", os.path.join(REPO, INSTALL), "--gpu", "--cuda-home", str(tmp_path), "--no-apt"],
                          capture_output=True, text=True, env=dict(os.environ, THERMALNET_CACHE=str(tmp_path), PYTHON=sys.executable))
    assert proc.returncode == 1 and "has no bin/nvcc" in proc.stderr
    proc = subprocess.run(["bash", os.path.join(REPO, INSTALL), "--cuda-home", str(tmp_path), "--no-apt"],
                          capture_output=True, text=True, env=dict(os.environ, THERMALNET_CACHE=str(tmp_path), PYTHON=sys.executable))
    assert proc.returncode == 1 and "need --gpu" in proc.stderr
