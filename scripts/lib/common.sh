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
  log "installing ${missing[*]}"
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
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
  trap stop_started EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}
