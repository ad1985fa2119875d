#!/bin/sh
# make bench: weave side by side with its peers, one run, as ratios.
cd "$(dirname "$0")/.." || exit 1
PY=/usr/bin/python3
W="lua5.4 bench/tasks.lua"
P="$PY bench/tasks.py"
# BENCH_ONLY=key[,key...]: only those sections; this file's are tasks, offload, map, api, queue, net.
want() { [ -z "$BENCH_ONLY" ] || case ",$BENCH_ONLY," in *",$1,"*) true ;; *) false ;; esac; }
best() { # best-of-5 "<seconds> <rss>" of a command (lowest seconds)
  for _ in 1 2 3 4 5; do $1; done | sort -n | head -n 1
}
if want tasks; then
echo "== bench/tasks: weave vs CPython asyncio ($($PY --version 2>&1))"
ws=$(best "$W spawn 200000"); ps=$(best "$P spawn 200000")
wl=$(best "$W sleep 100000"); pl=$(best "$P sleep 100000")
w1=$(best "$W sleep 1000");   p1=$(best "$P sleep 1000")
echo "$ws $ps $wl $pl $w1 $p1" | awk '{
  printf "%-34s %12s %12s %10s\n", "workload", "weave", "asyncio", "ratio"
  printf "%-34s %11.3fs %11.3fs %9.1fx faster\n", "spawn+await 200k trivial tasks", $1, $3, $3 / $1
  printf "%-34s %11.3fs %11.3fs %9.2fx faster\n", "100k tasks sleeping 1 s at once", $5, $7, $7 / $5
  printf "%-34s %10.1fMB %10.1fMB %9.2fx less\n", "peak RSS, spawn+await 200k", $2/1024, $4/1024, $4 / $2
  wb = ($6 - $10) * 1024 / 99000; pb = ($8 - $12) * 1024 / 99000
  printf "%-34s %10.0f B %10.0f B %9.2fx less\n", "RSS per sleeping task (100k - 1k)", wb, pb, pb / wb
}'
fi

if want offload; then
echo
echo "== bench/offload: weave.to_thread vs CPython asyncio.to_thread"
best1() { for _ in 1 2 3; do $1; done | sort -n | head -n 1; }
wsm=$(best1 "lua5.4 bench/offload.lua small 10000"); psm=$(best1 "$PY bench/offload.py small 10000")
wcpu=$(best1 "lua5.4 bench/offload.lua cpu 8"); pcpu=$(best1 "$PY bench/offload.py cpu 8")
echo "$wsm $psm $wcpu $pcpu" | awk '{
  printf "%-40s %10s %10s %10s\n", "workload", "weave", "asyncio", "ratio"
  printf "%-40s %8.1fus %8.1fus %9.1fx faster\n", "10,000 small to_thread calls (per call)", $1 * 100, $2 * 100, $2 / $1
  printf "%-40s %9.3fs %9.3fs %9.1fx faster\n", "8 CPU-bound jobs on 2 workers", $3, $4, $4 / $3
}'
fi

