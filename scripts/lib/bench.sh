# Helpers shared by the bench scripts: waiting, stopping processes, and
# reading a process's CPU and memory from /proc. Source it after common.sh.

# wait_until SECONDS WHAT CMD...: polls CMD every 0.2 s.
wait_until() {
  local secs=$1 what=$2 deadline
  shift 2
  deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "timed out after ${secs}s waiting for: $what"
      return 1
    fi
    sleep 0.2
  done
}

alive() { [ -e "/proc/$1" ] && [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]; }

forget_pid() {
  local keep=() p
  for p in "${RTC_PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
  RTC_PIDS=("${keep[@]}")
}

# stop_pid PID: SIGTERM, up to 20 s, then SIGKILL; reaps it.
stop_pid() {
  local pid=$1 _
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 200); do
    alive "$pid" || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  forget_pid "$pid"
}

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
hwm_kb() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }
CLK_TCK=$(getconf CLK_TCK)
cpu_secs() { awk -v hz="$CLK_TCK" '{printf "%.2f\n", ($14 + $15) / hz}' "/proc/$1/stat"; }
# CPU seconds the whole machine spent busy (user, nice, system, irq, softirq,
# steal): with our processes' own, shows what else ran during a measurement.
machine_busy_secs() { awk -v hz="$CLK_TCK" '/^cpu / {printf "%.2f\n", ($2 + $3 + $4 + $7 + $8 + $9) / hz}' /proc/stat; }

# wait_quiet: waits (at most RTC_BENCH_QUIET_WAIT_SECS, default 120) until
# the machine is less than 15% busy over 3 s, so a delivery run does not
# start on top of someone else's build; what still ran is in cpu_secs.other.
wait_quiet() {
  local deadline=$((SECONDS + ${RTC_BENCH_QUIET_WAIT_SECS:-120})) a b pct
  while :; do
    a=$(awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9, $5 + $6}' /proc/stat)
    sleep 3
    b=$(awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9, $5 + $6}' /proc/stat)
    pct=$(awk -v a="$a" -v b="$b" 'BEGIN {split(a, x, " "); split(b, y, " ");
      busy = y[1] - x[1]; idle = y[2] - x[2]; print int(100 * busy / (busy + idle + 0.001))}')
    [ "$pct" -lt 15 ] && return 0
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "the machine is still ${pct}% busy: measuring anyway"
      return 0
    fi
    log "the machine is ${pct}% busy: waiting for it to calm down"
  done
}
