#!/bin/sh
# Install the Debian packages weave needs when they are missing (as root),
# or say which are missing.  Used by `make test`, `make demo`, `make bench`.
PKGS="lua5.4 liblua5.4-dev libuv1-dev libcurl4-openssl-dev lua-busted luarocks lua-cjson pkg-config gcc make python3 nginx libnginx-mod-http-echo openssl curl binutils python3-httpbin gunicorn tinyproxy libhiredis-dev redis-server libssl-dev libwslay-dev python3-websockets"
[ "$1" = bench ] && PKGS="$PKGS python3-aiohttp python3-pycurl gnuplot-nox nodejs python3-celery python3-rq python3-uvloop python3-websockets"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ]; then
  echo "installing:$missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq $missing >/dev/null
else
  echo "missing Debian packages:$missing (run: sudo apt-get install$missing)" >&2
  exit 1
fi
