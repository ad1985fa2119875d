#!/bin/sh
# bench/net: weave.net and weave.websocket side by side with their peers, one
# run, as ratios (weave / peer). Best of 3 of each measurement.
#
# TCP over loopback (tcp.lua, tcp.py, tcp.mjs): each runtime runs its own
# server and its own clients in one process, on one loop, so each number is
# the runtime on both ends of the connections. Peers: CPython asyncio
# streams (start_server / open_connection), the same code on uvloop
# (python3-uvloop), Node's `net`.
#   echo: a 64-byte message written, its echo read back, again and again
#         (sequential round trips): 1 connection x NET_ECHO_N (20,000), and
#         NET_CONNS (100) connections at once x NET_ECHO_M (500) each.
#   bulk: the client writes 64 KiB chunks (honouring the runtime's
#         backpressure) to a sink server that counts the bytes and answers
#         "ok\n" at the expected count; the clock stops when the client has
#         the ack. 1 connection x NET_BULK_MB (1024) MiB, and NET_CONNS
#         connections at once x NET_BULK_MB_EACH (10) MiB each.
# WebSocket (ws_*.{lua,py,mjs}): one Node `ws` 8.x echo server in its own
# process (ws_server.mjs, npm `ws` installed on first use into
# build/bench-node, BENCH_NODE_DIR), and each client in turn: weave.websocket,
# python3-websockets (asyncio), Node `ws`. Sequential echoes of a 32-byte
# text message: 1 connection x NET_WS_N (20,000), and NET_CONNS connections
# at once x NET_WS_M (500) each (CPU pinning: see below). weave.websocket
# missing: said, and skipped.
# Connections are made before each clock starts.
# Run from bench/run.sh (BENCH_ONLY=net); LUA_PATH / LUA_CPATH default to
# the tree (lua/, build/weave.so) when not set.
cd "$(dirname "$0")/../.." || exit 1
root=$(pwd)
PY=/usr/bin/python3
: "${LUA_PATH:=$root/lua/?.lua;$root/lua/?/init.lua;;}"
: "${LUA_CPATH:=$root/build/?.so;;}"
export LUA_PATH LUA_CPATH
EN=${NET_ECHO_N:-20000}
C=${NET_CONNS:-100}
EM=${NET_ECHO_M:-500}
BN=${NET_BULK_MB:-1024}
BM=${NET_BULK_MB_EACH:-10}
WN=${NET_WS_N:-20000}
WM=${NET_WS_M:-500}
BENCH_NODE_DIR=${BENCH_NODE_DIR:-$root/build/bench-node}
export BENCH_NODE_DIR
[ -f build/weave.so ] || { echo "bench/net: build/weave.so not built (make)"; exit 1; }

