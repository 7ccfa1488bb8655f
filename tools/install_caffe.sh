#!/usr/bin/env bash
# Build a Caffe with pycaffe from the brocolli-caffe sdist (BVLC lineage) with the
# classic Makefile, and cache it keyed by everything that shapes the build.
#
# One script for every place the kit builds Caffe: `make setup` (and so CI) and
# the Dockerfiles in docker/ all call it, so CI exercises what the images run.
#
# Usage: tools/install_caffe.sh [--python PY] [--cache DIR] [--gpu [--no-cudnn] [--cuda-home DIR]]
#                               [--cuda-arch "..."] [--deps-only] [--no-apt] [--jobs N] | --list
# Prints the finished CAFFE_ROOT as its last line of output. --gpu builds against
# NVIDIA's CUDA 13.0 wheels (compiler and libraries, no GPU needed to build); with
# --cuda-home against an installed toolkit instead (a CUDA 12 devel image's /usr/local/cuda).
# --list prints the finished builds in the cache instead, newest first: "ROOT cpu|gpu".
# For an interpreter Debian has no Boost.Python for (Python 2.7: tools/extra/digits_local.sh
# builds both), set BOOST_PYTHON_LIBDIR (the folder of libboost_pythonXY.so), PYTHON_PROTOC (the
# protoc command for caffe_pb2.py, one that interpreter's protobuf reads) and SDIST_PYTHON (a
# Python 3 whose pip downloads the sdist, which requires Python >= 3.7).
set -euo pipefail

CAFFE_SDIST="brocolli-caffe==9.0.2"
CAFFE_SDIST_SHA256="c6410cc60bdd6db685d441b66be7df05410f8850ac88d6b75d48ef9b2315c08a"
APT_PACKAGES=(build-essential pkg-config libprotobuf-dev protobuf-compiler
  libboost-system-dev libboost-thread-dev libboost-filesystem-dev libboost-regex-dev
  libboost-python-dev libopenblas-dev libhdf5-dev liblmdb-dev libgoogle-glog-dev
  libgflags-dev libimage-exiftool-perl patch)

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PY=${PYTHON:-python3}
CACHE=${THERMALNET_CACHE:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/thermalnet}
GPU=0; NO_CUDNN=0; CUDA_ARCH=""; CUDA_TOOLKIT=""; DEPS_ONLY=0; USE_APT=1; LIST=0; JOBS=$(nproc 2>/dev/null || echo 2)
while [ $# -gt 0 ]; do
  case "$1" in
    --python) PY=$2; shift 2;;
    --cache) CACHE=$2; shift 2;;
    --gpu) GPU=1; shift;;
    --no-cudnn) NO_CUDNN=1; shift;;
    --cuda-arch) CUDA_ARCH=$2; shift 2;;
    --cuda-home) CUDA_TOOLKIT=$2; shift 2;;
    --deps-only) DEPS_ONLY=1; shift;;
    --no-apt) USE_APT=0; shift;;
    --jobs) JOBS=$2; shift 2;;
    --list) LIST=1; shift;;
    -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0;;
    *) echo "install_caffe.sh: unknown option $1 (see --help)" >&2; exit 2;;
  esac
done

say() { echo "[install_caffe] $*" >&2; }
die() { echo "[install_caffe] ERROR: $*" >&2; exit 1; }

if [ "$LIST" = 1 ]; then
  for d in $(ls -dt "$CACHE"/caffe-*/ 2>/dev/null); do
    [ -f "$d/.thermalnet-complete" ] || continue
    if grep -q '^CPU_ONLY := 1' "$d/Makefile.config"; then echo "${d%/} cpu"; else echo "${d%/} gpu"; fi
  done
  exit 0
fi

