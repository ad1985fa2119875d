#!/bin/sh
# bench/http/instructions.sh URL: client-side instructions per request
# (valgrind callgrind; repeatable, unlike loopback wall time), from the
# difference between 4,000 and 2,000 GETs of URL at 20 in flight.
# Run from the repository root with LUA_PATH/LUA_CPATH set (make bench-instr).
url=${1:?usage: instructions.sh URL}
count() { valgrind --tool=callgrind --callgrind-out-file=/dev/null "$@" 2>&1 | grep -oE "refs: +[0-9,]+" | tr -d ', ' | cut -d: -f2; }
per() { a=$(count "$@" 2000 20); b=$(count "$@" 4000 20); echo $(( (b - a) / 2000 )); }
perw() { a=$(count "$@" 2000 20 65536 weave); b=$(count "$@" 4000 20 65536 weave); echo $(( (b - a) / 2000 )); }
echo "instructions per request (client side):"
echo "  C floor (libcurl multi + libuv):   $(per build/bench/floor "$url")"
echo "  C floor asking libcurl for what weave asks (keep bodies and headers,"
echo "    cookies, Accept-Encoding, User-Agent; the URL parsed once): $(perw build/bench/floor "$url")"
echo "  weave raw transfer primitives:     $(per lua5.4 bench/http/raw.lua "$url")"
echo "  weave (s:get through the façade):  $(per lua5.4 bench/http/weave.lua "$url")"
