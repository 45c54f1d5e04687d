# Shell helpers the bench/ scripts share; sourced, not run. The sourcing script defines
# `log MESSAGE...` (to stderr, with its own prefix).

# wait_port PORT [SECONDS [PID]]: until something accepts on 127.0.0.1:PORT (default 5 s);
# fails early if process PID exits.
wait_port() {
  local port="$1" secs="${2:-5}" pid="${3:-}" i
  for i in $(seq $((secs * 20))); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then log "the process for port $port exited"; return 1; fi
    sleep 0.05
  done
  log "nothing listens on port $port after ${secs}s"; return 1
}