if want map; then
echo
echo "== bench/map: weave.map vs CPython asyncio, calls of sleep(0) at concurrency 100"
WM="lua5.4 bench/map.lua"
PM="$PY bench/map.py"
best3() { for _ in 1 2 3; do $1; done | sort -n | head -n 1; }
# weave: best of 5 (100k) and of 3 (1M); asyncio: best of 3 (100k) and one
# run (1M: gather alone takes ~20 s and 1.5 GB).
m1=$(best "$WM map 100000");  i1=$(best "$WM imap 100000");  t1=$(best "$WM pertask 100000")
g1=$(best3 "$PM gather 100000"); k1=$(best3 "$PM taskgroup 100000")
o1=$(best3 "$PM pool 100000");  s1=$(best3 "$PM stream 100000")
m2=$(best3 "$WM map 1000000"); i2=$(best3 "$WM imap 1000000"); g2=$($PM gather 1000000)
o2=$($PM pool 1000000); s2=$($PM stream 1000000)
echo "$m1 $i1 $t1 $g1 $k1 $o1 $s1 $m2 $i2 $g2 $o2 $s2" | awk '{
  # $1,$2 map 100k  $3,$4 imap 100k  $5,$6 pertask 100k  $7,$8 gather 100k
  # $9,$10 taskgroup 100k  $11,$12 pool 100k  $13,$14 stream 100k
  # $15,$16 map 1M  $17,$18 imap 1M  $19,$20 gather 1M  $21,$22 pool 1M  $23,$24 stream 1M
  printf "%-44s %10s %10s %10s\n", "workload", "weave", "asyncio", "ratio"
  printf "%-44s %9.3fs %9.3fs %9.1fx faster\n", "100k: map vs gather + Semaphore", $1, $7, $7 / $1
  printf "%-44s %9.3fs %9.3fs %9.1fx faster\n", "100k: map vs TaskGroup + Semaphore", $1, $9, $9 / $1
  printf "%-44s %9.3fs %9.3fs %9.1fx faster\n", "100k: map vs 100 worker coroutines", $1, $11, $11 / $1
  printf "%-44s %9.3fs %9.3fs %9.1fx faster\n", "100k: imap vs 100 workers keeping nothing", $3, $13, $13 / $3
  printf "%-44s %9.3fs %9.3fs %9.1fx faster\n", "1M: map vs gather + Semaphore", $15, $19, $19 / $15
  printf "%-44s %9.3fs %9.3fs %9.1fx faster\n", "1M: map vs 100 worker coroutines", $15, $21, $21 / $15
  printf "%-44s %8.1fMB %8.1fMB %9.1fx less\n", "peak RSS 100k: map vs gather + Semaphore", $2/1024, $8/1024, $8 / $2
  printf "%-44s %8.1fMB %8.1fMB %9.1fx less\n", "peak RSS 100k: map vs TaskGroup + Semaphore", $2/1024, $10/1024, $10 / $2
  printf "%-44s %8.1fMB %8.1fMB %9.1fx less\n", "peak RSS 1M: map vs gather + Semaphore", $16/1024, $20/1024, $20 / $16
  printf "%-44s %8.1fMB %8.1fMB %9.1fx less\n", "peak RSS 1M: map vs 100 worker coroutines", $16/1024, $22/1024, $22 / $16
  printf "%-44s %8.1fMB %8.1fMB\n", "RSS 1M - 100k, map (its results table)", ($16-$2)/1024, ($22-$12)/1024
  printf "%-44s %8.1fMB %8.1fMB\n", "RSS 1M - 100k, imap / workers keeping nothing", ($18-$4)/1024, ($24-$14)/1024
  printf "(design check: a task per item under a Semaphore, 100k: %.3fs, %.1fx the worker pool map uses)\n", $5, $5 / $1
}'
fi

