#!/usr/bin/env bash
# Run real NVIDIA DIGITS 6.1.1 from your own checkout, on Python 2.7, against the kit's Caffe.
#
#   tools/extra/digits_local.sh setup --digits DIR --boost-python DIR   # once; about 15 min on 2 cores
#   tools/extra/digits_local.sh start --digits DIR [--port 5000] [--jobs-dir DIR]   # prints the URL
#   tools/extra/digits_local.sh stop          # SIGINT, then SIGKILL after a grace period
#   tools/extra/digits_local.sh status        # "running PID URL" (exit 0) or "stopped" (exit 1)
#
# --digits: a DIGITS checkout at tag v6.1.1 (NVIDIA/DIGITS, or a fork that carries the tag).
# --boost-python: a boostorg/python checkout at tag boost-1.74.0 (the Boost of Debian 12's
# headers); its src/ is compiled for Python 2.7, which Debian no longer packages (once built,
# later setups may leave it out). --run-dir: where start keeps the pid, URL and logs
# (default: the cache's run/); stop and status take the same.
# Nothing of either is copied into the kit: the builds go to the cache folder,
# $THERMALNET_CACHE (default ~/.cache/thermalnet)/digits-py27/, and a Caffe built by
# tools/install_caffe.sh from the same sdist and patches as the kit's, for Python 2.7.
# The server binds 127.0.0.1 only, runs without Flask's reloader, keeps its jobs in
# --jobs-dir (default: the cache's jobs/) and its pid in the cache's run/ folder.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CACHE=${THERMALNET_CACHE:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/thermalnet}
BASE="$CACHE/digits-py27"
RUN="$BASE/run"
GRACE=${DIGITS_STOP_GRACE:-10}
# Python 2.7 wheels, pinned: the last releases for Python 2 of what DIGITS 6.1.1's requirements.txt
# names (its own caps predate manylinux wheels), with everything they pulled in. protobuf 3.17 is
# the last with Python 2; grpcio-tools 1.38.1 (the last with Python 2 wheels) brings a protoc whose
# caffe_pb2.py it reads.
PINS="numpy==1.16.6 scipy==1.2.3 Pillow==6.2.2 h5py==2.10.0 protobuf==3.17.3 six==1.16.0
matplotlib==2.2.5 scikit-image==0.14.5 PyWavelets==1.0.3 networkx==2.2 cloudpickle==1.3.0 decorator==4.4.2
cycler==0.10.0 kiwisolver==1.1.0 pyparsing==2.4.7 python-dateutil==2.8.2 pytz==2026.6
backports.functools-lru-cache==1.6.6 subprocess32==3.5.4
Flask==0.10.1 Werkzeug==0.16.1 Jinja2==2.11.3 MarkupSafe==1.1.1 itsdangerous==0.24 Flask-WTF==0.12 WTForms==2.1
Flask-SocketIO==2.6 python-socketio==1.6.1 python-engineio==1.0.3 gevent==1.4.0 greenlet==0.4.17
gevent-websocket==0.9.3 lmdb==0.98 pydot==1.4.2 psutil==5.8.0 requests==2.9.1 scikit-fmm==2019.1.30
python-magic==0.4.24 boto==2.49.0"
PROTOC_PIN="grpcio-tools==1.38.1"

say() { echo "[digits_local] $*" >&2; }
die() { echo "[digits_local] ERROR: $*" >&2; exit 1; }
usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; }

cmd=${1:-}; [ $# -gt 0 ] && shift
DIGITS=""; BOOST_SRC=""; PORT=5000; JOBS="$BASE/jobs"
while [ $# -gt 0 ]; do
  case "$1" in
    --digits) DIGITS=$2; shift 2;;
    --boost-python) BOOST_SRC=$2; shift 2;;
    --port) PORT=$2; shift 2;;
    --jobs-dir) JOBS=$2; shift 2;;
    --run-dir) RUN=$2; shift 2;;
    -h|--help) usage; exit 0;;
    *) echo "digits_local.sh: unknown option $1 (see --help)" >&2; exit 2;;
  esac
done

py27() {   # the interpreter tools/py27_env.sh finds (one place that looks for Python 2.7)
  bash "$here/tools/py27_env.sh" | sed -n 's/^PY27=//p'
}
userbase() { echo "$BASE/py27-$(printf '%s\n' "$PINS" | sha256sum | cut -c1-12)"; }
protoc_dir() { echo "$BASE/protoc-$(printf '%s' "$PROTOC_PIN" | sha256sum | cut -c1-12)"; }
check_digits() {
  [ -n "$DIGITS" ] || die "--digits DIR (a DIGITS checkout at tag v6.1.1) is required"
  [ -f "$DIGITS/digits/__init__.py" ] || die "$DIGITS: not a DIGITS checkout (no digits/__init__.py)"
  DIGITS=$(cd "$DIGITS" && pwd)
}