tmp=$(mktemp -d /tmp/weave-netbench.XXXXXX)
srv_pid=""
cleanup() {
  trap - EXIT INT TERM
  [ -n "$srv_pid" ] && kill "$srv_pid" 2>/dev/null && wait "$srv_pid" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# best3 NAME CMD...: the lowest "<seconds>" of 3 runs of CMD, or "fail" (a
# run that printed anything else; its output goes to $tmp/NAME.err, and the
# first line of that is shown after the table).
best3() {
  name=$1; shift
  out=""
  for _ in 1 2 3; do
    r=$(timeout 300 "$@" 2>>"$tmp/$name.err")
    case $r in
      '' | *[!0-9.]*) printf '%s\n' "$r" >>"$tmp/$name.err"; echo fail; return ;;
    esac
    out="$out$r
"
  done
  printf '%s' "$out" | sort -n | head -n 1
}
failures() { # the first lines of what failed
  for f in "$tmp"/*.err; do
    [ -s "$f" ] || continue
    echo "  $(basename "$f" .err) failed: $(grep -v '^$' "$f" | head -n 1)"
  done
  rm -f "$tmp"/*.err
}

have_uvloop=0; $PY -c 'import uvloop' 2>/dev/null && have_uvloop=1
have_node=0; command -v node >/dev/null 2>&1 && have_node=1
pyv=$($PY -c 'import platform; print(platform.python_version())')
uvv=$( [ $have_uvloop = 1 ] && $PY -c 'import uvloop; print(uvloop.__version__)' || echo "missing")
nodev=$( [ $have_node = 1 ] && node --version || echo "missing")

# The table rows of both parts (awk -v lw= cw= peers=): rates from "<seconds>"
# cells (work / s), a "-" for a run that failed, ratios weave / peer.
ROWS='
function rate(work, s) { return (s ~ /^[0-9.]+$/ && s > 0) ? work / s : -1 }
function cell(r) { return r < 0 ? sprintf("%" cw "s", "-") : sprintf("%" cw ".0f", r) }
function ratio(w, p) { return (w < 0 || p < 0) ? sprintf("%13s", "-") : sprintf("%6.2fx faster", w / p) }
function row(label, work, f,   w, i, line) {
  split(f, s, " ")
  w = rate(work, s[1])
  line = sprintf("%-" lw "s%s", label, cell(w))
  for (i = 2; i <= peers + 1; i++) line = line sprintf("%s %s", cell(rate(work, s[i])), ratio(w, rate(work, s[i])))
  print line
}'

# --- TCP ----------------------------------------------------------------------
echo "== bench/net: weave.net vs asyncio streams (CPython $pyv), asyncio on uvloop $uvv, Node $nodev net"
echo "   loopback TCP; each runtime runs its server and its clients in one process, one loop"
echo "   (every number is the runtime on both ends); best of 3; ratio = weave / peer"
tcp() { # MODE CONNS AMOUNT -> "weave asyncio uvloop node" seconds ("-": no such peer)
  w=$(best3 "weave-$1-$2" lua5.4 bench/net/tcp.lua "$@")
  a=$(best3 "asyncio-$1-$2" $PY bench/net/tcp.py "$@")
  if [ $have_uvloop = 1 ]; then u=$(best3 "uvloop-$1-$2" $PY bench/net/tcp.py --uvloop "$@"); else u=-; fi
  if [ $have_node = 1 ]; then n=$(best3 "node-$1-$2" node bench/net/tcp.mjs "$@"); else n=-; fi
  echo "$w $a $u $n"
}
e1=$(tcp echo 1 "$EN")
e2=$(tcp echo "$C" "$EM")
b1=$(tcp bulk 1 "$BN")
b2=$(tcp bulk "$C" "$BM")
echo "$EN $C $EM $BN $BM | $e1 | $e2 | $b1 | $b2" | awk -F'|' -v lw=36 -v cw=10 -v peers=3 "$ROWS"'
{
  split($1, a, " "); en = a[1]; c = a[2]; em = a[3]; bn = a[4]; bm = a[5]
  printf "%-36s%10s%10s %13s%10s %13s%10s %13s\n", "workload", "weave", "asyncio", "ratio", "uvloop", "ratio", "node", "ratio"
  row(sprintf("echo 64 B, 1 conn x %d, rt/s", en), en, $2)
  row(sprintf("echo 64 B, %d conns x %d, rt/s", c, em), c * em, $3)
  row(sprintf("bulk, 1 conn x %d MiB, MiB/s", bn), bn, $4)
  row(sprintf("bulk, %d conns x %d MiB, MiB/s", c, bm), c * bm, $5)
}'
failures

# --- WebSocket ----------------------------------------------------------------
echo
ws_skip=""
if [ $have_node = 0 ]; then
  ws_skip="node is not installed"
elif [ ! -f "$BENCH_NODE_DIR/node_modules/ws/package.json" ]; then
  if ! command -v npm >/dev/null 2>&1; then
    # Debian's nodejs comes without npm (its own package); NodeSource's
    # bundles it and conflicts with Debian's npm, so only the former gets it.
    if dpkg-query -W -f='${Version}' nodejs 2>/dev/null | grep -q nodesource; then
      ws_skip="npm is missing (nodejs is NodeSource's, which should bundle it; Debian's npm conflicts)"
    elif [ "$(id -u)" = 0 ]; then
      echo "bench/net: npm is missing; installing Debian's npm"
      export DEBIAN_FRONTEND=noninteractive
      apt-get install -y -qq npm >/dev/null 2>&1 ||
        { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq npm >/dev/null 2>&1; } ||
        ws_skip="apt-get install npm failed"
    else
      ws_skip="npm is missing (sudo apt-get install npm)"
    fi
  fi
  if [ -z "$ws_skip" ]; then
    mkdir -p "$BENCH_NODE_DIR"
    npm install --prefix "$BENCH_NODE_DIR" ws@8 --no-audit --no-fund >"$tmp/npm.log" 2>&1 ||
      ws_skip="npm install ws@8 into $BENCH_NODE_DIR failed: $(grep -v '^$' "$tmp/npm.log" | tail -n 1)"
  fi
fi
if [ -n "$ws_skip" ]; then
  echo "== bench/net ws: skipped: $ws_skip"
  exit 0
fi
wsv=$(node -p "require('$BENCH_NODE_DIR/node_modules/ws/package.json').version")
pwsv=$($PY -c 'import websockets.version as v; print(v.version)' 2>/dev/null || echo "")
echo "== bench/net ws: WebSocket echo of 32-byte text messages, server: Node ws $wsv (its own process)"
echo "   clients: weave.websocket vs python3-websockets ${pwsv:-missing} (asyncio) vs Node ws $wsv; best of 3"
# Two processes playing ping-pong: where they run swings the numbers 2-3x
# from run to run. With taskset and 2+ CPUs, the server runs on one CPU; the
# 1-connection clients on that same CPU (every message: both sides' CPU time
# and two context switches, steady), the 100-connection ones on another
# (both sides at once).
set -- $($PY -c 'import os; print(*sorted(os.sched_getaffinity(0))[:2])' 2>/dev/null)
if [ $# -ge 2 ] && command -v taskset >/dev/null 2>&1; then
  PIN_SRV="taskset -c $1"; PIN_SEQ="taskset -c $1"; PIN_PAR="taskset -c $2"
  pinning="server and 1-conn clients on CPU $1, $C-conn clients on CPU $2"
else
  PIN_SRV=""; PIN_SEQ=""; PIN_PAR=""
  pinning="not pinned to CPUs"
fi
echo "   ($pinning)"
$PIN_SRV node bench/net/ws_server.mjs "$tmp/ws.port" >"$tmp/ws.log" 2>&1 &
srv_pid=$!
i=0
until [ -s "$tmp/ws.port" ]; do
  i=$((i + 1))
  if [ $i -gt 100 ] || ! kill -0 "$srv_pid" 2>/dev/null; then
    echo "bench/net ws: the Node ws server did not start: $(head -n 3 "$tmp/ws.log")"
    exit 0
  fi
  sleep 0.1
done
URL="ws://127.0.0.1:$(cat "$tmp/ws.port")/"
why=$(lua5.4 -e 'local ok, e = pcall(require, "weave.websocket")
  if not ok then io.write((tostring(e):match("^[^\n]*"):gsub(":%s*$", ""))) os.exit(1) end' 2>&1)
if [ $? -eq 0 ]; then
  w1=$(best3 weave-ws-1 $PIN_SEQ lua5.4 bench/net/ws_client.lua "$URL" 1 "$WN")
  w2=$(best3 "weave-ws-$C" $PIN_PAR lua5.4 bench/net/ws_client.lua "$URL" "$C" "$WM")
else
  echo "weave.websocket: not available ($why)"
  w1=-; w2=-
fi
if [ -n "$pwsv" ]; then
  p1=$(best3 websockets-1 $PIN_SEQ $PY bench/net/ws_client.py "$URL" 1 "$WN")
  p2=$(best3 "websockets-$C" $PIN_PAR $PY bench/net/ws_client.py "$URL" "$C" "$WM")
else
  p1=-; p2=-
fi
n1=$(best3 node-ws-1 $PIN_SEQ node bench/net/ws_client.mjs "$URL" 1 "$WN")
n2=$(best3 "node-ws-$C" $PIN_PAR node bench/net/ws_client.mjs "$URL" "$C" "$WM")
echo "$WN $C $WM | $w1 $p1 $n1 | $w2 $p2 $n2" | awk -F'|' -v lw=40 -v cw=11 -v peers=2 "$ROWS"'
{
  split($1, a, " "); n = a[1]; c = a[2]; m = a[3]
  printf "%-40s%11s%11s %13s%11s %13s\n", "workload (messages/s)", "weave", "websockets", "ratio", "node ws", "ratio"
  row(sprintf("1 conn x %d sequential echoes", n), n, $2)
  row(sprintf("%d conns x %d sequential echoes", c, m), c * m, $3)
}'
failures
