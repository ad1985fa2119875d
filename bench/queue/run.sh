#!/bin/sh
# bench/queue: weave.queue vs Celery vs RQ, the same I/O-bound jobs (one GET
# of /item/<n> from spec/support/api_server.py at 50 ms latency, no rate
# limit, no errors), each job's result stored in Redis, worker processes on
# this machine, one private redis-server on a Unix socket, one run.
#   weave:  N jobs, WORKERS weave processes (bench/queue/weave_worker.lua,
#           concurrency 50 each), q:enqueue_many; then 1 and 2 workers.
#   Celery: N jobs, WORKERS `celery worker -P threads -c 50` processes,
#           apply_async on one producer, results in Redis (db 1).
#   RQ:     RQ_N jobs, WORKERS `rq worker` processes (each forks a work horse
#           per job and runs one job at a time), Queue.enqueue_many.
# Timed the same way for all three: from the first enqueue (every worker up
# and waiting) until the last job's result is in Redis.
# Env: QUEUE_N (4000), QUEUE_RQ_N (400), QUEUE_WORKERS (4), WEAVE_BIN
# (build/weave). Run from bench/run.sh (BENCH_ONLY=queue) with LUA_PATH and
# LUA_CPATH as the Makefile's TEST_ENV sets them.
cd "$(dirname "$0")/../.." || exit 1
PY=/usr/bin/python3
N=${QUEUE_N:-4000}
RN=${QUEUE_RQ_N:-400}
WK=${QUEUE_WORKERS:-4}
C=50
WEAVE=${WEAVE_BIN:-build/weave}
HZ=$(getconf CLK_TCK)
[ -x "$WEAVE" ] || { echo "bench/queue: $WEAVE not built (make)"; exit 1; }

dir=$(mktemp -d /tmp/weave-queuebench.XXXXXX)
srv_pids=""  # redis-server, the API server
wk_pids=""   # the workers of the current run
alive() { # PID: running (not gone, not a zombie)
  st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -c1)
  [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}