# The Python 2.7 wheels, installed as the user site of PYTHONUSERBASE: a real site folder, so
# `google` is a namespace package there also for the caffe tool's embedded Python.
setup_wheels() {
  local PY=$1 ub tmp
  ub=$(userbase)
  [ -f "$ub/.complete" ] && return 0
  tmp="$ub.tmp.$$"; rm -rf "$tmp"; mkdir -p "$tmp"
  say "installing Python 2.7 wheels into $ub (log: $ub.log)"
  # shellcheck disable=SC2086
  PYTHONUSERBASE=$tmp nice -n 10 "$PY" -m pip install --disable-pip-version-check --no-warn-script-location \
    --user --prefer-binary $PINS >"$ub.log" 2>&1 || { tail -n 20 "$ub.log" >&2; die "pip install failed (log: $ub.log)"; }
  touch "$tmp/.complete"; rm -rf "$ub"; mv "$tmp" "$ub"
  # pip wrote absolute paths of $tmp into entry-point scripts only; the packages do not care.
}

setup_protoc() {
  local PY=$1 d
  d=$(protoc_dir)
  [ -f "$d/.complete" ] && return 0
  say "installing $PROTOC_PIN (its protoc writes a caffe_pb2.py that protobuf 3.17 reads)"
  rm -rf "$d.tmp"
  nice -n 10 "$PY" -m pip install --disable-pip-version-check --quiet --prefer-binary --target "$d.tmp" "$PROTOC_PIN" \
    >"$d.log" 2>&1 || { tail -n 20 "$d.log" >&2; die "pip install $PROTOC_PIN failed (log: $d.log)"; }
  touch "$d.tmp/.complete"; rm -rf "$d"; mv "$d.tmp" "$d"
}

