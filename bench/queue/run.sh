#!/bin/sh
# bench/queue: weave.queue vs Celery vs RQ, the same I/O-bound jobs (one GET
# of /item/<n> from spec/support/api_server.py at 50 ms latency, no rate
# limit, no errors), each job's result stored in Redis, worker processes on
# this machine, one private redis-server on a Unix socket, one run.
#   weave:  N jobs, WORKERS weave processes (bench/queue/weave_worker.lua,
#           concurrency 50 each), q:enqueue_many; then 1 and 2 workers.
#   Celery: N jobs, WORKERS `celery worker -P threads -c 50` processes,
#           apply_async on one producer, results in Redis (db 1); the task
#           GETs with urllib (a connection per job), then again with one
#           kept-alive connection per thread (as a requests.Session would).
#   RQ:     RQ_N jobs, WORKERS `rq worker` processes (each forks a work horse
#           per job and runs one job at a time), Queue.enqueue_many.
# Timed the same way for all three: from the first enqueue (every worker up
# and waiting) until the last job's result is in Redis.
# Then the same at 250 in flight per worker, weave vs Celery (keep-alive).
# Env: QUEUE_N (4000), QUEUE_RQ_N (400), QUEUE_WORKERS (4), QUEUE_HI_C (250),
# QUEUE_HI_N (16000), QUEUE_HI_CELERY_N (6000), WEAVE_BIN
# (build/weave). Run from bench/run.sh (BENCH_ONLY=queue) with LUA_PATH and
# LUA_CPATH as the Makefile's TEST_ENV sets them.
cd "$(dirname "$0")/../.." || exit 1
PY=/usr/bin/python3
N=${QUEUE_N:-4000}
RN=${QUEUE_RQ_N:-400}
HC=${QUEUE_HI_C:-250}        # the second pair: concurrency per worker
HN=${QUEUE_HI_N:-16000}      # weave's jobs at HC
HCN=${QUEUE_HI_CELERY_N:-6000} # Celery's jobs at HC (it does ~800/s)
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
api_total() { curl -s "$API/stats" 2>/dev/null | $PY -c 'import json,sys; print(json.load(sys.stdin)["total"])' 2>/dev/null || echo 0; }
fresh() { rcli FLUSHALL; curl -s -o /dev/null "$API/reset"; }

# run NAME WORKERS DRIVER...: the workers are already started ($wk_pids);
# runs the driver (in the background, so that a signal ends this script at
# once; it measures the CPU time of the workers, redis-server and the API
# server over the timed part), then adds one line to $dir/results:
#   NAME WORKERS SECONDS ENQ_SECONDS OK FAILED WORKER_CPU REDIS_CPU API_CPU GETS
run() {
  name=$1; w=$2; shift 2
  BENCH_CPU_PIDS="$wk_pids,$RPID,$APID" BENCH_HZ=$HZ "$@" >"$dir/$name.out" 2>"$dir/$name.err" &
  drv=$!; wk_pids="$wk_pids $drv"
  if wait $drv && [ -s "$dir/$name.out" ]; then out=$(cat "$dir/$name.out")
  else echo "bench/queue: $name failed: $(head -n 4 "$dir/$name.err")" >&2; out="-1 -1 0 0 0 0 0"; fi
  wk_pids=${wk_pids% $drv}
  echo "$name $w $out $(api_total)" >>"$dir/results"
}

start_workers() { # N LOGPREFIX CMD...: N workers, CMD's "@K" replaced by their number
  n=$1; lp=$2; shift 2
  wk_pids=""
  for k in $(seq "$n"); do
    cmd="exec"
    for a in "$@"; do cmd="$cmd '$(printf %s "$a" | sed "s/@K/$k/g")'"; done
    eval "$cmd" >"$lp$k.log" 2>&1 &
    wk_pids="$wk_pids $!"
  done
}

weave_run() { # WORKERS JOBS [CONCURRENCY [NAME]]
  fresh
  start_workers "$1" "$dir/weave$1-" "$WEAVE" bench/queue/weave_worker.lua "$SOCK" "$API" w@K "${3:-$C}" 2
  run "${4:-weave$1}" "$1" lua5.4 bench/queue/weave_bench.lua "$SOCK" "$2" "$1"
  # They leave by themselves (idle_exit = 2 s); bounded, then killed.
  wait_gone 15 $wk_pids || echo "bench/queue: weave workers still up 15 s after the run: killed" >&2
  stop 2 $wk_pids; wk_pids=""
}

celery_run() { # NAME WORKERS JOBS KEEPALIVE(0/1) [CONCURRENCY]
  fresh
  start_workers "$2" "$dir/$1" env -u LD_PRELOAD BENCH_KEEPALIVE="$4" $PY -m celery -A celery_app worker -P threads -c "${5:-$C}" \
    -n c@K@%h -l WARNING --without-gossip --without-mingle --without-heartbeat
  run "$1" "$2" env -u LD_PRELOAD $PY bench/queue/celery_bench.py "$3" "$2"
  stop 10 $wk_pids; wk_pids=""
}

rq_run() { # WORKERS JOBS
  fresh
  start_workers "$1" "$dir/rq" env -u LD_PRELOAD $PY -m rq.cli worker -u "unix://$SOCK" -n rq@K bench
  run rq "$1" env -u LD_PRELOAD $PY bench/queue/rq_bench.py "$SOCK" "$2" "$1"
  stop 10 $wk_pids; wk_pids=""
}

