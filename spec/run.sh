#!/bin/sh
# Run the whole suite and end with one line: "N passed, M failed".
# Parts: the busted specs (TAP), the C API test and the embedding example
# (TAP programs built by make into $WEAVE_BUILD).
cd "$(dirname "$0")/.." || exit 1
out=$(mktemp)
status=0
busted --lua=lua5.4 -o TAP "$@" spec > "$out" 2>&1 || status=1
for prog in capi_test embed_host; do
  if [ -n "$WEAVE_BUILD" ] && [ -x "$WEAVE_BUILD/$prog" ]; then
    (cd examples/embed && timeout 120 "$WEAVE_BUILD/$prog") >> "$out" 2>&1 || status=1
  fi
done
cat "$out"
passed=$(grep -c '^ok ' "$out")
failed=$(grep -c '^not ok ' "$out")
rm -f "$out"
# A crash or an error outside any test leaves no TAP line for it.
if [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; then failed=1; fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