# --- 1. system packages -------------------------------------------------------
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$USE_APT" = 1 ] && command -v apt-get >/dev/null; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    say "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if ! { $SUDO apt-get update -qq && $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"; } >"${TMPDIR:-/tmp}/thermalnet-apt.log" 2>&1; then
      tail -n 20 "${TMPDIR:-/tmp}/thermalnet-apt.log" >&2
      die "apt-get could not install: ${missing[*]} (full log: ${TMPDIR:-/tmp}/thermalnet-apt.log). Install them by hand, then rerun."
    fi
  else
    die "missing Debian packages: ${missing[*]}. Run: sudo apt-get install ${missing[*]}"
  fi
fi
[ "$DEPS_ONLY" = 1 ] && exit 0

# --- 2. the interpreter pycaffe is built for ----------------------------------
"$PY" -c "import numpy" 2>/dev/null || die "$PY cannot import numpy: install the kit's requirements first (make setup does)"
eval "$("$PY" - <<'PYEOF'
import sysconfig, numpy
v = sysconfig.get_config_var
print("PY_INCLUDE=%s" % sysconfig.get_paths()["include"])
print("NP_INCLUDE=%s" % numpy.get_include())
print("PY_LIBDIR=%s" % (v("LIBDIR") or ""))
print("PY_SHARED=%s" % (v("Py_ENABLE_SHARED") or 0))
print("PY_VER=%s" % v("py_version_short"))
print("NP_MAJOR=%s" % numpy.__version__.split(".")[0])
PYEOF
)"
PY_LIBNAME="python${PY_VER}"
if [ "$PY_SHARED" != 1 ] || [ ! -e "$PY_LIBDIR/lib${PY_LIBNAME}.so" ]; then
  # A static interpreter: link the tool against the distribution's libpython instead.
  PY_LIBDIR=/usr/lib/x86_64-linux-gnu
  [ -e "$PY_LIBDIR/lib${PY_LIBNAME}.so" ] || die "no lib${PY_LIBNAME}.so for the caffe tool; apt-get install lib${PY_LIBNAME}-dev"
fi
BOOST_PY="boost_python${PY_VER/./}"
# BOOST_PYTHON_LIBDIR: a Boost.Python Debian does not ship (Python 2.7: tools/extra/digits_local.sh);
# /usr/local/lib: one built for another Python (tools/extra/gpu_bundle.sh's for 3.12), found there by
# Makefile.config's LIBRARY_DIRS.
BOOST_PY_DIR=${BOOST_PYTHON_LIBDIR:-/usr/lib/x86_64-linux-gnu}
[ -e "$BOOST_PY_DIR/lib${BOOST_PY}.so" ] || { [ -z "${BOOST_PYTHON_LIBDIR:-}" ] && [ -e "/usr/local/lib/lib${BOOST_PY}.so" ]; } \
  || die "no lib${BOOST_PY}.so in $BOOST_PY_DIR: Debian's libboost-python-dev targets another Python than $PY ($PY_VER); set BOOST_PYTHON_LIBDIR"
PYTHON_PROTOC=${PYTHON_PROTOC:-protoc}

PROTOC_VER=$(protoc --version | awk '{print $2}')
LIBPROTO_VER=$(dpkg-query -W -f='${Version}' libprotobuf-dev 2>/dev/null | cut -d- -f1 || echo "?")
[ "$PROTOC_VER" = "$LIBPROTO_VER" ] || [ "$LIBPROTO_VER" = "?" ] \
  || die "protoc $PROTOC_VER does not match libprotobuf-dev $LIBPROTO_VER: another protoc shadows Debian's on PATH ($(command -v protoc))"

# --- 2b. --gpu: the CUDA toolchain and libraries, from NVIDIA's wheels ---------
# Pinned to CUDA 13.0 Update 2 (docker/Dockerfile.gpu's base image has the same CUDA).
# Why 13 and not 12: the CUDA 12 wheels of nvidia-cuda-nvcc-cu12 (12.6 .. 12.9) hold
# ptxas, libnvvm and headers but no nvcc, cicc, cudafe++ or fatbinary, so nothing can
# compile a .cu file with them; the CUDA 13 wheels carry the whole compiler. CUDA 13
# builds for compute capability 7.5 (Turing) and newer only: Pascal and Volta cards
# (the paper's Titan X Pascal, V100) need a CUDA 12 toolkit, which these wheels lack.
CUDA_PKGS=(nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88
  nvidia-cuda-runtime==13.0.96 nvidia-cublas==13.1.0.3 nvidia-curand==10.4.0.35
  nvidia-cuda-cccl==13.0.85)