CV=$($PY -c 'import celery; print(celery.__version__)')
RV=$($PY -c 'import rq; print(rq.__version__)')
echo "== bench/queue: $N jobs (RQ: $RN), each one GET of a 50 ms API call, $WK worker processes; weave.queue vs Celery $CV vs RQ $RV"
echo "weave: $WK x weave_worker.lua, concurrency $C each; Celery: $WK x 'celery worker -P threads -c $C' (urllib: a connection per job; then kept alive);"
echo "RQ: $WK x 'rq worker' (forks a work horse per job, one job at a time per worker; urllib)."
echo "Redis on a Unix socket for all three; timed from the first enqueue (all workers up) to the last result stored."
t_start=$(date +%s)
: >"$dir/results"
weave_run "$WK" "$N"
celery_run celery "$WK" "$N" 0
celery_run celeryka "$WK" "$N" 1
rq_run "$WK" "$RN"
[ "$WK" -gt 1 ] && weave_run 1 "$N"
[ "$WK" -gt 2 ] && weave_run 2 "$N"
# The same jobs at 250 in flight per worker: weave is then no longer capped
# by 4 x 50 / 50 ms; Celery's threads are (they are CPU-bound already).
weave_run "$WK" "$HN" "$HC" weavehi
celery_run celeryhi "$WK" "$HCN" 1 "$HC"
t_end=$(date +%s)
awk -v c="$C" -v hc="$HC" -v wk="$WK" -v took=$((t_end - t_start)) '
  function per(x, n) { return n > 0 ? 1000 * x / n : 0 }
  { i = $1; order[NR] = i; w[i] = $2; t[i] = $3; te[i] = $4; bad[i] = $6; gets[i] = $10
    wc[i] = $7; rc[i] = $8; ac[i] = $9; jobs[i] = $5 + $6; rate[i] = (t[i] > 0) ? jobs[i] / t[i] : 0 }
  END {
    top = "weave" wk; wr = rate[top]
    label[top] = sprintf("weave.queue, %d workers x %d", wk, c)
    label["celery"] = sprintf("Celery, %d workers -P threads -c %d", wk, c)
    label["celeryka"] = "  same, keep-alive conn per thread"
    label["rq"] = sprintf("RQ, %d workers (fork per job)", wk)
    label["weave1"] = sprintf("weave.queue, 1 worker x %d", c)
    label["weave2"] = sprintf("weave.queue, 2 workers x %d", c)
    label["weavehi"] = sprintf("weave.queue, %d workers x %d", wk, hc)
    label["celeryhi"] = sprintf("Celery, %d x -c %d, keep-alive", wk, hc)
    printf "%-36s %6s %8s %8s %8s %8s %6s %8s %6s %6s\n", "system", "jobs", "time(s)", "enq(s)", "jobs/s", "weave/x", "failed", "wCPU(s)", "redis", "api"
    for (k = 1; k <= NR; k++) {
      i = order[k]
      ratio = ""
      if (i == "celeryhi") ratio = rate[i] > 0 ? sprintf("%.1fx", rate["weavehi"] / rate[i]) : "-"
      else if (i !~ /^weave/) ratio = rate[i] > 0 && wr > 0 ? sprintf("%.1fx", wr / rate[i]) : "-"
      printf "%-36s %6d %8.3f %8.3f %8.1f %8s %6d %8.2f %6.2f %6.2f\n", label[i], jobs[i], t[i], te[i], rate[i], ratio, bad[i], wc[i], rc[i], ac[i]
      if (t[i] < 0) printf "  (this run failed: see the message above)\n"
      else if (gets[i] != jobs[i]) printf "  (the API server saw %d GETs for %d jobs)\n", gets[i], jobs[i]
    }
    cr = rate["celery"]
    printf "ideal (50 ms of I/O only): %d x %d / 0.05 s = %d jobs/s; weave reached %.0f%%\n", wk, c, wk * c / 0.05, 100 * wr / (wk * c / 0.05)
    x1 = (cr > 0) ? wr / cr : 0
    x2 = (rate["celeryka"] > 0) ? wr / rate["celeryka"] : 0
    printf "at %d per worker: weave %.1fx Celery (%.1fx the keep-alive Celery); capped by the ideal above\n", c, x1, x2
    hx = (rate["celeryhi"] > 0) ? rate["weavehi"] / rate["celeryhi"] : 0
    printf "at %d per worker: weave %.0f jobs/s, Celery %.0f jobs/s: %.1fx (goal >= 10x Celery: %s)\n", hc, rate["weavehi"], rate["celeryhi"], hx, (hx >= 10 ? "met" : "not met")
    printf "workers%s CPU per job: weave %.2f ms, Celery %.2f ms (%.1fx), keep-alive Celery %.2f ms, RQ %.2f ms\n", "\047",
      per(wc[top], jobs[top]), per(wc["celery"], jobs["celery"]),
      (per(wc[top], jobs[top]) > 0 ? per(wc["celery"], jobs["celery"]) / per(wc[top], jobs[top]) : 0),
      per(wc["celeryka"], jobs["celeryka"]), per(wc["rq"], jobs["rq"])
    s = ""
    for (n = 1; n < wk; n *= 2) if (("weave" n) in rate) s = s sprintf("%d worker%s %.0f, ", n, n > 1 ? "s" : "", rate["weave" n])
    printf "weave scaling, jobs/s: %s%d workers %.0f\n", s, wk, wr
    printf "enq: time to enqueue, inside time(s). wCPU, redis, api: CPU seconds (user + system) of the workers (RQ%ss\n", "\047"
    printf "work horses included), redis-server and the API server over time(s). Section: %d s.\n", took
  }' "$dir/results"
