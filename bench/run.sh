#!/bin/sh
# make bench: weave side by side with its peers, one run, as ratios.
cd "$(dirname "$0")/.." || exit 1
PY=/usr/bin/python3
W="lua5.4 bench/tasks.lua"
P="$PY bench/tasks.py"
# BENCH_ONLY=key[,key...]: only those sections; this file's are tasks, offload.
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

want offload || exit 0
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