if want api; then
# The bulk-call story (docs/bulk.md): bench/api_calls.lua (weave) and
# bench/api_calls.py (aiohttp, hand-made limiter and retry) against the same
# spec/support/api_server.py, one after the other. API_N calls (default
# 27,000) at API_RATE req/s (default 1,000; 50 ms latency, 429 + Retry-After
# beyond the limit, 1 % random 503s): about N/RATE seconds each. Then no
# rate limit, 0 ms latency (the server as fast as it goes), API_FAST_N calls
# (default 27,000), best of 3 calls/s.
N=${API_N:-27000}; R=${API_RATE:-1000}; FN=${API_FAST_N:-27000}
AIO=$($PY -c 'import aiohttp; print(aiohttp.__version__)')
echo
echo "== bench/api: $N API calls, weave vs aiohttp $AIO (same server: 50 ms, $R req/s limit + 429/Retry-After, 1 % 503s)"
api_dir=$(mktemp -d /tmp/weave-apibench.XXXXXX)
api_pids=""
trap 'kill $api_pids 2>/dev/null; rm -rf "$api_dir"' EXIT
api_start() { # NAME ARGS...: start a server, set NAME_URL
  name=$1; shift
  env -u LD_PRELOAD $PY spec/support/api_server.py --port-file "$api_dir/$name.port" "$@" >"$api_dir/$name.log" 2>&1 &
  api_pids="$api_pids $!"
  for _ in $(seq 100); do [ -s "$api_dir/$name.port" ] && break; sleep 0.1; done
  eval "${name}_URL=http://127.0.0.1:$(cat "$api_dir/$name.port")"
}
api_server_stats() { # URL -> "max_window s429 s503 total"
  curl -s "$1/stats" | $PY -c 'import json,sys; d=json.load(sys.stdin); print(d["max_window"], d["s429"], d["s503"], d["total"])'
}
api_start lim --latency-ms 50 --rate "$R" --error-rate 0.01 --seed 1
api_start fast --latency-ms 0 --error-rate 0.01 --seed 1
curl -s -o /dev/null "$lim_URL/reset"
wl=$(lua5.4 bench/api_calls.lua "$lim_URL" "$N" "$R" 2>/dev/null); wls=$(api_server_stats "$lim_URL")
curl -s -o /dev/null "$lim_URL/reset"
pl=$($PY bench/api_calls.py "$lim_URL" "$N" "$R" 2>/dev/null); pls=$(api_server_stats "$lim_URL")
best_rate() { for _ in 1 2 3; do $1 2>/dev/null; done | sort -n | head -n 1; }
wf=$(best_rate "lua5.4 bench/api_calls.lua $fast_URL $FN 0"); pf=$(best_rate "$PY bench/api_calls.py $fast_URL $FN 0")
echo "$N $R $FN | $wl | $pl | $wls | $pls | $wf | $pf" | awk -F'|' '{
  split($1, a, " "); split($2, w, " "); split($3, p, " "); split($4, ws, " "); split($5, ps, " ")
  split($6, wf, " "); split($7, pf, " ")
  n = a[1]; r = a[2]; fn = a[3]; ideal = n / r
  # w, p: wall cpu rss ok failed retries; ws, ps: max_window s429 s503 total
  printf "%-44s %12s %12s %12s\n", "measure", "weave", "aiohttp", "ratio"
  printf "%-44s %11.2fs %11.2fs\n", sprintf("wall time (ideal N/rate = %.2f s)", ideal), w[1], p[1]
  printf "%-44s %+11.1f%% %+11.1f%% %12s\n", "  over the ideal (target: within 3 %)", 100 * (w[1] / ideal - 1), 100 * (p[1] / ideal - 1), ""
  printf "%-44s %11.2fs %11.2fs %10.1fx less\n", "CPU time (target: <= 1/4)", w[2], p[2], p[2] / w[2]
  printf "%-44s %10.1fMB %10.1fMB %10.1fx less\n", "peak RSS (target: <= 1/2)", w[3] / 1024, p[3] / 1024, p[3] / w[3]
  printf "%-44s %12d %12d\n", "calls that ended in a result", w[4], p[4]
  printf "%-44s %12d %12d\n", "retries", w[6], p[6]
  printf "%-44s %12d %12d\n", "server: requests (attempts)", ws[4], ps[4]
  printf "%-44s %12s %12s\n", "server: answered 429 / 503", ws[2] "/" ws[3], ps[2] "/" ps[3]
  printf "%-44s %12d %12d\n", sprintf("server: most in any 1 s window (limit %d)", r), ws[1], ps[1]
  printf "%-44s %10.0f/s %10.0f/s %10.1fx faster\n", sprintf("no limit, 0 ms: %d calls, calls/s (>= 4x)", fn), fn / wf[1], fn / pf[1], pf[1] / wf[1]
  printf "%-44s %11.2fs %11.2fs %10.1fx less\n", "  CPU time, no limit", wf[2], pf[2], pf[2] / wf[2]
}'
kill $api_pids 2>/dev/null; api_pids=""
fi

if want queue; then
# weave.queue vs Celery vs RQ: the same 50 ms I/O-bound jobs, 4 worker
# processes each, one private redis-server; then weave on 1 and 2 workers.
# bench/queue/run.sh starts and stops everything (QUEUE_N, QUEUE_RQ_N).
echo
sh bench/queue/run.sh
fi

if want net; then
# weave.net (loopback TCP echo and bulk) vs asyncio, asyncio + uvloop and
# Node net, each runtime on both ends; weave.websocket vs python3-websockets
# and Node ws against one Node ws echo server. bench/net/run.sh (NET_* sizes).
echo
sh bench/net/run.sh
fi