# Boost.Python for Python 2.7 from boostorg/python's src/ (numpy part left out), against
# Debian's Boost 1.74 headers: about a minute.
setup_boost_python() {
  local PY=$1 inc d tmp f
  if [ -z "$BOOST_SRC" ]; then
    for d in $(ls -dt "$BASE"/boost-python27-*/ 2>/dev/null); do
      [ -f "$d/.complete" ] && { echo "${d%/}"; return 0; }
    done
    die "--boost-python DIR (boostorg/python at tag boost-1.74.0) is required for the first setup"
  fi
  [ -f "$BOOST_SRC/src/module.cpp" ] || die "$BOOST_SRC: not a boostorg/python checkout (no src/module.cpp)"
  d="$BASE/boost-python27-$(cat "$BOOST_SRC"/src/*.cpp "$BOOST_SRC"/src/converter/*.cpp "$BOOST_SRC"/src/object/*.cpp \
    | sha256sum | cut -c1-12)"
  if [ ! -f "$d/.complete" ]; then
    inc=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
    tmp="$d.tmp.$$"; rm -rf "$tmp"; mkdir -p "$tmp/obj"
    say "building Boost.Python for Python 2.7 into $d"
    for f in "$BOOST_SRC"/src/*.cpp "$BOOST_SRC"/src/converter/*.cpp "$BOOST_SRC"/src/object/*.cpp; do
      nice -n 19 g++ -O2 -fPIC -w -DBOOST_PYTHON_SOURCE -DBOOST_PYTHON_DYN_LINK -DNDEBUG -I"$BOOST_SRC/include" -I"$inc" \
        -c "$f" -o "$tmp/obj/$(echo "${f#"$BOOST_SRC"/src/}" | tr / _).o" || die "compiling $f"
    done
    g++ -shared -Wl,-soname,libboost_python27.so -o "$tmp/libboost_python27.so" "$tmp"/obj/*.o \
      -L"$(dirname "$inc")/../lib" -lpython2.7 || die "linking libboost_python27.so"
    rm -rf "$tmp/obj"; touch "$tmp/.complete"; rm -rf "$d"; mv "$tmp" "$d"
  fi
  echo "$d"
}

caffe_root_file() { echo "$BASE/caffe_root"; }

do_setup() {
  local PY ub bp root
  check_digits
  PY=$(py27) || exit 1
  [ -n "$PY" ] || die "no Python 2.7 (tools/py27_env.sh)"
  setup_wheels "$PY"
  setup_protoc "$PY"
  bp=$(setup_boost_python "$PY")
  ub=$(userbase)
  say "building the kit's Caffe for Python 2.7 (tools/install_caffe.sh; its log names itself)"
  root=$(PYTHONUSERBASE=$ub BOOST_PYTHON_LIBDIR=$bp SDIST_PYTHON=python3 \
    PYTHON_PROTOC="env PYTHONPATH=$(protoc_dir) $PY -m grpc_tools.protoc" \
    nice -n 19 bash "$here/tools/install_caffe.sh" --python "$PY" | tail -n 1)
  [ -x "$root/build/tools/caffe" ] || die "install_caffe.sh gave no Caffe ($root)"
  echo "$root" > "$(caffe_root_file)"
  say "ready: $root (DIGITS from $DIGITS)"
}

pid_file() { echo "$RUN/digits.pid"; }
running_pid() {
  local pid
  pid=$(cat "$(pid_file)" 2>/dev/null) || return 1
  kill -0 "$pid" 2>/dev/null && echo "$pid"
}

# DIGITS' own __main__ binds 0.0.0.0; this does what it does, on 127.0.0.1, without the reloader.
LAUNCHER='
import os, sys
import digits, digits.config, digits.log, digits.webapp
port = int(os.environ["DIGITS_LOCAL_PORT"])
if not digits.webapp.scheduler.start():
    sys.exit("ERROR: Scheduler would not start")
try:
    digits.webapp.app.debug = False
    print("DIGITS %s on http://127.0.0.1:%d" % (digits.__version__, port))
    sys.stdout.flush()
    digits.webapp.socketio.run(digits.webapp.app, "127.0.0.1", port, use_reloader=False)
finally:
    digits.webapp.scheduler.stop()
'

do_start() {
  local PY root ub pid url i
  check_digits
  if pid=$(running_pid); then die "DIGITS is already running (pid $pid); stop it first"; fi
  root=$(cat "$(caffe_root_file)" 2>/dev/null) && [ -x "$root/build/tools/caffe" ] \
    || die "no Python 2.7 Caffe yet: run $0 setup --digits DIR --boost-python DIR"
  PY=$(py27); ub=$(userbase)
  [ -f "$ub/.complete" ] || die "no Python 2.7 wheels yet: run $0 setup"
  mkdir -p "$RUN" "$JOBS"
  url="http://127.0.0.1:$PORT"
  # glog 0.6 prefixes the year (I20261207 ...) and DIGITS' log parser then sees no iterations;
  # protobuf's C++ extension in the caffe tool (which links Debian's libprotobuf) segfaults.
  # DIGITS hands its own GLOG_minloglevel to the caffe tool: one above 0 inherited from the caller
  # (pycaffe users often set 2) hides the INFO lines DIGITS reads iterations and snapshots from.
  ( cd "$DIGITS" && exec env -u GLOG_minloglevel CAFFE_ROOT="$root" PYTHONUSERBASE="$ub" PYTHONPATH="$DIGITS" \
      GLOG_log_year_in_prefix=false PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python \
      DIGITS_JOBS_DIR="$JOBS" DIGITS_LOGFILE_FILENAME="$RUN/digits.log" DIGITS_LOCAL_PORT="$PORT" \
      setsid "$PY" -c "$LAUNCHER" >"$RUN/server.log" 2>&1 ) &
  pid=$!
  echo "$pid" > "$(pid_file)"
  echo "$url" > "$RUN/url"
  for i in $(seq 1 120); do
    if "$PY" -c "import urllib2, sys; urllib2.urlopen(sys.argv[1] + '/index.json', timeout=2)" "$url" 2>/dev/null; then
      say "DIGITS running (pid $pid, jobs in $JOBS, log $RUN/server.log)"
      echo "$url"; return 0
    fi
    kill -0 "$pid" 2>/dev/null || { tail -n 30 "$RUN/server.log" >&2; die "DIGITS exited while starting"; }
    sleep 1
  done
  tail -n 30 "$RUN/server.log" >&2
  do_stop; die "DIGITS did not answer at $url within 120 s"
}

do_stop() {
  local pid i
  pid=$(running_pid) || { say "not running"; rm -f "$(pid_file)"; return 0; }
  # DIGITS ignores SIGTERM; SIGINT stops its scheduler. Whatever is left after the grace period
  # (its Caffe children run in the same session) gets SIGKILL.
  kill -INT "$pid" 2>/dev/null || true
  for i in $(seq 1 "$GRACE"); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
  kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  rm -f "$(pid_file)"
  say "stopped (pid $pid)"
}

case "$cmd" in
  setup) do_setup;;
  start) do_start;;
  stop) do_stop;;
  status) if pid=$(running_pid); then echo "running $pid $(cat "$RUN/url")"; else echo "stopped"; exit 1; fi;;
  -h|--help|help) usage;;
  *) usage >&2; exit 2;;
esac