CUDNN_PKGS=(nvidia-cudnn-cu13==9.13.0.50 nvidia-cuda-nvrtc==13.0.88)
# Real code for every CUDA 13 architecture from Turing to Blackwell, plus PTX of the
# newest one so that later GPUs can JIT-compile it.
DEFAULT_CUDA_ARCH="-gencode arch=compute_75,code=sm_75 -gencode arch=compute_80,code=sm_80 \
-gencode arch=compute_86,code=sm_86 -gencode arch=compute_89,code=sm_89 -gencode arch=compute_90,code=sm_90 \
-gencode arch=compute_100,code=sm_100 -gencode arch=compute_120,code=sm_120 -gencode arch=compute_120,code=compute_120"
# --cuda-home DIR: an installed toolkit (NVIDIA's CUDA 12 devel images have nvcc, the CUDA 12 wheels
# do not). Its own version takes the wheels' place in the cache key; an empty --cuda-arch then
# takes section 4's list, Pascal (sm_60) to Hopper plus PTX, which CUDA 12 still compiles.
if [ "$GPU" = 1 ] && [ -n "$CUDA_TOOLKIT" ]; then
  [ -x "$CUDA_TOOLKIT/bin/nvcc" ] || die "--cuda-home $CUDA_TOOLKIT has no bin/nvcc (a CUDA devel image's toolkit)"
  CUDA_HOME=$CUDA_TOOLKIT
  CUDA_PKGS=("toolkit $CUDA_TOOLKIT" "$("$CUDA_TOOLKIT/bin/nvcc" --version | grep -o 'release [0-9.]*, V[0-9.]*')")
  if [ "$NO_CUDNN" = 0 ]; then
    for h in "$CUDA_TOOLKIT/include/cudnn_version.h" /usr/include/cudnn_version.h ""; do [ -f "$h" ] && break; done
    [ -n "$h" ] || die "--cuda-home: no cudnn_version.h (a cudnn-devel image; or build with --no-cudnn)"
    CUDA_PKGS+=("cudnn $(grep -E '^#define CUDNN_(MAJOR|MINOR|PATCHLEVEL) ' "$h" | awk '{printf "%s.", $3}')")
  fi
elif [ "$GPU" = 1 ]; then
  [ "$NO_CUDNN" = 1 ] || CUDA_PKGS+=("${CUDNN_PKGS[@]}")
  [ -n "$CUDA_ARCH" ] || CUDA_ARCH=$DEFAULT_CUDA_ARCH
  CUDA_ROOT="$CACHE/cuda-$(printf '%s\n' "${CUDA_PKGS[@]}" | sha256sum | cut -c1-16)"
  # The build reads CUDA_HOME (section 4): the wheels' folder is a complete CUDA_HOME.
  CUDA_HOME="$CUDA_ROOT/nvidia/cu13"
else
  [ "$NO_CUDNN" = 0 ] && [ -z "$CUDA_ARCH" ] && [ -z "$CUDA_TOOLKIT" ] || die "--no-cudnn, --cuda-arch and --cuda-home need --gpu"
fi

