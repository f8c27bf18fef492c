# Process helpers shared by scripts/stack/stack.sh (Kafka, HBase, Memcached) and scripts/cluster/cluster.sh
# (etcd, the Kubernetes control plane, kwok): each server runs detached with a pid file in its own folder,
# is waited for until its readiness check passes, and is stopped with TERM, then KILL.
#
# Sourced, not run. The caller sets:
#   LOG_TAG    the prefix of its messages ("stack", "cluster")
#   PROC_DIR   the folder holding one sub-folder per server (pid file, log)
#   TIMEOUT    seconds wait_ready waits
# and defines:
#   logfile NAME       the server's log file
#   owns_pid PID NAME  succeeds when PID is that server of ours (its command line carries our mark), so a
#                      pid file left by a reboot never makes us signal somebody else's process

log() { printf '[%s] %s\n' "$LOG_TAG" "$*" >&2; }
die() { printf '[%s] error: %s\n' "$LOG_TAG" "$*" >&2; exit 1; }

pidfile() { echo "$PROC_DIR/$1/pid"; }

# A stopped daemon stays a zombie until PID 1 reaps it (seconds, in some sandboxes): that is gone.
alive() { kill -0 "$1" 2>/dev/null && [[ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]]; }

running_pid() {  # running_pid NAME -> prints the pid and succeeds when that server of ours is alive
  local f pid
  f="$(pidfile "$1")"
  [[ -f "$f" ]] || return 1
  pid="$(cat "$f" 2>/dev/null)"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  alive "$pid" || return 1
  owns_pid "$pid" "$1" || return 1
  echo "$pid"
}

launch() {  # launch NAME CMD...: detached (own session), so it outlives this shell and the test run
  local name="$1"; shift
  mkdir -p "$PROC_DIR/$name"
  # 9>&-: not the caller's lock on fd 9, or every server would hold it for life and the next up/down wait on it.
  setsid nohup "$@" >>"$(logfile "$name")" 2>&1 </dev/null 9>&- &
  echo $! >"$(pidfile "$name")"
}

show_tail() { if [[ -f "$(logfile "$1")" ]]; then tail -25 "$(logfile "$1")" >&2; fi; }

wait_ready() {  # wait_ready NAME DESCRIPTION CHECK...: poll until the check passes, the process dies, or timeout
  local name="$1" what="$2"; shift 2
  local deadline=$((SECONDS + TIMEOUT)) pid
  pid="$(cat "$(pidfile "$name")")"
  until "$@" >/dev/null 2>&1; do
    # Liveness of the pid just launched, not running_pid: for a moment after the fork the child
    # still has this script's command line, without our mark.
    alive "$pid" || { show_tail "$name"; die "$what exited during start-up (log: $(logfile "$name"))"; }
    ((SECONDS < deadline)) || { show_tail "$name"; die "$what not ready after ${TIMEOUT}s (log: $(logfile "$name"))"; }
    sleep 0.5
  done
}

stop_one() {  # stop_one NAME: TERM, wait up to 30 s for a clean shutdown, then KILL
  local name="$1" pid
  if ! pid="$(running_pid "$name")"; then
    rm -f "$(pidfile "$name")"
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 150); do
    alive "$pid" || break
    sleep 0.2
  done
  if alive "$pid"; then
    log "$name (pid $pid) did not stop in 30s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$(pidfile "$name")"
  log "stopped $name"
}

lock_dir() {  # lock_dir SECONDS: one up/down/reset at a time per PROC_DIR (fd 9, held until the script exits)
  mkdir -p "$PROC_DIR"
  exec 9>"$PROC_DIR/.lock"
  flock -w "$1" 9 || die "another $LOG_TAG script holds $PROC_DIR/.lock"
}

# The usage text: the comment block at the top of the script, from its second line.
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$1"; }