any_alive() { for p in "$@"; do alive "$p" && return 0; done; return 1; }
kids() { for p in "$@"; do env -u LD_PRELOAD ps -o pid= --ppid "$p" 2>/dev/null; done; }
wait_gone() { # SECS PID...: wait up to SECS for all to end; 0 if they did
  s=$1; shift
  i=0
  while any_alive "$@"; do
    i=$((i + 1)); [ "$i" -gt $((s * 20)) ] && return 1
    sleep 0.05
  done
}
stop() { # SECS PID...: SIGTERM (and their children), wait, then SIGKILL; reap
  s=$1; shift
  [ $# -eq 0 ] && return 0
  all="$* $(kids "$@")"
  kill $all 2>/dev/null
  wait_gone "$s" $all || { kill -9 $all 2>/dev/null; wait_gone 2 $all; }
  for p in "$@"; do wait "$p" 2>/dev/null; done
  return 0
}
cleanup() {
  trap - EXIT INT TERM
  stop 5 $wk_pids
  stop 5 $srv_pids
  rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
cpu() { # PID...: their CPU seconds so far (user + system, reaped children too)
  for p in "$@"; do sed 's/.*) //' "/proc/$p/stat" 2>/dev/null; done |
    awk -v hz="$HZ" '{ s += $12 + $13 + $14 + $15 } END { printf "%.2f", s / hz }'
}

# One redis-server (Unix socket only, no persistence), one API server.
SOCK=$dir/redis.sock
env -u LD_PRELOAD redis-server --port 0 --unixsocket "$SOCK" --unixsocketperm 700 --save '' \
  --appendonly no --dir "$dir" --logfile "$dir/redis.log" --maxclients 2000 >"$dir/redis.out" 2>&1 &
RPID=$!; srv_pids="$srv_pids $RPID"
env -u LD_PRELOAD $PY spec/support/api_server.py --port-file "$dir/api.port" --latency-ms 50 \
  >"$dir/api.log" 2>&1 &
APID=$!; srv_pids="$srv_pids $APID"
i=0
until [ -S "$SOCK" ] && [ -s "$dir/api.port" ]; do
  i=$((i + 1))
  if [ $i -gt 300 ] || ! alive $RPID || ! alive $APID; then
    echo "bench/queue: redis-server or the API server did not start"; cat "$dir/redis.log" "$dir/api.log" 2>/dev/null
    exit 1
  fi
  sleep 0.05
done
API=http://127.0.0.1:$(cat "$dir/api.port")
export BENCH_REDIS_SOCK="$SOCK" BENCH_API="$API" PYTHONPATH="$PWD/bench/queue${PYTHONPATH:+:$PYTHONPATH}"
rcli() { env -u LD_PRELOAD redis-cli -s "$SOCK" "$@" >/dev/null; }
api_total() { curl -s "$API/stats" | $PY -c 'import json,sys; print(json.load(sys.stdin)["total"])'; }
fresh() { rcli FLUSHALL; curl -s -o /dev/null "$API/reset"; }

# run NAME WORKERS DRIVER...: the workers are already started ($wk_pids);
# runs the driver, then prints one line:
#   NAME WORKERS SECONDS ENQ_SECONDS OK FAILED GETS WORKER_CPU REDIS_CPU API_CPU
run() {
  name=$1; w=$2; shift 2
  r0=$(cpu $RPID); a0=$(cpu $APID)
  out=$("$@" 2>"$dir/$name.err") || { echo "bench/queue: $name failed: $(tail -n 5 "$dir/$name.err")" >&2; out=""; }
  wc=$(cpu $wk_pids); r1=$(cpu $RPID); a1=$(cpu $APID)
  [ -n "$out" ] || out="nan nan 0 0"
  echo "$name $w $out $(api_total) $wc $(awk -v a="$r0" -v b="$r1" 'BEGIN { printf "%.2f", b - a }') $(awk -v a="$a0" -v b="$a1" 'BEGIN { printf "%.2f", b - a }')"
}

weave_run() { # WORKERS JOBS
  fresh
  wk_pids=""
  for k in $(seq "$1"); do
    "$WEAVE" bench/queue/weave_worker.lua "$SOCK" "$API" "w$k" $C 2 >"$dir/weave$1-$k.log" 2>&1 &
    wk_pids="$wk_pids $!"
  done
  line=$(run "weave$1" "$1" lua5.4 bench/queue/weave_bench.lua "$SOCK" "$2" "$1")
  # They leave by themselves (idle_exit = 2 s); bounded, then killed.
  if ! wait_gone 15 $wk_pids; then echo "bench/queue: weave workers still up 15 s after the run: killed" >&2; fi
  stop 2 $wk_pids; wk_pids=""
  echo "$line"
}

celery_run() { # WORKERS JOBS
  fresh
  wk_pids=""
  for k in $(seq "$1"); do
    env -u LD_PRELOAD $PY -m celery -A celery_app worker -P threads -c $C -n "c$k@%h" -l WARNING \
      --without-gossip --without-mingle --without-heartbeat >"$dir/celery$k.log" 2>&1 &
    wk_pids="$wk_pids $!"
  done
  line=$(run celery "$1" env -u LD_PRELOAD $PY bench/queue/celery_bench.py "$2" "$1")
  stop 10 $wk_pids; wk_pids=""
  echo "$line"
}

rq_run() { # WORKERS JOBS
  fresh
  wk_pids=""
  for k in $(seq "$1"); do
    env -u LD_PRELOAD $PY -m rq.cli worker -u "unix://$SOCK" -n "rq$k" bench >"$dir/rq$k.log" 2>&1 &
    wk_pids="$wk_pids $!"
  done
  line=$(run rq "$1" env -u LD_PRELOAD $PY bench/queue/rq_bench.py "$SOCK" "$2" "$1")
  stop 10 $wk_pids; wk_pids=""
  echo "$line"
}

CV=$($PY -c 'import celery; print(celery.__version__)')
RV=$($PY -c 'import rq; print(rq.__version__)')
echo "== bench/queue: $N jobs (RQ: $RN), each one GET of a 50 ms API call, $WK worker processes; weave.queue vs Celery $CV vs RQ $RV"
echo "weave: $WK x weave_worker.lua, concurrency $C each; Celery: $WK x 'celery worker -P threads -c $C' (urllib);"
echo "RQ: $WK x 'rq worker' (forks a work horse per job, one job at a time per worker; urllib)."
echo "Redis on a Unix socket for all three; timed from the first enqueue (all workers up) to the last result stored."
t_start=$(date +%s)
{
  weave_run "$WK" "$N"
  celery_run "$WK" "$N"
  rq_run "$WK" "$RN"
  [ "$WK" -gt 1 ] && weave_run 1 "$N"
  [ "$WK" -gt 2 ] && weave_run 2 "$N"
} >"$dir/results"
t_end=$(date +%s)
awk -v c="$C" -v wk="$WK" -v took=$((t_end - t_start)) '
  { name[NR] = $1; w[NR] = $2; t[NR] = $3; te[NR] = $4; ok[NR] = $5; bad[NR] = $6; gets[NR] = $7
    wc[NR] = $8; rc[NR] = $9; ac[NR] = $10; jobs[NR] = $5 + $6; rate[NR] = (t[NR] > 0) ? jobs[NR] / t[NR] : 0 }
  END {
    wr = rate[1]; cr = rate[2]; rr = rate[3]
    label["weave" wk] = sprintf("weave.queue, %d workers x %d", wk, c)
    label["celery"] = sprintf("Celery, %d workers -P threads -c %d", wk, c)
    label["rq"] = sprintf("RQ, %d workers (fork per job)", wk)
    label["weave1"] = sprintf("weave.queue, 1 worker x %d", c)
    label["weave2"] = sprintf("weave.queue, 2 workers x %d", c)
    printf "%-36s %6s %8s %9s %9s %9s %7s %7s %7s %7s\n", "system", "jobs", "time(s)", "enq(s)", "jobs/s", "weave/x", "failed", "wCPU(s)", "redis", "api"
    for (i = 1; i <= NR; i++) {
      ratio = (i == 2 || i == 3) && rate[i] > 0 ? sprintf("%8.1fx", wr / rate[i]) : ""
      printf "%-36s %6d %8.3f %9.3f %9.1f %9s %7d %7.2f %7.2f %7.2f\n", label[name[i]], jobs[i], t[i], te[i], rate[i], ratio, bad[i], wc[i], rc[i], ac[i]
      if (gets[i] != jobs[i]) printf "  (the API server saw %d GETs for %d jobs)\n", gets[i], jobs[i]
    }
    printf "ideal (I/O only): %d x %d / 0.05 s = %d jobs/s; goal weave >= 10x Celery: %s (%.1fx)\n",
      wk, c, wk * c / 0.05, (cr > 0 && wr >= 10 * cr) ? "met" : "NOT met", cr > 0 ? wr / cr : 0
    s = ""
    for (i = 4; i <= NR; i++) s = s sprintf("%d worker%s %.0f jobs/s, ", w[i], w[i] > 1 ? "s" : "", rate[i])
    printf "weave scaling: %s%d workers %.0f jobs/s\n", s, wk, wr
    printf "wCPU: the workers%s CPU seconds (user + system, work horses included); redis, api: those servers%s during the run. Section: %d s.\n", "\047", "\047", took
  }' "$dir/results"