# Install the wheels into their own cache folder (never into the venv: they are only
# for building and for libcaffe.so's RUNPATH), adding the unversioned library names
# (libcudart.so, ...) the linker's -lcudart needs: the wheels ship only sonames.
install_cuda() {
  [ -f "$CUDA_ROOT/.thermalnet-complete" ] && return 0
  local avail tmp c lib name
  avail=$(df -Pk "$CACHE" | awk 'NR==2{print $4}')
  [ "${avail:-0}" -gt 4000000 ] || die "less than 4 GB free under $CACHE for the CUDA wheels"
  say "installing CUDA wheels into $CUDA_ROOT: ${CUDA_PKGS[*]}"
  tmp=$(mktemp -d "$CACHE/.cuda-XXXXXX")
  if ! "$PY" -m pip install --quiet --no-deps --no-cache-dir --target "$tmp" "${CUDA_PKGS[@]}" \
       >"$CUDA_ROOT.log" 2>&1; then
    tail -n 20 "$CUDA_ROOT.log" >&2; rm -rf "$tmp"
    die "pip could not install the CUDA wheels (full log: $CUDA_ROOT.log)"
  fi
  c="$tmp/nvidia/cu13"
  [ -x "$c/bin/nvcc" ] || { rm -rf "$tmp"; die "the CUDA wheels gave no $c/bin/nvcc"; }
  if [ -d "$tmp/nvidia/cudnn" ]; then   # cuDNN has its own folder: link it into the CUDA_HOME
    for h in "$tmp"/nvidia/cudnn/include/*.h; do ln -s "../../cudnn/include/${h##*/}" "$c/include/"; done
    for lib in "$tmp"/nvidia/cudnn/lib/*.so.*; do ln -s "../../cudnn/lib/${lib##*/}" "$c/lib/"; done
  fi
  for lib in "$c"/lib/lib*.so.*; do
    name=${lib##*/}
    [ -e "$c/lib/${name%%.so.*}.so" ] || ln -s "$name" "$c/lib/${name%%.so.*}.so"
  done
  touch "$tmp/.thermalnet-complete"
  rm -rf "$CUDA_ROOT"; mv "$tmp" "$CUDA_ROOT"
}

# --- 3. cache key: every input of the build -----------------------------------
# Lines of section 4 between "# >>> GPU only" and "# <<< GPU only" do nothing in a CPU
# build and stay out of its key, so work on the GPU build never rebuilds the CPU one.
steps=$(sed -n '/^# --- 4/,$p' "$0")
[ "$GPU" = 1 ] || steps=$(printf '%s\n' "$steps" | sed '/^# >>> GPU only/,/^# <<< GPU only/d')
key_src=$(printf '%s\n' "$CAFFE_SDIST" "$CAFFE_SDIST_SHA256" "$GPU" "$NO_CUDNN" "$CUDA_ARCH" "$PY_VER" "$NP_MAJOR" \
  "$PROTOC_VER" "$PY_LIBDIR" "$BOOST_PY_DIR" "$PYTHON_PROTOC" "$(cat "$here/caffe/Makefile.config.in" "$here"/caffe/patches/*.patch)" "$steps")
if [ "$GPU" = 1 ]; then
  key_src=$(printf '%s\n' "$key_src" "${CUDA_PKGS[@]}" "$(cat "$here"/caffe/patches/gpu/*.patch)")
fi
KEY=$(printf '%s' "$key_src" | sha256sum | cut -c1-16)
ROOT="$CACHE/caffe-$KEY"
built() { [ -f "$ROOT/.thermalnet-complete" ] && { [ "$GPU" = 0 ] || [ -n "$CUDA_TOOLKIT" ] || [ -f "$CUDA_ROOT/.thermalnet-complete" ]; }; }
if built; then
  say "cached build found ($ROOT)"
  echo "$ROOT"; exit 0
fi
# One build per cache key at a time: a second caller of the same build waits, then finds
# the cached result; other builds (a CPU build while a long GPU build runs) go ahead.
mkdir -p "$CACHE"
exec 9>"$CACHE/.lock-$KEY"
if ! flock -n 9; then
  say "the same Caffe build is running in $CACHE; waiting for it"
  flock 9
fi
if [ "$GPU" = 1 ] && [ -z "$CUDA_TOOLKIT" ]; then   # the CUDA wheels are shared by every GPU build: one installer at a time
  exec 8>"$CACHE/.lock-cuda"
  flock 8
  install_cuda
  flock -u 8
fi
if built; then
  say "cached build found ($ROOT)"
  echo "$ROOT"; exit 0
fi
[ "$GPU" = 0 ] || say "GPU build for $(echo "$CUDA_ARCH" | grep -o 'code=[a-z_0-9]*' | cut -d= -f2 | tr '\n' ' ')\
(nvcc compiles every .cu file once per entry: far longer than the CPU build; docs/gpu.md: measured times)"

# --- 4. fetch, configure, build (into a temporary folder, renamed when done) -----
avail_kb=$(df -Pk "$CACHE" | awk 'NR==2{print $4}')
[ "${avail_kb:-0}" -gt 2000000 ] || die "less than 2 GB free under $CACHE: free some disk or set THERMALNET_CACHE"
WORK=$(mktemp -d "$CACHE/.build-XXXXXX")
LOG="$CACHE/caffe-$KEY.build.log"
# Keep a failed tree for inspection only on request (it is large).
trap '[ "${THERMALNET_KEEP_FAILED:-0}" = 1 ] && [ ! -f "$ROOT/.thermalnet-complete" ] && say "kept $WORK" || rm -rf "$WORK"' EXIT
fail() { say "ERROR: $1 failed; last lines of $LOG:"; tail -n 30 "$LOG" >&2; die "$1 failed (full log: $LOG)"; }

say "downloading $CAFFE_SDIST (source distribution)"
"${SDIST_PYTHON:-$PY}" -m pip download --quiet --no-deps --no-binary :all: "$CAFFE_SDIST" -d "$WORK/sdist" >"$LOG" 2>&1 \
  || fail "pip download of $CAFFE_SDIST (needs the package index; or set CAFFE_ROOT to an existing Caffe)"
tarball=$(ls "$WORK"/sdist/*.tar.gz)
echo "$CAFFE_SDIST_SHA256  $tarball" | sha256sum -c --quiet >>"$LOG" 2>&1 || fail "checksum of $tarball"
tar xzf "$tarball" -C "$WORK" && src=$(ls -d "$WORK"/brocolli-caffe-*/) || fail "unpacking"
src=${src%/}
# The kit's fixes to the source (tools/caffe/patches, each one explained in its header).
for p in "$here"/caffe/patches/*.patch; do
  patch -d "$src" -p1 --forward --quiet < "$p" >>"$LOG" 2>&1 || fail "applying $(basename "$p")"
done
# >>> GPU only
# Fixes for CUDA 13 (patches/gpu, each explained in its header): the CPU build does not
# compile these files, so they are applied to the GPU build only.
if [ "$GPU" = 1 ]; then
  for p in "$here"/caffe/patches/gpu/*.patch; do
    patch -d "$src" -p1 --forward --quiet < "$p" >>"$LOG" 2>&1 || fail "applying gpu/$(basename "$p")"
  done
fi
# <<< GPU only

if [ "$GPU" = 1 ]; then
  CPU_LINE="# CPU_ONLY := 1"; CUDNN_LINE="USE_CUDNN := 1"
  # Caffe 1.0's cuDNN convolution calls cudnnGetConvolutionForwardAlgorithm, removed in
  # cuDNN 8: on cuDNN >= 8 images build with --no-cudnn (Caffe's own CUDA kernels).
  [ "$NO_CUDNN" = 1 ] && CUDNN_LINE="# USE_CUDNN := 1"
  CUDA_DIR=${CUDA_HOME:-/usr/local/cuda}
  [ -n "$CUDA_ARCH" ] || CUDA_ARCH="-gencode arch=compute_60,code=sm_60 -gencode arch=compute_70,code=sm_70 -gencode arch=compute_75,code=sm_75 -gencode arch=compute_80,code=sm_80 -gencode arch=compute_86,code=sm_86 -gencode arch=compute_90,code=sm_90 -gencode arch=compute_90,code=compute_90"
else
  CPU_LINE="CPU_ONLY := 1"; CUDNN_LINE="# USE_CUDNN := 1"; CUDA_DIR=/usr/local/cuda; CUDA_ARCH=""
fi
sed -e "s|@CPU_ONLY_LINE@|$CPU_LINE|" -e "s|@CUDNN_LINE@|$CUDNN_LINE|" \
    -e "s|@CUDA_DIR@|$CUDA_DIR|" -e "s|@CUDA_ARCH@|$CUDA_ARCH|" \
    -e "s|@PYTHON_INCLUDE@|$PY_INCLUDE|" -e "s|@NUMPY_INCLUDE@|$NP_INCLUDE|" \
    -e "s|@PYTHON_LIBDIR@|$PY_LIBDIR|g" -e "s|@BOOST_PYTHON@|$BOOST_PY|" \
    -e "s|@PYTHON_LIBNAME@|$PY_LIBNAME|" \
    "$here/caffe/Makefile.config.in" > "$src/Makefile.config"
if [ "$BOOST_PY_DIR" != /usr/lib/x86_64-linux-gnu ]; then   # a Boost.Python built beside Debian's
  echo "LIBRARY_DIRS += $BOOST_PY_DIR" >> "$src/Makefile.config"
  echo "LINKFLAGS += -Wl,-rpath,$BOOST_PY_DIR" >> "$src/Makefile.config"
fi
# >>> GPU only
if [ "$GPU" = 1 ]; then
  # The CUDA libraries stay in the wheels' folder: libcaffe.so, the tools and _caffe.so
  # find them by RUNPATH, as pycaffe finds build/lib, so no LD_LIBRARY_PATH is needed.
  echo "LINKFLAGS += -Wl,-rpath,$CUDA_DIR/lib" >> "$src/Makefile.config"
  # CUDA 13 keeps Thrust and CUB under include/cccl; nvcc adds it itself, g++ needs it
  # for the .cpp files that include Thrust (cudnn_softmax_layer.cpp).
  echo "INCLUDE_DIRS += $CUDA_DIR/include/cccl" >> "$src/Makefile.config"
fi
# <<< GPU only

# The sdist ships a caffe_pb2.py from an old protoc: regenerate with ours.
rm -f "$src/python/caffe/proto/caffe_pb2.py"
say "building Caffe (make -j$JOBS all pycaffe; about 5 minutes on 2 cores; log: $LOG)"
( cd "$src" && make -j"$JOBS" all pycaffe ) >>"$LOG" 2>&1 || fail "make"
# This fork names its build folder .temp_release (link `temp`); pycaffe's rpath and
# every BVLC recipe expect `build`, so provide that name too.
[ -e "$src/build" ] || ln -s "$(cd "$src" && readlink temp || echo .temp_release)" "$src/build"
$PYTHON_PROTOC --proto_path="$src/src/caffe/proto" --python_out="$src/python/caffe/proto" \
  "$src/src/caffe/proto/caffe.proto" >>"$LOG" 2>&1 || fail "protoc (caffe_pb2.py)"
touch "$src/python/caffe/proto/__init__.py"
# Drop intermediate objects; keep lib, tools, pycaffe and headers.
find -L "$src/build" \( -name '*.o' -o -name '*.d' \) -delete
rm -rf "$src/.git" "$src/docs" "$src/examples" "$src/matlab"

# Smoke test before the cache entry becomes visible.
PYTHONPATH="$src/python" "$PY" -c "import caffe; caffe.set_mode_cpu()" >>"$LOG" 2>&1 || fail "import caffe smoke test"
"$src/build/tools/caffe" --version >>"$LOG" 2>&1 || fail "caffe tool smoke test"
# >>> GPU only
if [ "$GPU" = 1 ]; then
  ldd_out=$(ldd "$src/build/lib/libcaffe.so" 2>&1) || fail "ldd libcaffe.so"
  echo "$ldd_out" >>"$LOG"
  # grep the saved text: `ldd | grep -q` under pipefail fails when grep stops reading early (SIGPIPE)
  for lib in libcudart libcublas libcurand; do
    grep -q "$lib\.so.* => $CUDA_DIR/lib/" <<<"$ldd_out" || fail "libcaffe.so finding $lib in $CUDA_DIR/lib"
  done
fi
# <<< GPU only
touch "$src/.thermalnet-complete"
rm -rf "$ROOT"; mv "$src" "$ROOT"
say "Caffe built and cached at $ROOT"
echo "$ROOT"
